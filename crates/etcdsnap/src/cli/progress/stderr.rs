//! The terminal a progress bar is drawn on: stderr, two columns narrower than it is.
//!
//! indicatif pads the bar's line with spaces to the terminal's full width, leaving the cursor
//! in the last column. Ctrl-C makes the terminal echo `^C` there, which wraps onto the next
//! line: indicatif, still counting one line, then clears that line and leaves the bar on the
//! screen above the "interrupted" message. Two columns to spare keep the echo on the bar's
//! line, where clearing the bar clears it too.

use indicatif::TermLike;
use std::io::Write;
use std::sync::{Mutex, PoisonError};

/// Columns left free after the bar for the terminal's `^C`.
const ECHO_ROOM: u16 = 2;

/// stderr as indicatif draws on it: writes gathered and sent at each flush, one write per frame.
#[derive(Debug, Default)]
pub struct NarrowStderr {
    pending: Mutex<Vec<u8>>,
}

impl NarrowStderr {
    fn push(&self, bytes: &[u8]) {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner).extend_from_slice(bytes);
    }

    fn cursor(&self, n: usize, code: char) {
        if n > 0 {
            self.push(format!("\x1b[{n}{code}").as_bytes());
        }
    }
}

fn size() -> Option<(u16, u16)> {
    terminal_size::terminal_size_of(std::io::stderr()).map(|(w, h)| (w.0, h.0))
}

impl TermLike for NarrowStderr {
    fn width(&self) -> u16 {
        size().map_or(80, |(w, _)| w).saturating_sub(ECHO_ROOM).max(1)
    }

    fn height(&self) -> u16 {
        size().map_or(20, |(_, h)| h)
    }

    fn move_cursor_up(&self, n: usize) -> std::io::Result<()> {
        self.cursor(n, 'A');
        Ok(())
    }

    fn move_cursor_down(&self, n: usize) -> std::io::Result<()> {
        self.cursor(n, 'B');
        Ok(())
    }

    fn move_cursor_right(&self, n: usize) -> std::io::Result<()> {
        self.cursor(n, 'C');
        Ok(())
    }

    fn move_cursor_left(&self, n: usize) -> std::io::Result<()> {
        self.cursor(n, 'D');
        Ok(())
    }

    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.push(s.as_bytes());
        self.push(b"\n");
        Ok(())
    }

    fn write_str(&self, s: &str) -> std::io::Result<()> {
        self.push(s.as_bytes());
        Ok(())
    }

    fn clear_line(&self) -> std::io::Result<()> {
        self.push(b"\r\x1b[2K");
        Ok(())
    }

    fn flush(&self) -> std::io::Result<()> {
        let bytes = std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        let mut err = std::io::stderr().lock();
        err.write_all(&bytes)?;
        err.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_gathered_until_flushed() {
        let term = NarrowStderr::default();
        term.move_cursor_up(0).unwrap();
        term.move_cursor_up(2).unwrap();
        term.clear_line().unwrap();
        term.write_str("bar").unwrap();
        let pending = term.pending.lock().unwrap().clone();
        assert_eq!(pending, b"\x1b[2A\r\x1b[2Kbar");
        term.flush().unwrap();
        assert!(term.pending.lock().unwrap().is_empty());
    }
}

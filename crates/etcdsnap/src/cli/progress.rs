//! A progress bar for long saves, verifies, drills and restores, drawn only when stderr is a
//! terminal, and a log writer that prints log lines above it instead of through it.
//!
//! The bar appears only once the total size is known (a bar of `0 B of 0 B` says nothing), or,
//! when no total ever arrives, as a byte counter after a second of work.

mod stderr;

use etcdsnap::units::human_bytes;
use etcdsnap_storage::pipeline::{Progress, ProgressCounter};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How often the bar is refreshed from the counter.
const TICK: Duration = Duration::from_millis(200);
/// How long a task without a known total runs before a byte counter is shown instead.
const COUNTER_AFTER: Duration = Duration::from_secs(1);

/// The bar on screen now, if any: log lines are written around it.
static ACTIVE: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// A running progress display; `finish` clears it.
pub struct ProgressLine {
    counter: Progress,
    task: Option<tokio::task::JoinHandle<()>>,
    bar: Option<ProgressBar>,
}

impl ProgressLine {
    /// Starts counting `what`, and drawing it if stderr is a terminal that can move its cursor.
    pub fn start(what: &str) -> ProgressLine {
        let counter: Progress = Arc::new(ProgressCounter::default());
        let dumb = std::env::var_os("TERM").is_some_and(|t| t == "dumb");
        if !std::io::stderr().is_terminal() || dumb {
            return ProgressLine { counter, task: None, bar: None };
        }
        // Hidden until there is something worth drawing.
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
        bar.set_message(what.to_string());
        *ACTIVE.lock().unwrap_or_else(PoisonError::into_inner) = Some(bar.clone());
        let (c, b) = (counter.clone(), bar.clone());
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut shown = Shown::Nothing;
            loop {
                let (done, total) = (c.done.load(Ordering::Relaxed), c.total.load(Ordering::Relaxed));
                let next = Shown::next(shown, total, started.elapsed());
                if next != shown {
                    b.set_style(next.style());
                    if shown == Shown::Nothing {
                        b.set_draw_target(ProgressDrawTarget::term_like_with_hz(
                            Box::new(stderr::NarrowStderr::default()),
                            20,
                        ));
                    }
                    shown = next;
                }
                if total > 0 {
                    b.set_length(total);
                }
                b.set_position(done);
                tokio::time::sleep(TICK).await;
            }
        });
        ProgressLine { counter, task: Some(task), bar: Some(bar) }
    }

    pub fn counter(&self) -> Progress {
        self.counter.clone()
    }

    pub fn finish(mut self) {
        self.clear();
    }

    fn clear(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
            ACTIVE.lock().unwrap_or_else(PoisonError::into_inner).take();
        }
    }
}

impl Drop for ProgressLine {
    /// An early return (an error) must not leave a bar behind that swallows the error message.
    fn drop(&mut self) {
        self.clear();
    }
}

/// What the bar shows: nothing yet, a byte counter (total unknown), or the bar with an ETA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shown {
    Nothing,
    Counter,
    Bar,
}

impl Shown {
    fn next(now: Shown, total: u64, elapsed: Duration) -> Shown {
        match now {
            _ if total > 0 => Shown::Bar,
            Shown::Nothing if elapsed >= COUNTER_AFTER => Shown::Counter,
            other => other,
        }
    }

    fn template(self) -> &'static str {
        match self {
            Shown::Bar => "{msg} [{bar:24}] {done} of {total} ({rate}, {eta} left)",
            Shown::Counter | Shown::Nothing => "{msg} {done} ({rate}, {elapsed})",
        }
    }

    /// Sizes written by the same function as every table and report (`287.3 MiB`).
    fn style(self) -> ProgressStyle {
        ProgressStyle::with_template(self.template())
            .map(|s| {
                s.progress_chars("=> ")
                    .with_key("done", |p: &ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = w.write_str(&human_bytes(p.pos()));
                    })
                    .with_key("total", |p: &ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = w.write_str(&human_bytes(p.len().unwrap_or(0)));
                    })
                    .with_key("rate", |p: &ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = write!(w, "{}/s", human_bytes(p.per_sec() as u64));
                    })
            })
            .unwrap_or_else(|_| ProgressStyle::default_bar())
    }
}

/// The log writer: stderr, with the active progress bar lifted off the screen while a line is
/// written, so that logs scroll above the bar instead of breaking it.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogWriter;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogLine;

    fn make_writer(&'a self) -> LogLine {
        LogLine(Vec::new())
    }
}

/// One formatted log event, written out whole when it is dropped.
pub struct LogLine(Vec<u8>);

impl Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let bar = ACTIVE.lock().unwrap_or_else(PoisonError::into_inner).clone();
        // Nowhere to report a failed write to stderr; the line is lost either way.
        let write = || {
            let _ = std::io::stderr().lock().write_all(&self.0);
        };
        match bar {
            Some(bar) => bar.suspend(write),
            None => write(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_waits_for_a_total_and_a_counter_for_a_second() {
        let early = Duration::from_millis(200);
        let late = Duration::from_secs(2);
        assert_eq!(Shown::next(Shown::Nothing, 0, early), Shown::Nothing);
        assert_eq!(Shown::next(Shown::Nothing, 0, late), Shown::Counter);
        assert_eq!(Shown::next(Shown::Nothing, 10, early), Shown::Bar);
        assert_eq!(Shown::next(Shown::Counter, 10, late), Shown::Bar);
        // Once a bar, always a bar (a total never goes back to unknown).
        assert_eq!(Shown::next(Shown::Bar, 0, late), Shown::Bar);
    }

    #[test]
    fn every_template_parses() {
        for shown in [Shown::Nothing, Shown::Counter, Shown::Bar] {
            assert!(ProgressStyle::with_template(shown.template()).is_ok(), "{shown:?}");
        }
    }
}

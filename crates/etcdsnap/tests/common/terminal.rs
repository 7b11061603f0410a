//! A real terminal of a given width: a detached tmux session on its own server, running one
//! shell command, whose screen is read back as a person would see it.

use std::time::{Duration, Instant};

type Error = Box<dyn std::error::Error>;

/// A tmux server with one session; killed on drop.
pub struct Terminal {
    socket: String,
}

impl Terminal {
    /// Starts `script` (run by bash) in a terminal `columns` wide and 50 lines high.
    pub fn start(columns: u16, script: &str) -> Result<Terminal, Error> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let socket = format!("etcdsnap-test-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        let terminal = Terminal { socket };
        let width = columns.to_string();
        let bash = format!("bash -c {}", shell_quote(script));
        let started = terminal.tmux(&["new-session", "-d", "-x", &width, "-y", "50", &bash]).status()?;
        if !started.success() {
            return Err("tmux could not start a session".into());
        }
        Ok(terminal)
    }

    fn tmux(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = std::process::Command::new("tmux");
        cmd.args(["-L", self.socket.as_str(), "-f", "/dev/null"]).args(args);
        cmd
    }

    /// The screen now, wrapped lines joined back into the lines that were written (`-J`).
    pub fn screen(&self) -> Result<String, Error> {
        let out = self.tmux(&["capture-pane", "-p", "-J"]).output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Polls the screen until it contains `text`; returns it.
    pub async fn wait_for(&self, text: &str, timeout: Duration) -> Result<String, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.screen()?;
            if screen.contains(text) {
                return Ok(screen);
            }
            if Instant::now() > deadline {
                return Err(format!("{text:?} never appeared on the terminal:\n{screen}").into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Types keys, as tmux names them (`C-c` is Ctrl-C).
    pub fn send_keys(&self, keys: &str) -> Result<(), Error> {
        let sent = self.tmux(&["send-keys", keys]).status()?;
        if !sent.success() {
            return Err(format!("tmux could not send {keys}").into());
        }
        Ok(())
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-server"]).status();
    }
}

/// `s` as one word of a shell command line.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

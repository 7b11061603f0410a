//! A progress line for long saves and verifies, drawn only when stderr is a terminal.

use etcdsnap_storage::pipeline::{Progress, ProgressCounter};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// A running progress display; `finish` clears it.
pub struct ProgressLine {
    counter: Progress,
    task: Option<tokio::task::JoinHandle<()>>,
    bar: Option<ProgressBar>,
}

impl ProgressLine {
    /// Starts drawing `what` if stderr is a terminal; otherwise only counts.
    pub fn start(what: &str) -> ProgressLine {
        let counter: Progress = Arc::new(ProgressCounter::default());
        if !std::io::stderr().is_terminal() {
            return ProgressLine { counter, task: None, bar: None };
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template("{msg} {bytes} of {total_bytes} ({binary_bytes_per_sec}, {elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        bar.set_style(style);
        bar.set_message(what.to_string());
        let (c, b) = (counter.clone(), bar.clone());
        let task = tokio::spawn(async move {
            loop {
                let total = c.total.load(Ordering::Relaxed);
                if total > 0 {
                    b.set_length(total);
                }
                b.set_position(c.done.load(Ordering::Relaxed));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        ProgressLine { counter, task: Some(task), bar: Some(bar) }
    }

    pub fn counter(&self) -> Progress {
        self.counter.clone()
    }

    pub fn finish(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

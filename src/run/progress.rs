//! A progress bar for long runs: trial, method, phase and time left (stderr; hidden off a TTY).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::scenario::Scenario;

pub struct Progress {
    bar: ProgressBar,
    trials: u32,
    method_secs: u64,
    /// Position at the start of the current method run.
    base: AtomicU64,
}

impl Progress {
    pub fn new(scenario: &Scenario, method_length: Duration) -> Self {
        let method_secs = method_length.as_secs().max(1);
        let total = method_secs * u64::from(scenario.trials) * scenario.methods.len() as u64;
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {pos}/{len} s  {msg}  (about {eta} left)",
            )
            .expect("invariant: the template is valid")
            .progress_chars("=> "),
        );
        Self {
            bar,
            trials: scenario.trials,
            method_secs,
            base: AtomicU64::new(0),
        }
    }

    pub fn start_method(&self, trial: u32, method: &str, index: usize) {
        let base = self.method_secs * index as u64;
        self.base.store(base, Ordering::Relaxed);
        self.bar.set_position(base);
        self.bar.set_message(format!(
            "trial {trial}/{} · {method} · starting",
            self.trials
        ));
    }

    /// Called about once a second by the method run.
    pub fn update(&self, trial: u32, method: &str, phase: &str, elapsed: Duration) {
        let done = elapsed.as_secs().min(self.method_secs);
        self.bar
            .set_position(self.base.load(Ordering::Relaxed) + done);
        self.bar.set_message(format!(
            "trial {trial}/{} · {method} · {phase}",
            self.trials
        ));
    }

    pub fn done(&self) {
        self.bar.finish_and_clear();
    }
}

//! A subscriber member's per-message work: the finite capacity of the backend it stands for.

use std::time::{Duration, Instant};

use super::subscription::{SubscriberSpec, WorkMode};

/// Idle work shorter than this is owed and slept off in one go (sleeps are not finer).
const IDLE_WORK_GRAIN: Duration = Duration::from_millis(1);

/// A member's per-message work: its finite capacity.
pub(super) struct Work {
    each: Duration,
    mode: WorkMode,
    /// `Idle`: when the member is free again (work owed accumulates below the sleep grain).
    free_at: Instant,
}

impl Work {
    pub(super) fn new(spec: &SubscriberSpec) -> Self {
        Self {
            each: spec.work,
            mode: spec.work_mode,
            free_at: Instant::now(),
        }
    }

    /// Blocks this member's thread for one message's work: it reads nothing meanwhile, so a
    /// backlog builds up in its socket and at its broker, as behind a busy backend.
    pub(super) fn spend(&mut self) {
        if self.each.is_zero() {
            return;
        }
        let now = Instant::now();
        match self.mode {
            WorkMode::Busy => {
                let until = now + self.each;
                while Instant::now() < until {
                    std::hint::spin_loop();
                }
            }
            WorkMode::Idle => {
                self.free_at = self.free_at.max(now) + self.each;
                let owed = self.free_at - now;
                if owed >= IDLE_WORK_GRAIN {
                    std::thread::sleep(owed);
                }
            }
        }
    }
}

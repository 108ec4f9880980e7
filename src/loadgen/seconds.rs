//! Per-second counts (pure): one publisher's written-message counter cut at every wall-clock
//! second, so the runner can line publisher seconds up with broker CPU samples.

use std::time::Duration;

use tokio::time::Instant;

/// Maps the monotonic clock to epoch milliseconds, fixed once per run (sleeps use `Instant`,
/// records use epoch ms; under paused time in tests both move together).
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    base: Instant,
    base_ms: u64,
}

impl Clock {
    pub fn new(base: Instant, base_ms: u64) -> Clock {
        Clock { base, base_ms }
    }

    /// Anchored at this instant and [`crate::now_ms`].
    pub fn start() -> Clock {
        Clock::new(Instant::now(), crate::now_ms())
    }

    pub fn ms_at(&self, t: Instant) -> u64 {
        self.base_ms + t.saturating_duration_since(self.base).as_millis() as u64
    }

    pub fn now_ms(&self) -> u64 {
        self.ms_at(Instant::now())
    }

    /// The instant the wall-clock second after the one containing `t` begins.
    pub fn next_second(&self, t: Instant) -> Instant {
        let ms = self.ms_at(t);
        t + Duration::from_millis(1000 - ms % 1000)
    }
}

/// One closed (or partial) second: messages written to `broker` during the second starting at
/// `t_ms` (epoch ms, a multiple of 1000).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecondCount {
    pub t_ms: u64,
    pub broker: String,
    pub sent: u64,
}

/// Cuts a monotonically growing `written` counter into wall-clock seconds.
#[derive(Clone, Debug)]
pub struct SecondCounter {
    bucket_ms: u64,
    written_at_start: u64,
    broker: String,
}

impl SecondCounter {
    pub fn new(now_ms: u64, written: u64, broker: String) -> SecondCounter {
        SecondCounter {
            bucket_ms: now_ms - now_ms % 1000,
            written_at_start: written,
            broker,
        }
    }

    /// Closes every second that ended by `now_ms`. Messages written since the last cut are
    /// given to the first closed second (the caller wakes at each boundary while sending; while
    /// disconnected nothing is written, so the later seconds rightly get 0).
    pub fn observe(&mut self, now_ms: u64, written: u64) -> Vec<SecondCount> {
        let mut closed = Vec::new();
        while now_ms >= self.bucket_ms + 1000 {
            closed.push(SecondCount {
                t_ms: self.bucket_ms,
                broker: self.broker.clone(),
                sent: written - self.written_at_start,
            });
            self.written_at_start = written;
            self.bucket_ms += 1000;
        }
        closed
    }

    /// Moves to another broker: closes whole seconds, then the current second's part so far (if
    /// any message was written in it), so every count names the broker it went to.
    pub fn switch_broker(&mut self, now_ms: u64, written: u64, broker: String) -> Vec<SecondCount> {
        let closed = self.finish(now_ms, written);
        self.broker = broker;
        closed
    }

    /// Closes whole seconds and the current partial one (only if it carries messages). The
    /// counter then continues from `written` in the same second.
    pub fn finish(&mut self, now_ms: u64, written: u64) -> Vec<SecondCount> {
        let mut closed = self.observe(now_ms, written);
        if written > self.written_at_start {
            closed.push(SecondCount {
                t_ms: self.bucket_ms,
                broker: self.broker.clone(),
                sent: written - self.written_at_start,
            });
            self.written_at_start = written;
        }
        closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(t_ms: u64, broker: &str, sent: u64) -> SecondCount {
        SecondCount {
            t_ms,
            broker: broker.into(),
            sent,
        }
    }

    #[test]
    fn cuts_at_wall_clock_seconds() {
        let mut s = SecondCounter::new(10_400, 0, "a".into());
        assert!(s.observe(10_999, 50).is_empty());
        assert_eq!(s.observe(11_000, 60), vec![c(10_000, "a", 60)]);
        // A gap of several seconds (disconnected): the later ones are zero.
        assert_eq!(
            s.observe(13_200, 90),
            vec![c(11_000, "a", 30), c(12_000, "a", 0)]
        );
        assert_eq!(s.finish(13_500, 95), vec![c(13_000, "a", 5)]);
        assert!(s.finish(13_600, 95).is_empty());
    }

    #[test]
    fn a_second_split_between_brokers_names_both() {
        let mut s = SecondCounter::new(5_000, 0, "a".into());
        assert_eq!(
            s.switch_broker(5_300, 10, "b".into()),
            vec![c(5_000, "a", 10)]
        );
        assert_eq!(s.observe(6_000, 25), vec![c(5_000, "b", 15)]);
        // Nothing written yet in this second: no empty partial record for `b`.
        assert!(s.switch_broker(6_100, 25, "c".into()).is_empty());
        assert_eq!(s.observe(7_000, 26), vec![c(6_000, "c", 1)]);
    }

    #[test]
    fn clock_maps_instants_to_epoch_seconds() {
        let base = Instant::now();
        let clock = Clock::new(base, 1_000_250);
        assert_eq!(clock.ms_at(base + Duration::from_millis(10)), 1_000_260);
        assert_eq!(clock.next_second(base), base + Duration::from_millis(750));
    }
}

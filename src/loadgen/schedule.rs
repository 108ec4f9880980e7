//! Rate control against absolute deadlines (oha style): message `i` is due at `start + i/rate`,
//! so timer lateness never accumulates into drift. A `per-message` publisher sleeps to each
//! message's deadline ([`Pacer::next_due`]); a `batched` one wakes every tick and sends
//! everything owed by then ([`Pacer::next_wake`]).

use std::time::Duration;

use tokio::time::Instant;

#[cfg(test)]
const BATCH_TICK: Duration = crate::loadgen::profile::DEFAULT_BATCH_TICK;

/// The deadlines of one publisher: `total = round(rate × duration)` messages, `i/rate` apart.
#[derive(Clone, Debug)]
pub struct Schedule {
    rate: f64,
    total: u64,
}

impl Schedule {
    pub fn new(rate: f64, duration: Duration) -> Schedule {
        Schedule {
            rate,
            total: (rate * duration.as_secs_f64()).round() as u64,
        }
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// Offset of message `i` from the start.
    pub fn deadline(&self, i: u64) -> Duration {
        // Whole nanoseconds, rounded: exact for every deadline a run can have.
        Duration::from_nanos((i as f64 * 1e9 / self.rate).round() as u64)
    }

    /// How many messages are due at `elapsed` (message 0 is due at once).
    pub fn due_by(&self, elapsed: Duration) -> u64 {
        let due = (elapsed.as_secs_f64() * self.rate).floor() as u64 + 1;
        due.min(self.total)
    }
}

/// A [`Schedule`] anchored at a start instant, with the count of messages already handed out.
#[derive(Clone, Debug)]
pub struct Pacer {
    schedule: Schedule,
    start: Instant,
    issued: u64,
    skipped: u64,
}

impl Pacer {
    pub fn new(schedule: Schedule, start: Instant) -> Pacer {
        Pacer {
            schedule,
            start,
            issued: 0,
            skipped: 0,
        }
    }

    /// Messages due by `now` and not yet issued or skipped.
    pub fn owed(&self, now: Instant) -> u64 {
        self.schedule
            .due_by(now.saturating_duration_since(self.start))
            .saturating_sub(self.issued)
    }

    /// Records that one message was handed to the client.
    pub fn issue(&mut self) {
        self.issued += 1;
    }

    /// Gives up every message owed by `now` (after a reconnect: they are not sent late in a
    /// burst). Returns how many were dropped.
    pub fn skip_owed(&mut self, now: Instant) -> u64 {
        let owed = self.owed(now);
        self.issued += owed;
        self.skipped += owed;
        owed
    }

    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// The payload sequence number of the next message: the messages issued so far, skipped
    /// ones excluded (a skipped message takes no number, so a gap is a message lost).
    pub fn sequence(&self) -> u64 {
        self.issued - self.skipped
    }

    pub fn done(&self) -> bool {
        self.issued >= self.schedule.total()
    }

    pub fn target_total(&self) -> u64 {
        self.schedule.total()
    }

    /// The deadline of the next message to issue; `None` once every message has been issued.
    pub fn next_due(&self) -> Option<Instant> {
        (!self.done()).then(|| self.start + self.schedule.deadline(self.issued))
    }

    /// When to wake next: the next message's deadline, but no sooner than `tick` after `now`
    /// (batching), and no later than the last message's deadline (so the batching never pushes
    /// the tail past the end). `None` once every message has been issued.
    pub fn next_wake(&self, now: Instant, tick: Duration) -> Option<Instant> {
        if self.done() {
            return None;
        }
        let next_due = self.start + self.schedule.deadline(self.issued);
        let last_due = self.start + self.schedule.deadline(self.schedule.total() - 1);
        Some(next_due.max(now + tick).min(last_due))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_counts_are_absolute() {
        let s = Schedule::new(2000.0, Duration::from_secs(10));
        assert_eq!(s.total(), 20_000);
        assert_eq!(s.due_by(Duration::ZERO), 1);
        assert_eq!(s.due_by(Duration::from_millis(1)), 3);
        assert_eq!(s.due_by(Duration::from_secs(1)), 2001);
        assert_eq!(s.due_by(Duration::from_secs(9)), 18_001);
        assert_eq!(s.due_by(Duration::from_secs(100)), 20_000);
        assert_eq!(s.deadline(2000), Duration::from_secs(1));
    }

    /// Drives a pacer the way the publisher does, under paused time (the clock jumps to each
    /// wake-up; `lateness` makes wake-ups late to show that lateness does not accumulate).
    /// Returns messages issued per whole second; asserts nothing is issued later than the end
    /// plus tokio's 1 ms timer granularity, which is where the last sub-millisecond batch lands.
    async fn drive(rate: f64, secs: u64, lateness: impl Fn(u64) -> Duration) -> Vec<u64> {
        let start = Instant::now();
        let end = start + Duration::from_secs(secs);
        let mut pacer = Pacer::new(Schedule::new(rate, Duration::from_secs(secs)), start);
        let mut per_second = vec![0u64; secs as usize];
        let mut wake = 0u64;
        loop {
            let now = Instant::now();
            let owed = pacer.owed(now);
            if owed > 0 {
                assert!(
                    now <= end + Duration::from_millis(1) + lateness(wake),
                    "rate {rate}"
                );
            }
            for _ in 0..owed {
                pacer.issue();
                let second = ((now - start).as_secs() as usize).min(secs as usize - 1);
                per_second[second] += 1;
            }
            let Some(next) = pacer.next_wake(now, BATCH_TICK) else {
                break;
            };
            wake += 1;
            tokio::time::sleep_until(next + lateness(wake)).await;
        }
        per_second
    }

    #[tokio::test(start_paused = true)]
    async fn exactly_rate_times_duration_without_drift() {
        for (rate, secs) in [(2000.0, 10), (10_000.0, 5), (3.0, 4), (2800.0, 10)] {
            let per_second = drive(rate, secs, |_| Duration::ZERO).await;
            let total: u64 = per_second.iter().sum();
            assert_eq!(total, (rate * secs as f64) as u64, "rate {rate}");
            // Every second carries `rate` messages, give or take the one batch (at most one
            // tick's worth) that straddles a second boundary.
            let slack = (rate * BATCH_TICK.as_secs_f64()).ceil() as u64;
            for (s, &n) in per_second.iter().enumerate() {
                assert!(
                    n.abs_diff(rate as u64) <= slack,
                    "rate {rate}, second {s}: {per_second:?}"
                );
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn late_wakeups_do_not_accumulate() {
        // Every wake-up is 0–3 ms late: the total stays exact and each second is still off by
        // no more than one (late) batch: lateness is not carried into the next deadline.
        let per_second = drive(2000.0, 10, |w| Duration::from_millis(w % 4)).await;
        assert_eq!(per_second.iter().sum::<u64>(), 20_000);
        for &n in &per_second {
            assert!(n.abs_diff(2000) <= 2 * 8 + 1, "{per_second:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn per_message_deadlines_are_exact() {
        // 10,000 msg/s: the n-th message is due exactly n × 100 µs after the start, however
        // late the previous one went out.
        let start = Instant::now();
        let mut pacer = Pacer::new(Schedule::new(10_000.0, Duration::from_secs(1)), start);
        for n in 0..10_000u64 {
            let due = pacer.next_due().unwrap();
            assert_eq!(due - start, Duration::from_micros(100 * n));
            pacer.issue();
        }
        assert_eq!(pacer.next_due(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn skipped_messages_are_not_sent_later() {
        let start = Instant::now();
        let mut pacer = Pacer::new(Schedule::new(1000.0, Duration::from_secs(2)), start);
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(pacer.skip_owed(Instant::now()), 501);
        assert_eq!(pacer.owed(Instant::now()), 0);
        tokio::time::advance(Duration::from_millis(10)).await;
        assert_eq!(pacer.owed(Instant::now()), 10);
        assert_eq!(pacer.skipped(), 501);
        assert_eq!(pacer.target_total(), 2000);
    }

    #[tokio::test(start_paused = true)]
    async fn skipped_messages_take_no_sequence_number() {
        let start = Instant::now();
        let mut pacer = Pacer::new(Schedule::new(1000.0, Duration::from_secs(2)), start);
        assert_eq!(pacer.sequence(), 0);
        pacer.issue();
        pacer.issue();
        assert_eq!(pacer.sequence(), 2);
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(pacer.skip_owed(Instant::now()), 99);
        assert_eq!(pacer.sequence(), 2, "skipped messages were numbered");
        pacer.issue();
        assert_eq!(pacer.sequence(), 3);
    }
}

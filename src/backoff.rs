//! Reconnect backoff, one policy for every client the harness runs (agent report and counter
//! connections, publishers): wait 0.1 s after the first failure, double each time, never more
//! than 2 s; start again from 0.1 s after a success.

use std::time::Duration;

/// First wait after a failure.
pub const FIRST: Duration = Duration::from_millis(100);
/// Longest wait between two attempts.
pub const MAX: Duration = Duration::from_secs(2);

/// Doubling delays from `first` up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Default for Backoff {
    /// 0.1 s, 0.2 s, 0.4 s, 0.8 s, 1.6 s, 2 s, 2 s, ...
    fn default() -> Self {
        Backoff::new(FIRST, MAX)
    }
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        let first = first.min(max);
        Backoff {
            first,
            max,
            next: first,
        }
    }

    /// The delay to wait now; the one after is twice as long, up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        delay
    }

    /// The delay [`next_delay`](Self::next_delay) will return, without advancing.
    pub fn peek(&self) -> Duration {
        self.next
    }

    /// After a success: the next failure waits `first` again.
    pub fn reset(&mut self) {
        self.next = self.first;
    }

    /// Sleeps for the next delay.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_caps_and_resets() {
        let mut b = Backoff::default();
        let delays: Vec<_> = (0..7).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 2000, 2000]);
        b.reset();
        assert_eq!(b.peek(), FIRST);
        assert_eq!(b.next_delay(), FIRST);
        assert_eq!(b.next_delay(), FIRST * 2);
    }

    #[test]
    fn a_first_delay_above_the_cap_is_the_cap() {
        let mut b = Backoff::new(Duration::from_secs(5), Duration::from_secs(1));
        assert_eq!(b.next_delay(), Duration::from_secs(1));
        assert_eq!(b.next_delay(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn waits_sum_to_the_schedule_under_paused_time() {
        let start = tokio::time::Instant::now();
        let mut b = Backoff::default();
        for _ in 0..6 {
            b.wait().await;
        }
        // 0.1 + 0.2 + 0.4 + 0.8 + 1.6 + 2.0 s, exactly: the paused clock only moves by sleeps.
        assert_eq!(start.elapsed(), Duration::from_millis(5100));
        b.reset();
        let again = tokio::time::Instant::now();
        b.wait().await;
        assert_eq!(again.elapsed(), FIRST);
    }
}

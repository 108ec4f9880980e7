//! Sub-millisecond sleeps for per-message pacing, without spinning a core.
//!
//! tokio's timer wheel has 1 ms slots, so a 10,000 msg/s publisher sleeping on it would wake
//! once per millisecond and write ten messages back to back: the batching MQTTLoader does not
//! do. Each publisher instead owns a Linux `timerfd` (an hrtimer, no timer slack), registered
//! with tokio's reactor: the runtime thread sleeps in `epoll_wait` until the deadline and runs
//! the publisher right there, with no second thread to wake and no hand-off between threads
//! (one timer thread waking tokio tasks instead costs about twice the CPU per message).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// One-shot timer with nanosecond resolution; one per publisher.
pub struct PreciseTimer {
    fd: AsyncFd<OwnedFd>,
}

impl PreciseTimer {
    /// Needs a tokio runtime with I/O enabled.
    pub fn new() -> io::Result<PreciseTimer> {
        // SAFETY: timerfd_create returns a new fd we own (or -1).
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh fd owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: the OwnedFd stays open and is the same fd for the AsyncFd's whole life.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(PreciseTimer { fd })
    }

    /// Completes at `at` (std clock = CLOCK_MONOTONIC), typically a few microseconds after.
    pub async fn sleep_until(&self, at: Instant) -> io::Result<()> {
        let Some(wait) = at
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
        else {
            return Ok(());
        };
        self.arm(wait)?;
        self.tick().await.map(|_| ())
    }

    /// Fires at `first` and then every `period`, like Java's `scheduleAtFixedRate` (the
    /// kernel keeps the phase: no re-arming, so one syscall less per message). Wait for each
    /// expiration with [`PreciseTimer::tick`]; [`PreciseTimer::sleep_until`] re-arms one-shot.
    pub fn start_periodic(&self, first: Instant, period: Duration) -> io::Result<()> {
        // A zero it_value would disarm the timer: a first tick already due fires in 1 ns.
        let wait = first
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .unwrap_or(Duration::from_nanos(1));
        self.set(wait, period)
    }

    /// Completes at the next expiration of a periodic timer; returns how many expired since
    /// the last tick (more than 1 when this thread was late).
    pub async fn tick(&self) -> io::Result<u64> {
        loop {
            let mut ready = self.fd.readable().await?;
            let mut expirations = [0u8; 8];
            // SAFETY: reads at most 8 bytes into our buffer from our fd.
            let read = ready.try_io(|fd| {
                match unsafe { libc::read(fd.as_raw_fd(), expirations.as_mut_ptr().cast(), 8) } {
                    n if n >= 0 => Ok(()),
                    _ => Err(io::Error::last_os_error()),
                }
            });
            match read {
                Ok(result) => {
                    // The read took every expiration: the fd stays unreadable until the next
                    // one, whose edge epoll reports anew. Clearing now saves the read that would
                    // only learn EAGAIN (one syscall per message).
                    ready.clear_ready();
                    return result.map(|()| u64::from_ne_bytes(expirations));
                }
                Err(_would_block) => continue, // stale readiness; try_io cleared it
            }
        }
    }

    /// Arms the timer to fire once after `wait`; re-arming resets any pending expiration.
    fn arm(&self, wait: Duration) -> io::Result<()> {
        self.set(wait, Duration::ZERO)
    }

    /// First expiration after `wait`, then every `period` (zero: once).
    fn set(&self, wait: Duration, period: Duration) -> io::Result<()> {
        let timespec = |d: Duration| libc::timespec {
            tv_sec: d.as_secs() as libc::time_t,
            tv_nsec: libc::c_long::from(d.subsec_nanos() as i32),
        };
        let spec = libc::itimerspec {
            it_interval: timespec(period),
            it_value: timespec(wait),
        };
        // SAFETY: sets our own timer from a fully initialised itimerspec.
        let rc =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn never_wakes_early_and_can_be_rearmed() {
        let timer = PreciseTimer::new().unwrap();
        for us in [300u64, 1_500, 50] {
            let at = Instant::now() + Duration::from_micros(us);
            timer.sleep_until(at).await.unwrap();
            assert!(Instant::now() >= at, "woke before its deadline");
        }
    }

    #[tokio::test]
    async fn an_abandoned_sleep_does_not_end_the_next_one_early() {
        let timer = PreciseTimer::new().unwrap();
        // Armed for 1 ms (polled once), then abandoned; it fires while nobody waits.
        tokio::select! {
            biased;
            _ = timer.sleep_until(Instant::now() + Duration::from_millis(1)) => {
                panic!("a 1 ms sleep completed at its first poll")
            }
            () = std::future::ready(()) => {}
        }
        std::thread::sleep(Duration::from_millis(2));
        let at = Instant::now() + Duration::from_millis(3);
        timer.sleep_until(at).await.unwrap();
        assert!(
            Instant::now() >= at,
            "a stale expiration ended the sleep early"
        );
    }

    #[tokio::test]
    async fn periodic_ticks_keep_their_phase_and_count_missed_expirations() {
        let timer = PreciseTimer::new().unwrap();
        let period = Duration::from_micros(500);
        let first = Instant::now() + Duration::from_millis(1);
        timer.start_periodic(first, period).unwrap();
        let mut expired = timer.tick().await.unwrap();
        assert!(expired >= 1);
        assert!(Instant::now() >= first, "first tick before its time");
        // Miss several periods: the next tick reports them all, so a pacer can catch up.
        std::thread::sleep(Duration::from_millis(3));
        let missed = timer.tick().await.unwrap();
        assert!(
            missed >= 5,
            "3 ms late at 0.5 ms per tick reported {missed} expirations"
        );
        expired += missed;
        // The phase is kept: expiration n (from 1) is never before first + (n − 1) × period.
        while expired < 30 {
            expired += timer.tick().await.unwrap();
            let elapsed = Instant::now() - first;
            assert!(elapsed >= period * u32::try_from(expired - 1).unwrap());
        }
    }

    #[tokio::test]
    async fn a_past_deadline_is_ready_at_once() {
        let timer = PreciseTimer::new().unwrap();
        timer.sleep_until(Instant::now()).await.unwrap();
    }
}

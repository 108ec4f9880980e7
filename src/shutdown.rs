//! Stopping on a signal, the same way in every role: SIGINT (Ctrl-C), SIGTERM (`kill`, systemd,
//! a container stop) and SIGHUP (the SSH session or terminal went away) all mean "finish what is
//! in flight, stop children, write what was measured, exit".
//!
//! The default action of any of them kills the process at once, and the broker children of
//! `mqdispatch run` (each in its own process group) would outlive it. So every role listens for
//! all three, from before its first child starts.

use std::fmt;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

/// Which signal asked us to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Interrupt,
    Terminate,
    Hangup,
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stop::Interrupt => "SIGINT",
            Stop::Terminate => "SIGTERM",
            Stop::Hangup => "SIGHUP",
        })
    }
}

/// Handlers for SIGINT, SIGTERM and SIGHUP, installed when this is created (from then on none
/// of them kills the process; they queue here).
#[derive(Debug)]
pub struct Signals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl Signals {
    /// Installs the handlers. Needs a tokio runtime (with its I/O driver) to be current.
    pub fn install() -> std::io::Result<Self> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// The next of the three signals to arrive.
    pub async fn recv(&mut self) -> Stop {
        tokio::select! {
            _ = self.interrupt.recv() => Stop::Interrupt,
            _ = self.terminate.recv() => Stop::Terminate,
            _ = self.hangup.recv() => Stop::Hangup,
        }
    }
}

/// Cancels `cancel` on the first SIGINT, SIGTERM or SIGHUP, after calling `on_stop` with it
/// (to say what happens next). The handlers are installed before this returns; dropping the
/// handle stops watching (later signals then queue unanswered rather than kill the process).
pub fn cancel_on_signal(
    cancel: &CancellationToken,
    on_stop: impl FnOnce(Stop) + Send + 'static,
) -> std::io::Result<AbortOnDropHandle<()>> {
    let mut signals = Signals::install()?;
    let cancel = cancel.clone();
    Ok(AbortOnDropHandle::new(tokio::spawn(async move {
        tokio::select! {
            stop = signals.recv() => {
                on_stop(stop);
                cancel.cancel();
            }
            _ = cancel.cancelled() => {}
        }
    })))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn raise(sig: i32) {
        // SAFETY: raise(3) on our own process; the handlers are installed first.
        assert_eq!(unsafe { libc::raise(sig) }, 0);
    }

    // One test for all three signals: they are process-wide, so two tests raising them at once
    // would see each other's.
    #[tokio::test]
    async fn each_stop_signal_is_caught_and_named() {
        let mut signals = Signals::install().unwrap();
        for (sig, stop) in [
            (libc::SIGTERM, Stop::Terminate),
            (libc::SIGHUP, Stop::Hangup),
            (libc::SIGINT, Stop::Interrupt),
        ] {
            raise(sig);
            let got = tokio::time::timeout(Duration::from_secs(10), signals.recv()).await;
            assert_eq!(got, Ok(stop));
        }

        let cancel = CancellationToken::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _watch = cancel_on_signal(&cancel, move |stop| {
            let _ = tx.send(stop);
        })
        .unwrap();
        assert!(!cancel.is_cancelled());
        raise(libc::SIGHUP);
        tokio::time::timeout(Duration::from_secs(10), cancel.cancelled())
            .await
            .expect("SIGHUP cancels the token");
        assert_eq!(rx.await, Ok(Stop::Hangup));
    }
}

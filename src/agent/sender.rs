//! One report connection to a dispatcher: JSON lines out, reconnect with backoff whenever it
//! closes. Sampling never waits for it: reports that find the queue full are dropped.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::backoff::Backoff;

/// Reports queued per dispatcher while it is slow or away; more are dropped.
const QUEUE: usize = 4;
/// A dispatcher that does not take a line within this long is treated as gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Handle of one dispatcher connection task.
#[derive(Debug)]
pub struct ReportSender {
    pub dispatcher: String,
    tx: mpsc::Sender<String>,
    dropped: u64,
}

impl ReportSender {
    /// Starts the connection task; it runs until `cancel`.
    pub fn spawn(
        dispatcher: String,
        cancel: CancellationToken,
        tasks: &mut tokio::task::JoinSet<()>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tasks.spawn(connection_loop(dispatcher.clone(), rx, cancel));
        ReportSender {
            dispatcher,
            tx,
            dropped: 0,
        }
    }

    /// Queues one line without waiting; drops it if the queue is full.
    pub fn offer(&mut self, line: String) {
        if self.tx.try_send(line).is_err() {
            self.dropped += 1;
            if self.dropped.is_power_of_two() {
                debug!(dispatcher = %self.dispatcher, dropped = self.dropped, "dropping reports");
            }
        }
    }
}

async fn connection_loop(
    dispatcher: String,
    mut rx: mpsc::Receiver<String>,
    cancel: CancellationToken,
) {
    let mut backoff = Backoff::default();
    let mut was_connected = false;
    loop {
        let stream = tokio::select! {
            _ = cancel.cancelled() => return,
            s = TcpStream::connect(&dispatcher) => s,
        };
        match stream {
            Ok(stream) => {
                if was_connected {
                    info!(%dispatcher, "reconnected to dispatcher");
                }
                was_connected = true;
                backoff.reset();
                // Reports queued while disconnected are stale: start with fresh ones.
                while rx.try_recv().is_ok() {}
                let _ = stream.set_nodelay(true);
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    reason = serve(stream, &mut rx) => {
                        match reason {
                            Some(e) => debug!(%dispatcher, error = %e, "report connection lost"),
                            None => return, // agent finished
                        }
                    }
                }
            }
            Err(e) => debug!(%dispatcher, error = %e, "dispatcher not reachable"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = backoff.wait() => {}
        }
    }
}

/// Writes queued lines until the connection fails (returns the reason) or the agent stops
/// (returns `None`). Reading detects a dispatcher that closed while we had nothing to say.
async fn serve(stream: TcpStream, rx: &mut mpsc::Receiver<String>) -> Option<std::io::Error> {
    let (mut read, mut write) = stream.into_split();
    let mut sink = [0u8; 256];
    loop {
        tokio::select! {
            line = rx.recv() => {
                let line = line?;
                match tokio::time::timeout(WRITE_TIMEOUT, write.write_all(line.as_bytes())).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Some(e),
                    Err(_) => return Some(std::io::Error::other("write timed out")),
                }
            }
            n = read.read(&mut sink) => match n {
                Ok(0) => return Some(std::io::Error::other("dispatcher closed the connection")),
                Ok(_) => {} // the protocol is one-way; ignore anything sent back
                Err(e) => return Some(e),
            }
        }
    }
}

//! `--events-out FILE.jsonl|-`: what the dispatcher does, one JSON object a line, as it
//! happens; what `mqdispatch run` reads from a dispatcher it started on another host. Each
//! line's `event` says what it is:
//! - `fed`: every broker has a sample now (once; `t_ms` epoch ms);
//! - `decision`: one placement, the fields of [`Decision`] (`t_ms` epoch ms);
//! - `move`: one live move, the fields of [`MoveRecord`];
//! - `ended`: the last line, the process's CPU time (user + system) in `cpu_us`.
//!
//! On stdout (`-`) the lines follow the `listening on` / `reports on` lines.

use std::io::Write;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Decision;
use super::rebalance::MoveRecord;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum StreamEvent {
    Fed { t_ms: u64 },
    Decision(Decision),
    Move(MoveRecord),
    Ended { cpu_us: u64 },
}

impl StreamEvent {
    /// One line, newline included.
    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(self).expect("invariant: plain data serializes");
        line.push('\n');
        line
    }
}

type Out = Box<dyn Write + Send>;

/// The writer of one dispatcher's stream: hand [`EventStream::decisions`],
/// [`EventStream::moves`] and [`EventStream::fed`] to the dispatcher, then
/// [`EventStream::finish`] once it has stopped.
pub struct EventStream {
    pub decisions: UnboundedSender<Decision>,
    pub moves: UnboundedSender<MoveRecord>,
    pub fed: Arc<watch::Sender<bool>>,
    done: CancellationToken,
    task: JoinHandle<std::io::Result<Out>>,
}

impl EventStream {
    /// Starts writing to `out`; every decision is passed on to `also` too (the `--events`
    /// CSV), when given.
    pub fn start(out: Out, also: Option<UnboundedSender<Decision>>) -> EventStream {
        let (decisions, decision_rx) = unbounded_channel();
        let (moves, move_rx) = unbounded_channel();
        let (fed, fed_rx) = watch::channel(false);
        let done = CancellationToken::new();
        let channels = Channels {
            decisions: decision_rx,
            moves: move_rx,
            fed: fed_rx,
            also,
        };
        let task = tokio::spawn(channels.write_all(out, done.clone()));
        EventStream {
            decisions,
            moves,
            fed: Arc::new(fed),
            done,
            task,
        }
    }

    /// Once the dispatcher has stopped: what is queued is written, then the `ended` line.
    pub async fn finish(self) -> anyhow::Result<()> {
        let EventStream {
            decisions,
            moves,
            fed,
            done,
            task,
        } = self;
        drop((decisions, moves, fed));
        done.cancel();
        let mut out = task.await??;
        let cpu_us = crate::agent::cpu::own_process_cpu().as_micros() as u64;
        out.write_all(StreamEvent::Ended { cpu_us }.to_line().as_bytes())?;
        out.flush()?;
        Ok(())
    }
}

struct Channels {
    decisions: UnboundedReceiver<Decision>,
    moves: UnboundedReceiver<MoveRecord>,
    fed: watch::Receiver<bool>,
    also: Option<UnboundedSender<Decision>>,
}

impl Channels {
    /// Writes each event as it comes until `done`, then what is left in the queues.
    async fn write_all(mut self, mut out: Out, done: CancellationToken) -> std::io::Result<Out> {
        let mut fed_open = true;
        loop {
            let event = tokio::select! {
                // What is queued goes out before `done` ends the loop.
                biased;
                Some(d) = self.decisions.recv() => self.decision(d),
                Some(m) = self.moves.recv() => StreamEvent::Move(m),
                changed = self.fed.changed(), if fed_open => match changed {
                    Ok(()) if *self.fed.borrow_and_update() => {
                        fed_open = false;
                        StreamEvent::Fed { t_ms: crate::now_ms() }
                    }
                    Ok(()) => continue,
                    Err(_) => { fed_open = false; continue }
                },
                () = done.cancelled() => break,
            };
            // Each line as it happens: the reader acts on `fed` at once.
            out.write_all(event.to_line().as_bytes())?;
            out.flush()?;
        }
        while let Ok(d) = self.decisions.try_recv() {
            let event = self.decision(d);
            out.write_all(event.to_line().as_bytes())?;
        }
        while let Ok(m) = self.moves.try_recv() {
            out.write_all(StreamEvent::Move(m).to_line().as_bytes())?;
        }
        out.flush()?;
        Ok(out)
    }

    fn decision(&self, d: Decision) -> StreamEvent {
        if let Some(also) = &self.also {
            let _ = also.send(d.clone());
        }
        StreamEvent::Decision(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatcher::rebalance::Outcome;
    use crate::dispatcher::{FedBy, Role};
    use std::sync::Mutex;

    /// A `Write` whose bytes the test can read afterwards.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn decision() -> Decision {
        Decision {
            t_ms: 1_764_930_000_123,
            client_id: "t1-proposed-light-1".into(),
            broker: Some("b2".into()),
            loads: vec![("b1".into(), 12.5), ("b2".into(), 0.0)],
            predicted: vec![("b1".into(), 0.0), ("b2".into(), 1.5)],
            sample_ages_ms: vec![("b1".into(), Some(250)), ("b2".into(), None)],
            fed_by: FedBy::Reports,
            role: Role::Publisher,
            group: None,
        }
    }

    #[tokio::test]
    async fn every_event_is_a_line_that_reads_back_and_ended_comes_last() {
        let out = Shared::default();
        let (csv_tx, mut csv_rx) = unbounded_channel();
        let stream = EventStream::start(Box::new(out.clone()), Some(csv_tx));
        let moved = MoveRecord {
            t_ms: 1_764_930_001_000,
            client_id: "t1-proposed-heavy-1".into(),
            from: "b1".into(),
            to: "b2".into(),
            rate_msgs_per_s: 2500.0,
            outcome: Outcome::Disconnect9c,
            role: Role::Publisher,
        };
        stream.fed.send_replace(true);
        stream.decisions.send(decision()).unwrap();
        stream.moves.send(moved.clone()).unwrap();
        stream.finish().await.unwrap();

        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let events: Vec<StreamEvent> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(events.len(), 4, "{text}");
        assert!(
            events.contains(&StreamEvent::Decision(decision())),
            "{text}"
        );
        assert!(events.contains(&StreamEvent::Move(moved)), "{text}");
        assert!(
            events.iter().any(|e| matches!(e, StreamEvent::Fed { .. })),
            "{text}"
        );
        assert!(
            matches!(events[3], StreamEvent::Ended { cpu_us } if cpu_us > 0),
            "{text}"
        );
        assert!(text.contains(r#""outcome":"disconnect-0x9c""#), "{text}");
        assert_eq!(csv_rx.try_recv().unwrap(), decision(), "teed to --events");
    }
}

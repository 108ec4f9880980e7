//! One publisher: wait for its join time, get placed on a broker, publish at its rate for its
//! duration, reconnect with backoff when the connection drops, then disconnect cleanly.
//!
//! Two send paths share this life cycle. A per-message publisher on plain TCP keeps its socket
//! and reads from it while the loader's send thread writes a pre-encoded PUBLISH per message on
//! it (`super::direct`, `super::send_thread`: one `send(2)` per message at its deadline). TLS and batched publishers go through a rumqttc client: there a message counts
//! as sent when rumqttc has written it to the socket (`Outgoing::Publish` from the event loop),
//! and its payload header's send time is taken when it is handed to rumqttc's request channel.
//! Either way `sent` is what the broker will see, not what was queued, and every payload
//! carries the header of `crate::payload` (sequence numbers from 0 across reconnections and
//! moves). Messages owed while disconnected are skipped, not sent late in a burst, and take no
//! sequence number: the target stays, the achieved count drops, and the gap shows as downtime.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop};
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::LoadEvent;
use super::lateness::Lateness;
use super::placement::{Connector, Entry, Link, Placed, PlacementError, place, server_moved_us};
use super::precise_timer::PreciseTimer;
use super::profile::SendMode;
use super::schedule::{Pacer, Schedule};
use super::seconds::{Clock, SecondCounter};
use crate::payload::{Header, now_us};
use crate::proto::RedirectReason;

/// A publisher behind schedule (broker back-pressure) catches up for at most this long past its
/// end; whatever is still owed then is not sent.
pub(super) const PACE_OVERRUN: Duration = Duration::from_secs(1);
/// Per-message publishers on a rumqttc client (TLS) with messages closer than this sleep on their
/// own timerfd; slower ones on tokio's timer (1 ms resolution is nothing next to their interval,
/// and a fleet of slow publishers then needs no file descriptor each).
const PRECISE_BELOW: Duration = Duration::from_millis(20);
/// Time allowed for the queued messages and the DISCONNECT to go out at the end.
pub(super) const DISCONNECT_GRACE: Duration = Duration::from_secs(2);
/// Same, after cancellation: stop promptly.
pub(super) const CANCEL_GRACE: Duration = Duration::from_millis(250);

/// Everything one publisher needs, owned (it runs as its own task).
pub(crate) struct PublisherCtx {
    pub name: String,
    pub profile: String,
    pub topic: String,
    /// `crate::payload::template`: each message is this with its header written in.
    pub payload: Bytes,
    pub qos: QoS,
    pub rate: f64,
    pub duration: Duration,
    pub send: SendMode,
    pub batch_tick: Duration,
    pub join_at: Instant,
    pub entry: Entry,
    pub connector: Connector,
    pub clock: Clock,
    /// Where the direct path's writes happen.
    pub send_thread: super::send_thread::SendThreadHandle,
}

/// What one publisher did.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PublisherSummary {
    pub name: String,
    pub profile: String,
    /// The broker it was last connected to.
    pub broker: Option<String>,
    /// Epoch ms of its first CONNACK.
    pub joined_ms: Option<u64>,
    /// Redirect latency of its first placement.
    pub redirect_ms: Option<f64>,
    pub sent_total: u64,
    pub target_total: u64,
    /// Total time between a connection drop and the next CONNACK.
    pub downtime_ms: u64,
    pub reconnects: u32,
    /// Messages owed during downtime and not sent.
    pub skipped: u64,
    /// How late each message was handed to the client, against its deadline.
    #[serde(skip)]
    pub lateness: Lateness,
}

pub(super) enum SessionEnd {
    /// Schedule finished (or its end time passed) and the connection was closed.
    Done,
    Cancelled,
    /// The connection failed; `moved`: a server DISCONNECT 0x9C/0x9D named where to go.
    Dropped {
        error: String,
        moved: Option<(RedirectReason, String)>,
    },
}

/// Runs one publisher to completion. Only a fatal placement error (a redirect loop, a missing
/// Server Reference, ...) is an error; a publisher that never got a broker before its end time
/// finishes with nothing sent.
pub(crate) async fn run_publisher(
    ctx: PublisherCtx,
    events: UnboundedSender<LoadEvent>,
    cancel: CancellationToken,
) -> Result<PublisherSummary, PlacementError> {
    let schedule = Schedule::new(ctx.rate, ctx.duration);
    let mut summary = PublisherSummary {
        name: ctx.name.clone(),
        profile: ctx.profile.clone(),
        broker: None,
        joined_ms: None,
        redirect_ms: None,
        sent_total: 0,
        target_total: schedule.total(),
        downtime_ms: 0,
        reconnects: 0,
        skipped: 0,
        lateness: Lateness::default(),
    };
    let result = publish_all(&ctx, schedule, &mut summary, &events, &cancel).await;
    let _ = events.send(LoadEvent::Finished {
        publisher: ctx.name.clone(),
        sent_total: summary.sent_total,
        target_total: summary.target_total,
        downtime_ms: summary.downtime_ms,
    });
    result.map(|()| summary)
}

async fn publish_all(
    ctx: &PublisherCtx,
    schedule: Schedule,
    summary: &mut PublisherSummary,
    events: &UnboundedSender<LoadEvent>,
    cancel: &CancellationToken,
) -> Result<(), PlacementError> {
    tokio::select! {
        _ = cancel.cancelled() => return Ok(()),
        _ = tokio::time::sleep_until(ctx.join_at) => {}
    }
    let mut memory = Memory::default();
    let give_up = ctx.join_at + ctx.duration;
    let Some(mut placed) = connect_with_backoff(ctx, &mut memory, give_up, cancel).await? else {
        warn!(publisher = %ctx.name, "no broker before the end of its duration: nothing sent");
        return Ok(());
    };
    let start = Instant::now();
    let end = start + ctx.duration;
    let t_ms = ctx.clock.ms_at(start);
    info!(publisher = %ctx.name, broker = %placed.session.broker, redirect_ms = ?placed.redirect_ms, "joined");
    summary.joined_ms = Some(t_ms);
    summary.redirect_ms = placed.redirect_ms;
    summary.broker = Some(placed.session.broker.clone());
    let _ = events.send(LoadEvent::Joined {
        publisher: ctx.name.clone(),
        broker: placed.session.broker.clone(),
        t_ms,
        redirect_ms: placed.redirect_ms,
    });
    let timer = precise_timer_for(ctx);
    let mut pacing = Pacing {
        pacer: Pacer::new(schedule, start),
        lateness: Lateness::default(),
        timer: timer.as_ref(),
    };
    let mut seconds = Seconds::new(
        ctx.clock,
        &ctx.name,
        placed.session.broker.clone(),
        events.clone(),
    );
    let result = loop {
        let end_reason = drive(
            ctx,
            &mut placed.session,
            &mut pacing,
            &mut seconds,
            end,
            cancel,
        )
        .await;
        let (error, moved) = match end_reason {
            SessionEnd::Done | SessionEnd::Cancelled => break Ok(()),
            SessionEnd::Dropped { error, moved } => (error, moved),
        };
        let broker = placed.session.broker.clone();
        let down_at = Instant::now();
        warn!(publisher = %ctx.name, %broker, %error, "connection lost");
        let _ = events.send(LoadEvent::Down {
            publisher: ctx.name.clone(),
            broker: broker.clone(),
            t_ms: ctx.clock.ms_at(down_at),
            error,
        });
        // A server DISCONNECT 0x9C/0x9D names where to go: follow it (0x9D for good).
        if let Some((reason, reference)) = moved {
            info!(publisher = %ctx.name, %reference, ?reason, "server sent us elsewhere");
            match reason {
                RedirectReason::UseAnotherServer => memory.once = Some(reference),
                RedirectReason::ServerMoved => memory.moved = Some(reference),
            }
        }
        let reconnect = tokio::select! {
            r = connect_with_backoff(ctx, &mut memory, end, cancel) => r,
            never = seconds.tick_forever() => match never {},
        };
        let next = match reconnect {
            Ok(Some(next)) => next,
            Ok(None) => break Ok(()),
            Err(fatal) => break Err(fatal),
        };
        placed = next;
        let now = Instant::now();
        let downtime_ms = (now - down_at).as_millis() as u64;
        summary.downtime_ms += downtime_ms;
        summary.reconnects += 1;
        summary.skipped += pacing.pacer.skip_owed(now);
        summary.broker = Some(placed.session.broker.clone());
        seconds.switch_broker(placed.session.broker.clone());
        info!(publisher = %ctx.name, broker = %placed.session.broker, downtime_ms, "reconnected");
        let _ = events.send(LoadEvent::Up {
            publisher: ctx.name.clone(),
            broker: placed.session.broker.clone(),
            t_ms: ctx.clock.ms_at(now),
            downtime_ms,
            redirect_ms: placed.redirect_ms,
        });
    };
    seconds.finish();
    summary.lateness = pacing.lateness;
    summary.sent_total = seconds.written.load(Ordering::Relaxed);
    result
}

/// Where the next connection starts instead of the configured entry.
#[derive(Debug, Default)]
struct Memory {
    /// From a server DISCONNECT 0x9C: the next connection only.
    once: Option<String>,
    /// From a 0x9D (CONNACK or DISCONNECT): every reconnection, until connecting there fails.
    moved: Option<String>,
}

/// Connects through `ctx.entry` (or straight to a broker from [`Memory`], falling back to the
/// entry if that fails), retrying with backoff until `deadline`. `Ok(None)`: cancelled or out
/// of time.
async fn connect_with_backoff(
    ctx: &PublisherCtx,
    memory: &mut Memory,
    deadline: Instant,
    cancel: &CancellationToken,
) -> Result<Option<Placed>, PlacementError> {
    let mut backoff = crate::backoff::Backoff::default();
    loop {
        let (start, from_moved) = match (memory.once.take(), memory.moved.take()) {
            (Some(once), moved) => {
                memory.moved = moved;
                (Some(once), false)
            }
            (None, Some(moved)) => (Some(moved), true),
            (None, None) => (None, false),
        };
        let entry = match &start {
            Some(addr) => Entry::Broker {
                addr: addr.clone(),
                max_hops: ctx.entry.max_hops(),
            },
            None => ctx.entry.clone(),
        };
        let attempt = tokio::select! {
            _ = cancel.cancelled() => return Ok(None),
            r = tokio::time::timeout_at(deadline, place(&entry, &ctx.connector)) => r,
        };
        match attempt {
            Err(_elapsed) => return Ok(None),
            Ok(Ok(placed)) => {
                // A new 0x9D wins; a remembered broker that still took us directly stays.
                if placed.moved_to.is_some() {
                    memory.moved = placed.moved_to.clone();
                } else if from_moved && placed.hops == 0 {
                    memory.moved = start;
                }
                return Ok(Some(placed));
            }
            Ok(Err(e)) if e.is_fatal() => return Err(e),
            Ok(Err(e)) => {
                warn!(publisher = %ctx.name, error = %e, retry_in = ?backoff.peek(), "cannot connect")
            }
        }
        let delay = backoff.next_delay();
        if Instant::now() + delay >= deadline {
            return Ok(None);
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(None),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// One connection's life, on whichever link placement made.
async fn drive(
    ctx: &PublisherCtx,
    session: &mut super::placement::Session,
    pacing: &mut Pacing<'_>,
    seconds: &mut Seconds,
    end: Instant,
    cancel: &CancellationToken,
) -> SessionEnd {
    match &mut session.link {
        Link::Direct(stream) => {
            super::direct::drive(ctx, stream, pacing, seconds, end, cancel).await
        }
        Link::Client { client, eventloop } => {
            drive_client(ctx, client, eventloop, pacing, seconds, end, cancel).await
        }
    }
}

/// A rumqttc client's connection: the event loop and the pacing run side by side in this task.
async fn drive_client(
    ctx: &PublisherCtx,
    client: &AsyncClient,
    eventloop: &mut EventLoop,
    pacing: &mut Pacing<'_>,
    seconds: &mut Seconds,
    end: Instant,
    cancel: &CancellationToken,
) -> SessionEnd {
    let written = Arc::clone(&seconds.written);
    let pace = async {
        let _ =
            tokio::time::timeout_at(end + PACE_OVERRUN, pace(ctx, client, pacing, seconds)).await;
        // Queued messages go out before the DISCONNECT (one FIFO); the poll side ends when the
        // DISCONNECT is written.
        let _ = tokio::time::timeout(DISCONNECT_GRACE, client.disconnect()).await;
        tokio::time::sleep(DISCONNECT_GRACE).await;
    };
    let end_reason = tokio::select! {
        biased;
        _ = cancel.cancelled() => SessionEnd::Cancelled,
        r = poll_until_disconnect(eventloop, &written) => match r {
            Ok(()) => SessionEnd::Done,
            Err(e) => SessionEnd::Dropped {
                error: e.to_string(),
                moved: server_moved_us(eventloop),
            },
        },
        () = pace => SessionEnd::Done,
    };
    if matches!(end_reason, SessionEnd::Cancelled) {
        let close = async {
            let _ = client.disconnect().await;
            let _ = poll_until_disconnect(eventloop, &written).await;
        };
        let _ = tokio::time::timeout(CANCEL_GRACE, close).await;
    }
    end_reason
}

/// Hands the client what the schedule owes: `per-message`, each message at its own deadline
/// (slept to on the precise timer, so each is its own write); `batched`, everything owed every
/// tick. Also wakes at each second boundary to cut the per-second counts there.
async fn pace(
    ctx: &PublisherCtx,
    client: &AsyncClient,
    pacing: &mut Pacing<'_>,
    seconds: &mut Seconds,
) {
    let mut periodic = start_periodic(ctx, pacing);
    let Pacing {
        pacer,
        lateness,
        timer,
    } = pacing;
    loop {
        let now = Instant::now();
        seconds.observe();
        for _ in 0..pacer.owed(now) {
            if let Some(due) = pacer.next_due() {
                lateness.record(Instant::now().saturating_duration_since(due));
            }
            let mut payload = BytesMut::from(&ctx.payload[..]);
            Header {
                sent_us: now_us(),
                seq: pacer.sequence(),
            }
            .write(&mut payload);
            // Awaiting here is the back-pressure: a full request channel slows us, never drops.
            if client
                .publish(ctx.topic.clone(), ctx.qos, false, payload.freeze())
                .await
                .is_err()
            {
                return; // the event loop is gone; the poll side reports why
            }
            pacer.issue();
        }
        if periodic {
            // Each tick is one deadline (or several, after a late wake-up); the seconds are cut
            // at the first tick after each boundary, before that tick's message is written.
            let Some(timer) = *timer else { return };
            if pacer.next_due().is_none() {
                return;
            }
            match timer.tick().await {
                Ok(_) => continue,
                Err(error) => {
                    warn!(publisher = %ctx.name, %error, "periodic timer failed: one-shot from now");
                    periodic = false;
                }
            }
        }
        let wake = match ctx.send {
            SendMode::Batched => pacer.next_wake(now, ctx.batch_tick),
            _ => pacer.next_due(),
        };
        let Some(wake) = wake else {
            return;
        };
        let wake = wake.min(ctx.clock.next_second(now));
        match timer {
            Some(timer) if timer.sleep_until(wake.into_std()).await.is_ok() => {}
            _ => tokio::time::sleep_until(wake).await,
        }
    }
}

/// A publisher's schedule, how late its messages went out, and the timer it sleeps on.
pub(super) struct Pacing<'t> {
    pub pacer: Pacer,
    pub lateness: Lateness,
    pub timer: Option<&'t PreciseTimer>,
}

/// MQTTLoader's scheduleAtFixedRate: a per-message publisher's timer made periodic, in phase
/// with the deadlines, when the interval is a whole number of nanoseconds (2000 and 10000 msg/s
/// are). `false`: sleep one-shot to each deadline.
pub(super) fn start_periodic(ctx: &PublisherCtx, pacing: &Pacing<'_>) -> bool {
    match (pacing.timer, ctx.send, pacing.pacer.next_due()) {
        (Some(timer), send, Some(first)) if send != SendMode::Batched => {
            whole_ns_interval(ctx.rate)
                .is_some_and(|period| timer.start_periodic(first.into_std(), period).is_ok())
        }
        _ => false,
    }
}

/// `1/rate` when it is a whole number of nanoseconds, so a periodic timer stays exactly in phase
/// with [`Schedule`]'s deadlines (`round(i × 1e9 / rate)` ns).
fn whole_ns_interval(rate: f64) -> Option<Duration> {
    let ns = 1e9 / rate;
    (ns >= 1.0 && (ns - ns.round()).abs() < 1e-9).then(|| Duration::from_nanos(ns.round() as u64))
}

/// The precise timer a per-message publisher on a rumqttc client sleeps on, when its messages
/// are close together (else, or if the timerfd cannot be had, tokio's timer). The direct path
/// needs none: the send thread sleeps for all of its publishers.
fn precise_timer_for(ctx: &PublisherCtx) -> Option<PreciseTimer> {
    let direct = ctx.connector.direct && ctx.connector.tls.is_none();
    if direct
        || ctx.send == SendMode::Batched
        || Duration::from_secs_f64(1.0 / ctx.rate) >= PRECISE_BELOW
    {
        return None;
    }
    PreciseTimer::new()
        .inspect_err(|e| {
            warn!(publisher = %ctx.name, error = %e, "no timerfd: pacing on tokio's 1 ms timer")
        })
        .ok()
}

/// Polls the event loop, counting written publishes, until our DISCONNECT is written (`Ok`) or
/// the connection fails (`Err`).
async fn poll_until_disconnect(
    eventloop: &mut EventLoop,
    written: &AtomicU64,
) -> Result<(), ConnectionError> {
    loop {
        match eventloop.poll().await? {
            Event::Outgoing(Outgoing::Publish(_)) => {
                written.fetch_add(1, Ordering::Relaxed);
            }
            Event::Outgoing(Outgoing::Disconnect) => return Ok(()),
            _ => {}
        }
    }
}

/// The per-second counter wired to the event stream. Owned, so the direct path can lend it to
/// the send thread (which cuts the seconds while it writes) and get it back.
#[derive(Clone)]
pub(super) struct Seconds {
    counter: SecondCounter,
    clock: Clock,
    publisher: Arc<str>,
    events: UnboundedSender<LoadEvent>,
    /// Messages written to the socket so far (every connection).
    pub written: Arc<AtomicU64>,
}

impl Seconds {
    /// Starts counting now, on `broker`.
    pub fn new(
        clock: Clock,
        publisher: &str,
        broker: String,
        events: UnboundedSender<LoadEvent>,
    ) -> Seconds {
        Seconds {
            counter: SecondCounter::new(clock.now_ms(), 0, broker),
            clock,
            publisher: Arc::from(publisher),
            events,
            written: Arc::new(AtomicU64::new(0)),
        }
    }

    fn emit(&self, counts: Vec<super::seconds::SecondCount>) {
        for c in counts {
            let _ = self.events.send(LoadEvent::Second {
                publisher: self.publisher.to_string(),
                broker: c.broker,
                t_ms: c.t_ms,
                sent: c.sent,
            });
        }
    }

    pub fn observe(&mut self) {
        let closed = self
            .counter
            .observe(self.clock.now_ms(), self.written.load(Ordering::Relaxed));
        self.emit(closed);
    }

    /// The instant the wall-clock second after the one containing `t` begins.
    pub fn next_second(&self, t: std::time::Instant) -> std::time::Instant {
        self.clock.next_second(Instant::from_std(t)).into_std()
    }

    fn switch_broker(&mut self, broker: String) {
        let closed = self.counter.switch_broker(
            self.clock.now_ms(),
            self.written.load(Ordering::Relaxed),
            broker,
        );
        self.emit(closed);
    }

    fn finish(&mut self) {
        let closed = self
            .counter
            .finish(self.clock.now_ms(), self.written.load(Ordering::Relaxed));
        self.emit(closed);
    }

    /// While disconnected: keep streaming (empty) seconds as they pass.
    async fn tick_forever(&mut self) -> std::convert::Infallible {
        loop {
            tokio::time::sleep_until(self.clock.next_second(Instant::now())).await;
            self.observe();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_periodic_timer_is_used_only_when_it_stays_in_phase() {
        assert_eq!(whole_ns_interval(2000.0), Some(Duration::from_micros(500)));
        assert_eq!(
            whole_ns_interval(10_000.0),
            Some(Duration::from_micros(100))
        );
        assert_eq!(whole_ns_interval(0.5), Some(Duration::from_secs(2)));
        assert_eq!(whole_ns_interval(3000.0), None, "333333.3 ns would drift");
        assert_eq!(whole_ns_interval(7.0), None);
    }
}

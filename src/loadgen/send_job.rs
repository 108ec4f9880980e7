//! One publisher's work while the send thread has it ([`super::send_thread`]): its schedule,
//! its pre-encoded PUBLISH, its QoS 1 window and its per-second counter, and the step that
//! issues what is owed by now and says when to come back.

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::time::Instant;

use tokio::sync::oneshot;

use super::frame::PublishFrame;
use super::lateness::Lateness;
use super::placement::PING_AFTER;
use super::publisher::Seconds;
use super::schedule::Pacer;
use crate::payload::{Header, now_us};

const PINGREQ: [u8; 2] = [0xC0, 0x00];

/// What a publisher lends the thread for one connection.
pub(super) struct Job {
    /// The connection's socket. The task that lends it keeps it open (and reads from it) until
    /// the job is handed back: [`super::send_thread::Ticket`] waits for that even when dropped.
    pub socket: RawFd,
    pub frame: PublishFrame,
    pub pacer: Pacer,
    pub lateness: Lateness,
    pub seconds: Seconds,
    pub window: Window,
    /// No message is issued after this instant (the schedule's end plus its overrun).
    pub stop_issuing_at: Instant,
}

/// Why the thread handed a job back.
#[derive(Debug)]
pub(super) enum Ended {
    /// Every message was issued, or the end passed.
    Done,
    /// The task asked ([`Ticket::stop`]), or the loader is shutting down.
    Stopped,
    /// A write failed: the connection is over.
    WriteFailed(io::Error),
}

/// A job back from the thread, with the bytes it had not yet written.
pub(super) struct Handback {
    pub pacer: Pacer,
    pub lateness: Lateness,
    pub seconds: Seconds,
    pub ended: Ended,
    /// The rest of a packet the socket had not taken: written by the task before anything else.
    pub unsent: Vec<u8>,
    /// `unsent` ends a PUBLISH (count it as written once it is).
    pub unsent_is_publish: bool,
}

/// At QoS 1, how many PUBLISHes may await their PUBACK; the task's reader counts PUBACKs down.
pub(super) struct Window {
    qos1: bool,
    limit: u16,
    last_pkid: u16,
    inflight: Arc<AtomicU16>,
}

impl Window {
    pub fn new(qos1: bool, limit: u16, inflight: Arc<AtomicU16>) -> Window {
        Window {
            qos1,
            limit: limit.max(1),
            last_pkid: 0,
            inflight,
        }
    }

    fn full(&self) -> bool {
        self.qos1 && self.inflight.load(Ordering::SeqCst) >= self.limit
    }

    /// Undoes [`Window::next_pkid`] for a PUBLISH that was never written.
    fn give_back(&mut self, pkid: u16) {
        if self.qos1 && pkid != 0 {
            self.inflight.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// The packet id of the next PUBLISH (1..=65535, cycling; 0 at QoS 0), counted in flight.
    fn next_pkid(&mut self) -> u16 {
        const NO_PACKET_ID: u16 = 0;
        if !self.qos1 {
            return NO_PACKET_ID;
        }
        self.inflight.fetch_add(1, Ordering::AcqRel);
        self.last_pkid = self.last_pkid.checked_add(1).unwrap_or(1);
        self.last_pkid
    }
}

/// One lent job and what the thread keeps about it.
pub(super) struct Lent {
    pub job: Job,
    pub done: oneshot::Sender<Handback>,
    pub window_waiting: Arc<AtomicBool>,
    /// The instant its entry in the deadline heap is for (older entries are stale).
    pub scheduled: Instant,
    pub next_cut: Instant,
    pub outbox: Outbox,
}

/// What the socket has taken of the job's writes.
pub(super) struct Outbox {
    /// The rest of a packet the socket did not take whole, written before anything else; while
    /// there is one, the job waits for the socket to be writable.
    pub unsent: Vec<u8>,
    /// `unsent` ends a PUBLISH (counted as written once it is).
    pub unsent_is_publish: bool,
    pub last_write: Instant,
}

impl Outbox {
    pub fn new(now: Instant) -> Outbox {
        Outbox {
            unsent: Vec::new(),
            unsent_is_publish: false,
            last_write: now,
        }
    }

    fn blocked(&self) -> bool {
        !self.unsent.is_empty()
    }

    /// After a `send` that took `taken` bytes of `packet`: keeps the rest for later, or notes
    /// the write. Whether the whole packet is out.
    fn settle(&mut self, packet: &[u8], taken: usize, is_publish: bool) -> bool {
        if taken < packet.len() {
            self.unsent = packet[taken..].to_vec();
            self.unsent_is_publish = is_publish;
            return false;
        }
        self.last_write = Instant::now();
        true
    }
}

pub(super) enum Step {
    Finished(Ended),
    Next { at: Instant, blocked: bool },
}

impl Lent {
    pub fn step(&mut self) -> Step {
        let now = Instant::now();
        if now >= self.next_cut {
            self.job.seconds.observe();
            self.next_cut = self.job.seconds.next_second(now);
        }
        if let Err(error) = self.flush() {
            return Step::Finished(Ended::WriteFailed(error));
        }
        if !self.outbox.blocked()
            && let Err(error) = self.issue_owed()
        {
            return Step::Finished(Ended::WriteFailed(error));
        }
        if !self.outbox.blocked()
            && now.saturating_duration_since(self.outbox.last_write) >= PING_AFTER
            && let Err(error) = self.write(&PINGREQ, false)
        {
            return Step::Finished(Ended::WriteFailed(error));
        }
        let all_written = self.job.pacer.done() && !self.outbox.blocked();
        if all_written || now >= self.job.stop_issuing_at {
            return Step::Finished(Ended::Done);
        }
        let mut at = self.next_cut.min(self.job.stop_issuing_at);
        if !self.outbox.blocked() {
            at = at.min(self.outbox.last_write + PING_AFTER);
            let waiting = self.window_waiting.load(Ordering::Acquire);
            if let Some(due) = self.job.pacer.next_due().filter(|_| !waiting) {
                at = at.min(due.into_std());
            }
        }
        Step::Next {
            at,
            blocked: self.outbox.blocked(),
        }
    }

    /// Stamps and writes every message due by now, while the window has room.
    fn issue_owed(&mut self) -> io::Result<()> {
        let owed = self
            .job
            .pacer
            .owed(tokio::time::Instant::from_std(Instant::now()));
        for _ in 0..owed {
            if self.job.window.full() {
                // Say so before looking again: a PUBACK counted in between then wakes us. Both
                // sides use SeqCst (store here, then load; the reader's decrement, then its
                // swap), so at least one of them sees the other.
                self.window_waiting.store(true, Ordering::SeqCst);
                if self.job.window.full() {
                    return Ok(());
                }
                self.window_waiting.store(false, Ordering::SeqCst);
            }
            let due = self.job.pacer.next_due();
            let pkid = self.job.window.next_pkid();
            let header = Header {
                sent_us: now_us(),
                seq: self.job.pacer.sequence(),
            };
            let fd = self.job.socket;
            let packet = self.job.frame.stamp(header, pkid);
            let taken = match send(fd, packet) {
                Ok(taken) => taken,
                Err(error) => {
                    // Never written: it takes no sequence number and no slot in the window.
                    self.job.window.give_back(pkid);
                    return Err(error);
                }
            };
            self.job.pacer.issue();
            if let Some(due) = due {
                let late = Instant::now().saturating_duration_since(due.into_std());
                self.job.lateness.record(late);
            }
            if !self.outbox.settle(packet, taken, true) {
                return Ok(());
            }
            self.job.seconds.written.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Writes a whole packet or keeps its rest for later.
    fn write(&mut self, packet: &[u8], is_publish: bool) -> io::Result<()> {
        let taken = send(self.job.socket, packet)?;
        if self.outbox.settle(packet, taken, is_publish) && is_publish {
            self.job.seconds.written.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Writes what the socket did not take before (it may take only part again).
    fn flush(&mut self) -> io::Result<()> {
        if !self.outbox.blocked() {
            return Ok(());
        }
        let rest = std::mem::take(&mut self.outbox.unsent);
        let is_publish = self.outbox.unsent_is_publish;
        self.write(&rest, is_publish)
    }
}

/// One `send(2)` that neither raises SIGPIPE nor blocks (whatever the descriptor's flags); a
/// full socket takes 0 bytes (`Ok(0)`), EINTR is retried.
fn send(fd: RawFd, bytes: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: sends at most `bytes.len()` bytes from a live slice on a socket we hold open.
        let n = unsafe {
            libc::send(
                fd,
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let error = io::Error::last_os_error();
        match error.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(0),
            _ => return Err(error),
        }
    }
}

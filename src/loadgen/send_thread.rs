//! The writes of every per-message publisher on plain TCP, from one plain thread: it sleeps to
//! the earliest deadline of any publisher (`ppoll`, which also wakes it for new work), stamps
//! that publisher's pre-encoded PUBLISH and `send`s it. Per message that is one wake-up and one
//! system call for the write, as in the bench's floor (a thread sleeping to each deadline and
//! writing); a timer per publisher in the async runtime costs an `epoll_wait`, a timer read and
//! the runtime's bookkeeping on top (1.7× the floor's CPU, measured in the same bench run).
//!
//! Each publisher's task keeps its socket and reads from it (PUBACK, PINGRESP, a server
//! DISCONNECT); it lends the thread the socket's descriptor for writing, with its [`Job`] (schedule, frame, per-second counter), and gets everything back in a [`Handback`]
//! when the schedule ends, the write fails or the task asks for it ([`Ticket::stop`]). The
//! thread never waits on one socket: a write the kernel cannot take whole is finished when the
//! socket is writable again, while the other publishers keep their deadlines.
//!
//! The thread sleeps with the default timer slack (50 µs), as the floor does: deadlines of
//! different publishers that close are served in one wake-up.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::send_job::{Ended, Handback, Job, Lent, Outbox, Step};

enum Command {
    Start {
        id: u64,
        job: Box<Job>,
        done: oneshot::Sender<Handback>,
        window_waiting: Arc<AtomicBool>,
    },
    Stop(u64),
    WindowOpened(u64),
}

/// Wakes the thread from its `ppoll` (an eventfd).
struct Wake {
    fd: OwnedFd,
}

impl Wake {
    fn new() -> io::Result<Wake> {
        // SAFETY: eventfd returns a new descriptor we own, or -1.
        let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor owned by nobody else.
        Ok(Wake {
            fd: unsafe { OwnedFd::from_raw_fd(raw) },
        })
    }

    fn poke(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from our buffer to our eventfd; a full counter (EAGAIN) already
        // means "wake up".
        unsafe { libc::write(self.fd.as_raw_fd(), one.as_ptr().cast(), 8) };
    }

    fn drain(&self) {
        let mut count = [0u8; 8];
        // SAFETY: reads at most 8 bytes into our buffer from our non-blocking eventfd.
        unsafe { libc::read(self.fd.as_raw_fd(), count.as_mut_ptr().cast(), 8) };
    }
}

/// How publishers reach the thread.
#[derive(Clone)]
pub(crate) struct SendThreadHandle {
    commands: mpsc::Sender<Command>,
    wake: Arc<Wake>,
    next_id: Arc<AtomicU64>,
}

impl SendThreadHandle {
    fn send(&self, command: Command) {
        // The thread outlives every publisher task (the loader joins it last); if it is gone
        // anyway, the ticket's receiver reports that.
        let _ = self.commands.send(command);
        self.wake.poke();
    }

    /// Lends `job` to the thread, which starts issuing its messages at once.
    pub(super) fn start(&self, job: Job) -> Ticket {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (done, handback) = oneshot::channel();
        let window_waiting = Arc::new(AtomicBool::new(false));
        self.send(Command::Start {
            id,
            job: Box::new(job),
            done,
            window_waiting: Arc::clone(&window_waiting),
        });
        Ticket {
            id,
            handle: self.clone(),
            window_waiting,
            handback,
            returned: false,
        }
    }
}

/// A publisher's claim on its job while the thread has it. Dropping it stops the job.
pub(super) struct Ticket {
    id: u64,
    handle: SendThreadHandle,
    window_waiting: Arc<AtomicBool>,
    handback: oneshot::Receiver<Handback>,
    returned: bool,
}

impl Ticket {
    /// Asks for the job back (it arrives through [`Ticket::handback`]).
    pub fn stop(&mut self) {
        if !self.returned {
            self.handle.send(Command::Stop(self.id));
        }
    }

    /// The job, once the thread hands it back. The loader joins the thread only after every
    /// publisher is done, so it is gone here only if it panicked: that is a bug, and it takes
    /// this publisher down with it (the loader then stops with an error) rather than leave it
    /// reconnecting in a loop.
    pub async fn handback(&mut self) -> Handback {
        let back = (&mut self.handback)
            .await
            .expect("invariant: the loader's send thread outlives its publishers");
        self.returned = true;
        back
    }

    /// Call after PUBACKs were counted: a thread waiting for room in the window goes on.
    pub fn window_opened(&self) {
        // SeqCst: pairs with the send thread's store-then-load (`send_job::Lent::issue_owed`).
        if self.window_waiting.swap(false, Ordering::SeqCst) {
            self.handle.send(Command::WindowOpened(self.id));
        }
    }
}

impl Drop for Ticket {
    /// A ticket is dropped before its job came back only when its task is torn down (a panic,
    /// the runtime shutting down): the socket closes right after, so wait until the thread has
    /// let go of it (it answers a stop at its next wake-up, which the stop itself causes), lest
    /// it write to a descriptor number reused for something else.
    fn drop(&mut self) {
        if self.returned {
            return;
        }
        self.stop();
        let give_up = Instant::now() + Duration::from_secs(5);
        while matches!(
            self.handback.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        ) && Instant::now() < give_up
        {
            std::thread::sleep(Duration::from_micros(100));
        }
    }
}

/// The thread. Dropping it ends the thread (every job still lent is handed back as stopped) and
/// joins it.
pub(crate) struct SendThread {
    handle: SendThreadHandle,
    shutdown: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SendThread {
    pub fn spawn() -> io::Result<SendThread> {
        let (commands, inbox) = mpsc::channel();
        let wake = Arc::new(Wake::new()?);
        let shutdown = Arc::new(AtomicBool::new(false));
        let mut state = Sender {
            inbox,
            wake: Arc::clone(&wake),
            shutdown: Arc::clone(&shutdown),
            jobs: HashMap::new(),
            due: BinaryHeap::new(),
            blocked: Vec::new(),
            poll_fds: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("loadgen-send".into())
            .spawn(move || {
                super::raise_priority();
                state.run();
            })?;
        Ok(SendThread {
            handle: SendThreadHandle {
                commands,
                wake,
                next_id: Arc::new(AtomicU64::new(0)),
            },
            shutdown,
            thread: Some(thread),
        })
    }

    pub fn handle(&self) -> SendThreadHandle {
        self.handle.clone()
    }
}

impl Drop for SendThread {
    fn drop(&mut self) {
        self.shutdown.store(true, Ordering::Release);
        self.handle.wake.poke();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the loader's send thread panicked");
        }
    }
}

/// The thread's state.
struct Sender {
    inbox: mpsc::Receiver<Command>,
    wake: Arc<Wake>,
    shutdown: Arc<AtomicBool>,
    jobs: HashMap<u64, Lent>,
    /// Each job's next wake-up (a deadline, a second boundary, a ping, its end).
    due: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Jobs waiting for their socket to take the rest of a packet.
    blocked: Vec<u64>,
    poll_fds: Vec<libc::pollfd>,
}

impl Sender {
    fn run(&mut self) {
        loop {
            self.take_commands();
            if self.shutdown.load(Ordering::Acquire) {
                let ids: Vec<u64> = self.jobs.keys().copied().collect();
                for id in ids {
                    self.finish(id, Ended::Stopped);
                }
                return;
            }
            while let Some(&Reverse((at, id))) = self.due.peek() {
                if at > Instant::now() {
                    break;
                }
                self.due.pop();
                if self.jobs.get(&id).is_some_and(|a| a.scheduled == at) {
                    self.serve(id);
                }
            }
            self.wait();
        }
    }

    fn take_commands(&mut self) {
        while let Ok(command) = self.inbox.try_recv() {
            match command {
                Command::Start {
                    id,
                    job,
                    done,
                    window_waiting,
                } => {
                    let now = Instant::now();
                    let next_cut = job.seconds.next_second(now);
                    self.jobs.insert(
                        id,
                        Lent {
                            job: *job,
                            done,
                            window_waiting,
                            scheduled: now,
                            next_cut,
                            outbox: Outbox::new(now),
                        },
                    );
                    self.due.push(Reverse((now, id)));
                }
                Command::Stop(id) => self.finish(id, Ended::Stopped),
                Command::WindowOpened(id) => self.reschedule(id, Instant::now()),
            }
        }
    }

    fn reschedule(&mut self, id: u64, at: Instant) {
        if let Some(active) = self.jobs.get_mut(&id) {
            active.scheduled = at;
            self.due.push(Reverse((at, id)));
        }
    }

    /// Issues what the job owes, then schedules its next wake-up or hands it back.
    fn serve(&mut self, id: u64) {
        let Some(active) = self.jobs.get_mut(&id) else {
            return;
        };
        match active.step() {
            Step::Finished(ended) => self.finish(id, ended),
            Step::Next { at, blocked } => {
                // Only sockets still short of a whole packet are polled for room: a writable
                // socket in the poll set would wake the thread at once, every time.
                let listed = self.blocked.iter().position(|&b| b == id);
                match (blocked, listed) {
                    (true, None) => self.blocked.push(id),
                    (false, Some(index)) => {
                        self.blocked.swap_remove(index);
                    }
                    _ => {}
                }
                self.reschedule(id, at);
            }
        }
    }

    fn finish(&mut self, id: u64, ended: Ended) {
        let Some(active) = self.jobs.remove(&id) else {
            return;
        };
        self.blocked.retain(|&b| b != id);
        let Job {
            pacer,
            lateness,
            seconds,
            ..
        } = active.job;
        // A task that is gone no longer wants it (its ticket waited for this before the socket
        // closed).
        let _ = active.done.send(Handback {
            pacer,
            lateness,
            seconds,
            ended,
            unsent: active.outbox.unsent,
            unsent_is_publish: active.outbox.unsent_is_publish,
        });
    }

    /// Sleeps until the earliest wake-up, a command, or a blocked socket turning writable.
    fn wait(&mut self) {
        self.poll_fds.clear();
        self.poll_fds.push(libc::pollfd {
            fd: self.wake.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        for id in &self.blocked {
            if let Some(active) = self.jobs.get(id) {
                self.poll_fds.push(libc::pollfd {
                    fd: active.job.socket,
                    events: libc::POLLOUT,
                    revents: 0,
                });
            }
        }
        let timeout = self.due.peek().map(|&Reverse((at, _))| {
            let wait = at.saturating_duration_since(Instant::now());
            libc::timespec {
                tv_sec: wait.as_secs() as libc::time_t,
                tv_nsec: libc::c_long::from(wait.subsec_nanos() as i32),
            }
        });
        let timeout_ptr = timeout
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: `poll_fds` is a live array of `len` pollfds; the timeout (or null: no timeout)
        // outlives the call; no signal mask is changed.
        let ready = unsafe {
            libc::ppoll(
                self.poll_fds.as_mut_ptr(),
                self.poll_fds.len() as libc::nfds_t,
                timeout_ptr,
                std::ptr::null(),
            )
        };
        if ready <= 0 {
            return; // timeout, or EINTR: the loop looks again
        }
        if self.poll_fds[0].revents != 0 {
            self.wake.drain();
        }
        let writable: Vec<RawFd> = self.poll_fds[1..]
            .iter()
            .filter(|p| p.revents != 0)
            .map(|p| p.fd)
            .collect();
        if writable.is_empty() {
            return;
        }
        let now = Instant::now();
        let ids: Vec<u64> = self
            .blocked
            .iter()
            .copied()
            .filter(|id| {
                self.jobs
                    .get(id)
                    .is_some_and(|a| writable.contains(&a.job.socket))
            })
            .collect();
        self.blocked.retain(|id| !ids.contains(id));
        for id in ids {
            self.reschedule(id, now);
        }
    }
}

#[cfg(test)]
mod tests;

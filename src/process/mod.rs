//! Child processes that never outlive us: each runs in its own process group, and the whole
//! group is killed (SIGKILL) and the child reaped when its [`ManagedChild`] drops, on every exit
//! path (success, error, panic unwinding, cancellation); if this process is killed outright,
//! the [`guard`] kills the groups.

pub mod guard;

use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio::process::{Child, ChildStdout, Command};
use tracing::{debug, warn};

/// Grace period between SIGTERM and SIGKILL in [`ManagedChild::stop`].
const STOP_GRACE: Duration = Duration::from_secs(2);

/// How long `Drop` waits (blocking) for a SIGKILLed child to become reapable.
const DROP_REAP_WAIT: Duration = Duration::from_millis(500);

static SELF_EXE: OnceLock<PathBuf> = OnceLock::new();

/// Sets the binary [`self_exe`] returns, for the whole process. Tests call this with
/// `env!("CARGO_BIN_EXE_mqdispatch")` instead of mutating the environment (which is unsound
/// while other test threads read it). Later calls are ignored.
pub fn set_self_exe(path: impl Into<PathBuf>) {
    let _ = SELF_EXE.set(path.into());
}

/// The `mqdispatch` binary to start roles from: [`set_self_exe`] if called, else env
/// `MQDISPATCH_BIN` if set, else the running executable.
pub fn self_exe() -> PathBuf {
    if let Some(path) = SELF_EXE.get() {
        return path.clone();
    }
    if let Some(path) = std::env::var_os("MQDISPATCH_BIN") {
        return PathBuf::from(path);
    }
    std::env::current_exe().unwrap_or_else(|_| PathBuf::from("mqdispatch"))
}

/// A child process leading its own process group.
#[derive(Debug)]
pub struct ManagedChild {
    name: String,
    pid: u32,
    /// `None` once [`ManagedChild::stop`] has reaped it.
    child: Option<Child>,
}

impl ManagedChild {
    /// Spawns `cmd` as the leader of a new process group (so grandchildren are killed with it).
    pub fn spawn(mut cmd: Command, name: &str) -> std::io::Result<Self> {
        cmd.process_group(0);
        let guard = guard::global();
        let child = cmd.spawn()?;
        let pid = child
            .id()
            .ok_or_else(|| std::io::Error::other("spawned child has no pid"))?;
        if let Some(guard) = guard {
            guard.watch(pid);
        }
        debug!(name, pid, "spawned child");
        Ok(ManagedChild {
            name: name.to_owned(),
            pid,
            child: Some(child),
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.as_mut().and_then(|c| c.stdout.take())
    }

    pub fn take_stdin(&mut self) -> Option<tokio::process::ChildStdin> {
        self.child.as_mut().and_then(|c| c.stdin.take())
    }

    pub fn take_stderr(&mut self) -> Option<tokio::process::ChildStderr> {
        self.child.as_mut().and_then(|c| c.stderr.take())
    }

    /// Sends `sig` to the whole group (SIGSTOP/SIGCONT/SIGKILL for fault injection). Safe against
    /// pid reuse: the leader is not reaped before `stop`/`drop`, so the group id stays ours.
    pub fn signal(&self, sig: i32) -> std::io::Result<()> {
        if self.child.is_none() {
            return Err(std::io::Error::other(format!(
                "{} was already stopped",
                self.name
            )));
        }
        kill_group(self.pid, sig)
    }

    /// True once the leader has exited (it is then a zombie until stopped or dropped).
    pub fn has_exited(&self) -> bool {
        self.child.is_some() && leader_exited(self.pid)
    }

    /// SIGTERM to the group, up to ~2 s for the leader to exit, then SIGKILL to whatever is left
    /// of the group, and reap.
    pub async fn stop(mut self) -> std::io::Result<ExitStatus> {
        let mut child = self
            .child
            .take()
            .expect("invariant: child present until stop");
        let _ = kill_group(self.pid, libc::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        // Poll without reaping (WNOWAIT) so the group id cannot be reused before the final kill.
        while !leader_exited(self.pid) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if !leader_exited(self.pid) {
            warn!(name = %self.name, pid = self.pid, "no exit after SIGTERM, killing");
        }
        let _ = kill_group(self.pid, libc::SIGKILL);
        release(self.pid);
        child.wait().await
    }
}

impl Drop for ManagedChild {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = kill_group(self.pid, libc::SIGKILL);
        release(self.pid);
        // SIGKILL takes effect within microseconds; poll briefly so the zombie is reaped here.
        // If it is not (a task stuck in the kernel), tokio's orphan reaper collects it later.
        let deadline = Instant::now() + DROP_REAP_WAIT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() >= deadline => {
                    warn!(name = %self.name, pid = self.pid, "child not reaped on drop");
                    return;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    }
}

/// The group is about to be reaped: the guard must forget it first.
fn release(pgid: u32) {
    if let Some(guard) = guard::global() {
        guard.release(pgid);
    }
}

fn kill_group(pgid: u32, sig: i32) -> std::io::Result<()> {
    // SAFETY: kill(2) has no memory-safety preconditions.
    let rc = unsafe { libc::kill(-(pgid as libc::pid_t), sig) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Has `pid` (our child) exited? Checks without reaping it.
fn leader_exited(pid: u32) -> bool {
    // SAFETY: waitid writes only into the zeroed siginfo we own.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let rc = libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        );
        // rc == -1: not our child any more (already reaped) → exited.
        rc == -1 || info.si_pid() != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stop_terminates_gracefully_with_sigterm() {
        let mut cmd = Command::new("sleep");
        cmd.arg("100");
        let child = ManagedChild::spawn(cmd, "sleep").unwrap();
        let status = child.stop().await.unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGTERM));
    }

    #[tokio::test]
    async fn stop_kills_a_child_that_ignores_sigterm() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "trap '' TERM; while :; do sleep 0.05; done"]);
        let child = ManagedChild::spawn(cmd, "stubborn").unwrap();
        // Let the shell install its trap before the SIGTERM arrives.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let status = child.stop().await.unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }

    /// Dead: no /proc entry, or a zombie waiting for a reaper that is not us (grandchildren
    /// are reparented to init).
    fn is_dead(pid: u32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        }
    }

    #[tokio::test]
    async fn drop_kills_the_child_and_its_grandchildren() {
        use tokio::io::AsyncBufReadExt;
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sleep 100 & echo $!; sleep 100 & echo $!; wait"])
            .stdout(std::process::Stdio::piped());
        let mut child = ManagedChild::spawn(cmd, "family").unwrap();
        let leader = child.pid();
        let mut lines = tokio::io::BufReader::new(child.take_stdout().unwrap()).lines();
        let mut grandchildren = Vec::new();
        for _ in 0..2 {
            let line = lines.next_line().await.unwrap().unwrap();
            grandchildren.push(line.trim().parse::<u32>().unwrap());
        }
        for pid in &grandchildren {
            assert!(!is_dead(*pid), "grandchild {pid} should be running");
        }
        drop(child);
        // The leader is reaped by the drop itself: gone at once, not even a zombie.
        assert!(!std::path::Path::new(&format!("/proc/{leader}")).exists());
        let deadline = Instant::now() + Duration::from_secs(5);
        while !grandchildren.iter().all(|p| is_dead(*p)) {
            assert!(
                Instant::now() < deadline,
                "grandchildren {grandchildren:?} survived"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn signal_stops_and_continues_the_group() {
        let mut cmd = Command::new("sleep");
        cmd.arg("100");
        let child = ManagedChild::spawn(cmd, "sleep").unwrap();
        let state = |pid: u32| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
            stat.rsplit_once(')')
                .unwrap()
                .1
                .trim_start()
                .chars()
                .next()
                .unwrap()
        };
        child.signal(libc::SIGSTOP).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while state(child.pid()) != 'T' {
            assert!(Instant::now() < deadline, "never stopped");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        child.signal(libc::SIGCONT).unwrap();
        while state(child.pid()) == 'T' {
            assert!(Instant::now() < deadline, "never continued");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn signal_after_exit_detection() {
        let mut cmd = Command::new("true");
        cmd.arg("x");
        let child = ManagedChild::spawn(cmd, "true").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !child.has_exited() {
            assert!(Instant::now() < deadline, "`true` never exited");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(child.stop().await.unwrap().success());
    }
}

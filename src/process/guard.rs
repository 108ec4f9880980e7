//! The guard: one `sh` per process that starts children, holding the read end of a pipe from
//! us, told the process group of every [`super::ManagedChild`] as it starts (`+ PGID`) and as
//! it is reaped (`- PGID`). When the pipe closes, that is when this process has ended however
//! it ended (SIGKILL included, where no code of ours runs), it SIGKILLs every group still
//! listed. A run killed outright so leaves no broker, ssh master or role session behind, and
//! a host's roles end with their sessions.
//!
//! Why not `PR_SET_PDEATHSIG`: it fires when the *thread* that forked exits (tokio's blocking
//! threads come and go), reaches only the child itself, not its group, and the kernel clears
//! it when the child changes credentials, as Mosquitto does when it drops to its own user.
//! Why `sh` and not this binary: it is there wherever we run (a library test's executable is
//! a test harness, not `mqdispatch`), and its job is a few lines.

use std::io::Write;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};

use tracing::warn;

/// Lists the groups it is told of; at end-of-file on stdin, SIGKILLs those still listed.
/// Terminal signals are ignored (it is in a group of its own, and its work comes after ours).
const SCRIPT: &str = r#"trap '' INT HUP
live=' '
while read -r op g; do
  case $g in ''|*[!0-9]*|0|1) continue ;; esac
  case $op in
    +) live="$live$g " ;;
    -) case $live in *" $g "*) live="${live%% $g *} ${live#* $g }" ;; esac ;;
  esac
done
for g in $live; do kill -9 "-$g" 2>/dev/null; done
"#;

/// A running guard; dropping it closes the pipe, which makes it kill what is still listed.
pub struct Guard {
    stdin: Mutex<Option<ChildStdin>>,
    child: Mutex<Child>,
}

impl Guard {
    pub fn start() -> std::io::Result<Guard> {
        use std::os::unix::process::CommandExt;
        let mut child = Command::new("/bin/sh")
            .args(["-c", SCRIPT, "mqdispatch-guard"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()?;
        let stdin = child.stdin.take();
        Ok(Guard {
            stdin: Mutex::new(stdin),
            child: Mutex::new(child),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap_or_else(|e| e.into_inner()).id()
    }

    /// Closes the pipe and reaps the guard, which kills what is still listed first; later
    /// children go unguarded.
    pub fn close(&self) {
        drop(self.stdin.lock().unwrap_or_else(|e| e.into_inner()).take());
        let _ = self.child.lock().unwrap_or_else(|e| e.into_inner()).wait();
    }

    /// Group `pgid` is to be killed if we end before [`Guard::release`] of it.
    pub fn watch(&self, pgid: u32) {
        // Never 0 (the guard's own group) nor 1 (`kill -9 -1` is every process); the script
        // refuses them too.
        if pgid <= 1 {
            return;
        }
        self.tell(&format!("+ {pgid}\n"));
    }

    /// Group `pgid` is ours to reap: forget it (before the reap, so a reused id is never hit).
    pub fn release(&self, pgid: u32) {
        self.tell(&format!("- {pgid}\n"));
    }

    fn tell(&self, line: &str) {
        let mut stdin = self.stdin.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pipe) = stdin.as_mut()
            && let Err(e) = pipe.write_all(line.as_bytes())
        {
            warn!(error = %e, "the child guard is gone: children may outlive a killed run");
            *stdin = None;
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.close();
    }
}

static GUARD: OnceLock<Option<Guard>> = OnceLock::new();

/// This process's guard, started with the first child (`None`, after a warning, if `sh`
/// cannot be started: children then die only with a clean exit).
pub fn global() -> Option<&'static Guard> {
    GUARD
        .get_or_init(|| match Guard::start() {
            Ok(guard) => Some(guard),
            Err(e) => {
                warn!(error = %e, "cannot start the child guard (/bin/sh)");
                None
            }
        })
        .as_ref()
}

/// At a clean exit, once every child is reaped: the guard closed and reaped too, so no
/// process of ours outlives this one (a static is never dropped).
pub fn finish() {
    if let Some(Some(guard)) = GUARD.get() {
        guard.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn spawn_group(cmd: &str) -> Child {
        use std::os::unix::process::CommandExt;
        Command::new("sh")
            .args(["-c", cmd])
            .process_group(0)
            .spawn()
            .unwrap()
    }

    fn exits_within(child: &mut Child, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    #[test]
    fn groups_still_listed_when_the_pipe_closes_are_killed_and_released_ones_spared() {
        let guard = Guard::start().unwrap();
        let mut watched = spawn_group("sleep 100 & wait");
        let mut released = spawn_group("sleep 100");
        let mut unlisted = spawn_group("sleep 100");
        guard.watch(watched.id());
        guard.watch(released.id());
        guard.release(released.id());
        // Ids that are a prefix or a suffix of a listed one leave it listed.
        guard.release(watched.id() / 10);
        guard.release(watched.id() % 1000);
        drop(guard);
        assert!(exits_within(&mut watched, Duration::from_secs(5)));
        for survivor in [&mut released, &mut unlisted] {
            assert!(!exits_within(survivor, Duration::from_millis(300)));
            survivor.kill().unwrap();
            survivor.wait().unwrap();
        }
    }

    #[test]
    fn garbage_on_the_pipe_is_ignored() {
        let guard = Guard::start().unwrap();
        let mut child = spawn_group("sleep 100");
        guard.tell("+\n+ 12x\n* 5\n-\n");
        guard.watch(child.id());
        guard.tell("+ $(true)\n");
        drop(guard);
        assert!(exits_within(&mut child, Duration::from_secs(5)));
    }
}

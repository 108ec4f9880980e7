//! `mqdispatch lifeline -- PROGRAM ARGS...`: runs a role on a remote host for as long as the
//! ssh session that started it lives. The runner holds the session's stdin open; when it closes
//! it (a clean stop), when the runner dies, or when the connection drops (sshd closes the
//! session's pipes), the lifeline reads end-of-file on its stdin and stops the role: SIGTERM to
//! the role's process group, SIGKILL after a grace period, then it exits with the role's status.
//! SIGTERM, SIGINT and SIGHUP to the lifeline itself do the same. Without a terminal, sshd sends
//! no SIGHUP when a session ends, so this is what keeps a role from outliving its run.

use std::process::Stdio;
use std::time::Duration;

use std::io::Read;
use tokio::process::Command;

use crate::process::ManagedChild;

#[derive(Debug, clap::Args)]
pub struct LifelineArgs {
    /// The role's program and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// Why the role was stopped (or that it ended by itself).
#[derive(Debug, PartialEq, Eq)]
enum Ending {
    RoleExited,
    StdinClosed,
    Signalled,
}

pub async fn cli_main(args: LifelineArgs) -> anyhow::Result<()> {
    let (program, rest) = args
        .command
        .split_first()
        .ok_or_else(|| anyhow::anyhow!("lifeline: no program given"))?;
    // Installed before the role starts: from here on a signal stops the role, never just us.
    let mut signals = crate::shutdown::Signals::install()?;
    let stdin_closed = watch_stdin()?;
    let mut cmd = Command::new(program);
    cmd.args(rest).stdin(Stdio::null());
    let role = ManagedChild::spawn(cmd, program)
        .map_err(|e| anyhow::anyhow!("lifeline: cannot start {program}: {e}"))?;
    let ending = tokio::select! {
        () = exited(&role) => Ending::RoleExited,
        _ = stdin_closed => Ending::StdinClosed,
        _ = signals.recv() => Ending::Signalled,
    };
    tracing::info!(?ending, role = program, "lifeline ends");
    let status = role.stop().await?;
    match status.code() {
        Some(0) => Ok(()),
        _ if ending != Ending::RoleExited => Ok(()),
        _ => anyhow::bail!("{program} ended with {status}"),
    }
}

async fn exited(role: &ManagedChild) {
    while !role.has_exited() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Completes (the receiver) at end-of-file or an error on stdin; whatever arrives before is
/// ignored. Read on a thread of its own, not tokio's stdin: the runtime would wait for that
/// blocking read at shutdown, so a role that ended by itself would keep the lifeline up until
/// stdin closed.
fn watch_stdin() -> std::io::Result<tokio::sync::oneshot::Receiver<()>> {
    let (closed, on_close) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("lifeline-stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = [0u8; 256];
            while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
            let _ = closed.send(());
        })?;
    Ok(on_close)
}

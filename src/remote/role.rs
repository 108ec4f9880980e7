//! One role (a broker, an agent, a dispatcher, a loader shard) running on a remote host under a
//! [`super::lifeline`]: the local `ssh` session's stdin is the role's life line. A clean stop
//! closes it and waits for the session to end (the lifeline stops the role and exits); if that
//! takes too long, or on drop, the local `ssh` is killed, which ends the session just the same.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{ChildStdin, ChildStdout, Command};

use super::ssh::{Connection, SshError, shell_quote};
use crate::process::ManagedChild;

/// How long a stopped role's session may take to end (the lifeline's SIGTERM grace is 2 s).
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A role running on a host.
pub struct RemoteRole {
    name: String,
    session: Option<ManagedChild>,
    lifeline: Option<ChildStdin>,
}

impl RemoteRole {
    /// Starts `command` (program first) on the host over `conn` under `binary`'s lifeline
    /// (`binary lifeline -- command...`), in `workdir` (created if missing, relative to the
    /// login's home unless absolute); the role's stdout and stderr go to `log` on this machine.
    pub fn start(
        conn: &Connection,
        name: &str,
        binary: &str,
        command: &[String],
        workdir: &str,
        log: &Path,
    ) -> Result<RemoteRole, SshError> {
        let (role, _) = Self::spawn(conn, name, binary, command, workdir, log, false)?;
        Ok(role)
    }

    /// [`RemoteRole::start`] with the role's stdout handed to the caller (its stderr still goes
    /// to `log`): for roles that speak on stdout (`listening on ADDR`, JSON lines).
    pub fn start_piped(
        conn: &Connection,
        name: &str,
        binary: &str,
        command: &[String],
        workdir: &str,
        log: &Path,
    ) -> Result<(RemoteRole, ChildStdout), SshError> {
        let (role, stdout) = Self::spawn(conn, name, binary, command, workdir, log, true)?;
        Ok((role, stdout.expect("invariant: stdout is piped")))
    }

    fn spawn(
        conn: &Connection,
        name: &str,
        binary: &str,
        command: &[String],
        workdir: &str,
        log: &Path,
        piped: bool,
    ) -> Result<(RemoteRole, Option<ChildStdout>), SshError> {
        let host = conn.target().name.clone();
        if let Some(why) = conn.lost() {
            return Err(SshError::Connect {
                host,
                destination: conn.target().destination.clone(),
                detail: why,
            });
        }
        // A relative binary (the default cache) is relative to the login's home, not `workdir`.
        let bin = if binary.starts_with('/') {
            shell_quote(binary)
        } else {
            format!("\"$HOME\"/{}", shell_quote(binary))
        };
        let mut line = format!(
            "mkdir -p -- {dir} && cd -- {dir} && exec {bin} lifeline --",
            dir = shell_quote(workdir),
        );
        for word in command {
            line.push(' ');
            line.push_str(&shell_quote(word));
        }
        let out = std::fs::File::create(log).map_err(|e| SshError::Io(e, host.clone()))?;
        let err = out.try_clone().map_err(|e| SshError::Io(e, host.clone()))?;
        let mut cmd: Command = conn.command(&line);
        cmd.stdin(Stdio::piped()).stderr(err);
        match piped {
            true => cmd.stdout(Stdio::piped()),
            false => cmd.stdout(out),
        };
        let mut session = ManagedChild::spawn(cmd, &format!("{name} on {host}"))
            .map_err(|e| SshError::Io(e, host))?;
        let lifeline = session.take_stdin();
        let stdout = session.take_stdout();
        let role = RemoteRole {
            name: name.to_owned(),
            session: Some(session),
            lifeline,
        };
        Ok((role, stdout))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// True once the session has ended (the role exited, or the connection dropped).
    pub fn has_ended(&self) -> bool {
        self.session.as_ref().is_none_or(ManagedChild::has_exited)
    }

    /// Stops the role: closes its life line and waits for the session to end, killing the local
    /// ssh if it has not after [`STOP_TIMEOUT`].
    pub async fn stop(mut self) {
        drop(self.lifeline.take());
        let Some(session) = self.session.take() else {
            return;
        };
        let deadline = tokio::time::Instant::now() + STOP_TIMEOUT;
        while !session.has_exited() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = session.stop().await;
    }
}

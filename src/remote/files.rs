//! Files to and from a host over the master connection, with nothing to install on either
//! side: a role's files brought back (the remote directory packed by `tar` on the host and
//! unpacked by `tar` here), and a private file written there.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use super::ssh::{Connection, SshError, shell_quote};

const FETCH_TIMEOUT: Duration = Duration::from_secs(300);
const PUT_TIMEOUT: Duration = Duration::from_secs(30);

/// Copies every file under `remote_dir` on the host into `local_dir` (created if missing),
/// keeping relative paths.
pub async fn fetch_dir(
    conn: &Connection,
    remote_dir: &str,
    local_dir: &Path,
) -> Result<(), SshError> {
    let host = conn.target().name.clone();
    std::fs::create_dir_all(local_dir).map_err(|e| SshError::Io(e, host.clone()))?;
    let mut pack = conn.command(&format!("tar -C {} -cf - .", shell_quote(remote_dir)));
    pack.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut pack = pack.spawn().map_err(|e| SshError::Io(e, host.clone()))?;
    let stdout = pack.stdout.take().expect("stdout is piped");
    let stdout: std::process::Stdio = stdout
        .try_into()
        .map_err(|e| SshError::Io(e, host.clone()))?;
    // Spawned and the command dropped at once, so the pipe's read end lives only in the child:
    // if tar here dies, ssh gets EPIPE instead of blocking on a full pipe.
    let unpack = tokio::process::Command::new("tar")
        .arg("-C")
        .arg(local_dir)
        .args(["-xf", "-"])
        .stdin(stdout)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| SshError::Io(e, host.clone()))?;
    // Both at once: each side's stderr is drained while the other runs.
    let both = async {
        let (packed, unpacked) = tokio::join!(pack.wait_with_output(), unpack.wait_with_output());
        std::io::Result::Ok((packed?, unpacked?))
    };
    let (packed, unpacked) = tokio::time::timeout(FETCH_TIMEOUT, both)
        .await
        .map_err(|_| SshError::Command {
            host: host.clone(),
            command: format!("fetch {remote_dir}"),
            detail: format!("not done within {FETCH_TIMEOUT:?}"),
        })?
        .map_err(|e| SshError::Io(e, host.clone()))?;
    for (what, output) in [("remote tar", &packed), ("local tar", &unpacked)] {
        if !output.status.success() {
            return Err(SshError::Command {
                host,
                command: format!("fetch {remote_dir}"),
                detail: format!(
                    "{what}: {}: {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                ),
            });
        }
    }
    Ok(())
}

/// Writes `bytes` to `path` on the host, readable by the login's user alone (umask 077; its
/// folder made if missing): for secrets, which a command line would show to every user of
/// either machine in `ps`.
pub async fn put_private(conn: &Connection, path: &str, bytes: &[u8]) -> Result<(), SshError> {
    let dir = path.rsplit_once('/').map_or(".", |(d, _)| d);
    let script = format!(
        "set -e; umask 077; mkdir -p -- {}; cat > {}",
        shell_quote(dir),
        shell_quote(path)
    );
    conn.run_with_input(&script, bytes, &format!("write {path}"), PUT_TIMEOUT)
        .await
}

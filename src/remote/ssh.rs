//! One host reached over ssh: a master connection (`ssh -M`, ControlPath in a directory of the
//! run's) that every later command reuses, so starting a role costs no new handshake. Every
//! command runs with `BatchMode=yes`: a missing key or an unknown host key is an error at
//! once, never a prompt that hangs the run.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use crate::process::ManagedChild;

/// How long the master connection may take to come up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Keep-alives: a host silent for 3 × 5 s is gone (the master exits, its roles' sessions end).
const ALIVE_INTERVAL_S: u32 = 5;
const ALIVE_COUNT: u32 = 3;

/// Where a host is and how to log in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SshTarget {
    /// The host's name in the scenario (used in file names and messages).
    pub name: String,
    /// `user@address` or an alias of the ssh configuration.
    pub destination: String,
    pub port: Option<u16>,
    pub identity: Option<PathBuf>,
    /// A known_hosts file of its own (checked strictly: an unknown host key is an error).
    pub known_hosts: Option<PathBuf>,
    /// An ssh configuration file (`ssh -F`), e.g. the test bed's.
    pub config: Option<PathBuf>,
}

impl SshTarget {
    /// `user@address` or `user@address:port` (a scenario's `ssh:`), with no key or config.
    pub fn parse(name: &str, text: &str) -> Result<SshTarget, String> {
        let text = text.trim();
        let (user, rest) = text
            .split_once('@')
            .filter(|(u, r)| !u.is_empty() && !r.is_empty())
            .ok_or_else(|| format!("`{text}` is not user@address[:port]"))?;
        // [v6]:port, v4:port, or a bare address (a v6 address without brackets has colons).
        let (address, port) = match rest.strip_prefix('[') {
            Some(v6) => {
                let (addr, tail) = v6
                    .split_once(']')
                    .ok_or_else(|| format!("`{text}`: `[` without `]`"))?;
                (addr, tail.strip_prefix(':'))
            }
            None => match rest.split_once(':') {
                Some((a, p)) if !p.contains(':') => (a, Some(p)),
                _ => (rest, None),
            },
        };
        let port = port
            .map(|p| {
                p.parse::<u16>()
                    .ok()
                    .filter(|&p| p > 0)
                    .ok_or_else(|| format!("`{text}`: port `{p}` is not 1-65535"))
            })
            .transpose()?;
        if address.is_empty() || address.starts_with('-') || user.starts_with('-') {
            return Err(format!("`{text}` is not user@address[:port]"));
        }
        Ok(SshTarget {
            name: name.to_owned(),
            destination: format!("{user}@{address}"),
            port,
            identity: None,
            known_hosts: None,
            config: None,
        })
    }

    /// Whether the host accepts a batch-mode login and runs `true` within `timeout`; the error
    /// is what ssh said.
    pub async fn check_reachable(&self, timeout: Duration) -> Result<(), SshError> {
        let mut cmd = Command::new("ssh");
        cmd.args(base_options(self))
            .args(["-o", "ControlMaster=no", "-o", "ControlPath=none"])
            .arg(&self.destination)
            .args(["--", "true"])
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let detail = match tokio::time::timeout(timeout, cmd.output()).await {
            Err(_) => format!("no login within {} s", timeout.as_secs()),
            Ok(Err(e)) => format!("cannot run ssh: {e}"),
            Ok(Ok(out)) if out.status.success() => return Ok(()),
            Ok(Ok(out)) => format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        };
        Err(SshError::Connect {
            host: self.name.clone(),
            destination: self.destination.clone(),
            detail,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("ssh to {host} ({destination}): {detail}")]
    Connect {
        host: String,
        destination: String,
        detail: String,
    },
    #[error("ssh to {host}: `{command}` failed: {detail}")]
    Command {
        host: String,
        command: String,
        detail: String,
    },
    #[error("ssh to {host}: {0}", host = .1)]
    Io(std::io::Error, String),
}

/// A live master connection to one host; dropping it closes the connection (and so ends every
/// session still running over it).
pub struct Connection {
    target: SshTarget,
    control: PathBuf,
    /// The master's stderr (what ssh says when it cannot connect).
    log: PathBuf,
    master: Option<ManagedChild>,
}

impl Connection {
    /// Opens the master connection, its control socket in `control_dir` (kept short: a Unix
    /// socket path has at most 107 bytes).
    pub async fn open(target: SshTarget, control_dir: &Path) -> Result<Connection, SshError> {
        let control = control_dir.join(format!("{}.ctl", target.name));
        let log = control_dir.join(format!("{}.ssh.log", target.name));
        let log_file =
            std::fs::File::create(&log).map_err(|e| SshError::Io(e, target.name.clone()))?;
        let mut cmd = Command::new("ssh");
        // ControlPersist=no: a user's config may set it, and then ssh forks into the
        // background, where killing this child would no longer end the connection.
        cmd.args(base_options(&target))
            .args(["-o", "ControlMaster=yes", "-o", "ControlPersist=no"])
            .arg("-N")
            .arg("-S")
            .arg(&control)
            .arg(&target.destination)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        let master = ManagedChild::spawn(cmd, &format!("ssh master {}", target.name))
            .map_err(|e| SshError::Io(e, target.name.clone()))?;
        let mut connection = Connection {
            target,
            control,
            log,
            master: Some(master),
        };
        connection.wait_until_up().await?;
        Ok(connection)
    }

    pub fn target(&self) -> &SshTarget {
        &self.target
    }

    /// `Some(what ssh said)` once the master has exited: the connection, and every session
    /// over it, is gone. (A command over a lost master would quietly log in anew.)
    pub fn lost(&self) -> Option<String> {
        if !self.master.as_ref().is_none_or(ManagedChild::has_exited) {
            return None;
        }
        let said = std::fs::read_to_string(&self.log).unwrap_or_default();
        Some(match said.trim() {
            "" => "the ssh master connection ended".to_owned(),
            said => format!("the ssh master connection ended: {said}"),
        })
    }

    async fn wait_until_up(&mut self) -> Result<(), SshError> {
        let give_up = tokio::time::Instant::now() + CONNECT_TIMEOUT;
        loop {
            let check = Command::new("ssh")
                .args(base_options(&self.target))
                .args(["-o", "ControlMaster=no"])
                .arg("-S")
                .arg(&self.control)
                .args(["-O", "check"])
                .arg(&self.target.destination)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await
                .map_err(|e| SshError::Io(e, self.target.name.clone()))?;
            if check.success() {
                return Ok(());
            }
            let master = self
                .master
                .as_mut()
                .expect("invariant: master until dropped");
            if master.has_exited() {
                let detail = std::fs::read_to_string(&self.log).unwrap_or_default();
                return Err(self.connect_error(format!("ssh exited: {detail}")));
            }
            if tokio::time::Instant::now() >= give_up {
                return Err(self.connect_error(format!(
                    "no connection within {} s",
                    CONNECT_TIMEOUT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn connect_error(&self, detail: String) -> SshError {
        SshError::Connect {
            host: self.target.name.clone(),
            destination: self.target.destination.clone(),
            detail: detail.trim().to_owned(),
        }
    }

    /// A command that runs `remote` (one shell command line) on the host over the master.
    pub fn command(&self, remote: &str) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.args(base_options(&self.target))
            .args(["-o", "ControlMaster=no"])
            .arg("-S")
            .arg(&self.control)
            .arg(&self.target.destination)
            .arg("--")
            .arg(remote);
        cmd
    }

    /// Runs `remote` to completion; its stdout, or an error with its stderr.
    pub async fn run(&self, remote: &str, timeout: Duration) -> Result<String, SshError> {
        if let Some(why) = self.lost() {
            return Err(self.command_error(remote, why));
        }
        let mut cmd = self.command(remote);
        cmd.stdin(Stdio::null()).kill_on_drop(true);
        let output = tokio::time::timeout(timeout, cmd.output())
            .await
            .map_err(|_| self.command_error(remote, format!("no answer within {timeout:?}")))?
            .map_err(|e| SshError::Io(e, self.target.name.clone()))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(self.command_error(remote, format!("{}: {}", output.status, stderr.trim())));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Runs `remote` to completion with `input` as its stdin (a file's bytes); `what` names it
    /// in errors (the script itself may be long).
    pub async fn run_with_input(
        &self,
        remote: &str,
        input: &[u8],
        what: &str,
        timeout: Duration,
    ) -> Result<(), SshError> {
        use tokio::io::AsyncWriteExt;
        if let Some(why) = self.lost() {
            return Err(self.command_error(what, why));
        }
        let mut cmd = self.command(remote);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let feed = async {
            let mut child = cmd.spawn()?;
            let mut stdin = child.stdin.take().expect("stdin is piped");
            stdin.write_all(input).await?;
            drop(stdin);
            child.wait_with_output().await
        };
        let output = tokio::time::timeout(timeout, feed)
            .await
            .map_err(|_| self.command_error(what, format!("not done within {timeout:?}")))?
            .map_err(|e| SshError::Io(e, self.target.name.clone()))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(self.command_error(what, format!("{}: {}", output.status, stderr.trim())));
        }
        Ok(())
    }

    fn command_error(&self, command: &str, detail: String) -> SshError {
        SshError::Command {
            host: self.target.name.clone(),
            command: command.to_owned(),
            detail,
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Killing the master ends the connection and every session multiplexed over it.
        drop(self.master.take());
        let _ = std::fs::remove_file(&self.control);
    }
}

/// Options every ssh invocation of a target shares.
fn base_options(target: &SshTarget) -> Vec<String> {
    let mut options = vec![
        "-o".into(),
        "BatchMode=yes".into(),
        "-o".into(),
        format!("ServerAliveInterval={ALIVE_INTERVAL_S}"),
        "-o".into(),
        format!("ServerAliveCountMax={ALIVE_COUNT}"),
        "-o".into(),
        format!("ConnectTimeout={}", CONNECT_TIMEOUT.as_secs()),
    ];
    if let Some(config) = &target.config {
        options.push("-F".into());
        options.push(config.display().to_string());
    }
    if let Some(port) = target.port {
        options.push("-p".into());
        options.push(port.to_string());
    }
    if let Some(identity) = &target.identity {
        options.push("-i".into());
        options.push(identity.display().to_string());
        options.push("-o".into());
        options.push("IdentitiesOnly=yes".into());
    }
    if let Some(known) = &target.known_hosts {
        options.push("-o".into());
        options.push(format!("UserKnownHostsFile={}", known.display()));
        options.push("-o".into());
        options.push("StrictHostKeyChecking=yes".into());
    }
    options
}

/// Quotes `word` for a POSIX shell (the remote side runs command lines through one).
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_quoted_only_when_a_shell_would_split_or_expand_them() {
        assert_eq!(
            shell_quote("--listen=198.18.0.11:1883"),
            "--listen=198.18.0.11:1883"
        );
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("$HOME"), "'$HOME'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn every_invocation_is_batch_mode_with_the_target_s_key_and_config() {
        let target = SshTarget {
            name: "h1".into(),
            destination: "root@198.18.0.11".into(),
            port: Some(2222),
            identity: Some("/tmp/bed/id_ed25519".into()),
            known_hosts: Some("/tmp/bed/known_hosts".into()),
            config: Some("/tmp/bed/ssh_config".into()),
        };
        let options = base_options(&target).join(" ");
        assert!(options.contains("BatchMode=yes"), "{options}");
        assert!(options.contains("-F /tmp/bed/ssh_config"), "{options}");
        assert!(options.contains("-p 2222"), "{options}");
        assert!(
            options.contains("-i /tmp/bed/id_ed25519 -o IdentitiesOnly=yes"),
            "{options}"
        );
        assert!(
            options.contains(
                "-o UserKnownHostsFile=/tmp/bed/known_hosts -o StrictHostKeyChecking=yes"
            ),
            "{options}"
        );
    }

    #[test]
    fn scenario_ssh_destinations_parse_with_and_without_a_port() {
        let t = SshTarget::parse("h1", "root@198.18.0.11").unwrap();
        assert_eq!((t.destination.as_str(), t.port), ("root@198.18.0.11", None));
        let t = SshTarget::parse("h1", "lab@10.0.0.7:2222").unwrap();
        assert_eq!(
            (t.destination.as_str(), t.port),
            ("lab@10.0.0.7", Some(2222))
        );
        let t = SshTarget::parse("h1", "lab@[fd00::7]:22").unwrap();
        assert_eq!((t.destination.as_str(), t.port), ("lab@fd00::7", Some(22)));
        for bad in [
            "198.18.0.11",
            "@host",
            "root@",
            "root@h:0",
            "root@h:x",
            "-oProxy@h",
        ] {
            assert!(SshTarget::parse("h1", bad).is_err(), "{bad}");
        }
    }
}

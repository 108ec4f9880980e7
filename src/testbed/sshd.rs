//! One sshd per host, started inside the host's namespace with its own config, host key, PidFile
//! and log in `DIR/<host>/`; a throwaway client key in `DIR/id_ed25519` is the only way in (the
//! `authorized_keys` the configs name). `DIR/ssh_config` and `DIR/known_hosts` make
//! `ssh -F DIR/ssh_config h1` work without prompts and without touching `~/.ssh`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::TestbedError;
use super::state::Host;
use crate::broker::cgroup::CpuCgroup;

/// Lines of an sshd log quoted in errors.
const LOG_TAIL: usize = 10;

/// The sshd binary: `explicit`, else `sshd` on PATH, else Debian's `/usr/sbin/sshd`. sshd
/// re-executes itself, so the path is made absolute.
pub fn find_sshd(explicit: Option<&Path>) -> Result<PathBuf, TestbedError> {
    let missing = TestbedError::Missing {
        tool: "sshd",
        package: "openssh-server",
    };
    if let Some(path) = explicit {
        return std::path::absolute(path).map_err(|_| missing);
    }
    let path_dirs = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path_dirs)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join("sshd"))
        .find(|p| p.is_file() && p.is_absolute())
        .ok_or(missing)
}

/// Runs a tool to completion; its stderr goes into the error.
fn run(cmd: &mut Command, tool: &'static str, package: &'static str) -> Result<(), TestbedError> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => TestbedError::Missing { tool, package },
        _ => TestbedError::command(&shown, &e.to_string()),
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(TestbedError::command(
            &shown,
            String::from_utf8_lossy(&out.stderr).trim(),
        ))
    }
}

/// A new ed25519 key pair without passphrase at `path` and `path.pub`.
pub fn keygen(path: &Path, comment: &str) -> Result<(), TestbedError> {
    run(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
            .arg(path),
        "ssh-keygen",
        "openssh-client",
    )
}

/// A value for an ssh or sshd config line: quoted, so paths with spaces stay one token.
fn quoted(path: &Path) -> String {
    format!("\"{}\"", path.display())
}

/// Files of one host's sshd.
pub struct SshdFiles {
    pub config: PathBuf,
    pub host_key: PathBuf,
    pub pid_file: PathBuf,
    pub log: PathBuf,
}

impl SshdFiles {
    pub fn in_dir(host_dir: &Path) -> Self {
        SshdFiles {
            config: host_dir.join("sshd_config"),
            host_key: host_dir.join("ssh_host_ed25519_key"),
            pid_file: host_dir.join("sshd.pid"),
            log: host_dir.join("sshd.log"),
        }
    }
}

/// The sshd config of `host`: key logins for root only, listening on the host's address.
pub fn sshd_config(host: &Host, files: &SshdFiles, authorized_keys: &Path) -> String {
    format!(
        "# sshd of test bed host {name} (network namespace {netns}), from `mqdispatch testbed up`.\n\
         ListenAddress {addr}:{port}\n\
         HostKey {host_key}\n\
         PidFile {pid_file}\n\
         AuthorizedKeysFile {keys}\n\
         UsePAM no\n\
         PermitRootLogin prohibit-password\n\
         PubkeyAuthentication yes\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         # The bed's directory may sit in a world-writable temp dir, which StrictModes refuses.\n\
         StrictModes no\n\
         UseDNS no\n\
         PrintMotd no\n\
         X11Forwarding no\n\
         # A runner opens many sessions at once; the default (10 unauthenticated) drops some.\n\
         MaxStartups 200\n\
         MaxSessions 200\n\
         # scp speaks sftp since OpenSSH 9.\n\
         Subsystem sftp internal-sftp\n",
        name = host.name,
        netns = host.netns,
        addr = host.address,
        port = host.ssh_port,
        host_key = quoted(&files.host_key),
        pid_file = quoted(&files.pid_file),
        keys = quoted(authorized_keys),
    )
}

/// `DIR/ssh_config`: one `Host` block per host, batch mode, strict host keys from the bed's
/// own known_hosts.
pub fn ssh_config(hosts: &[Host]) -> String {
    let mut out =
        String::from("# Test bed hosts, from `mqdispatch testbed up`: ssh -F THIS_FILE h1\n");
    for h in hosts {
        out.push_str(&format!(
            "Host {name}\n  HostName {addr}\n  Port {port}\n  User {user}\n  \
             IdentityFile {id}\n  IdentitiesOnly yes\n  UserKnownHostsFile {kh}\n  \
             GlobalKnownHostsFile /dev/null\n  StrictHostKeyChecking yes\n  BatchMode yes\n  \
             ConnectTimeout 5\n  LogLevel ERROR\n",
            name = h.name,
            addr = h.address,
            port = h.ssh_port,
            user = h.user,
            id = quoted(&h.identity),
            kh = quoted(&h.known_hosts),
        ));
    }
    out
}

/// A known_hosts line for `host` from its public host key file text (`TYPE KEY COMMENT`).
pub fn known_hosts_line(host: &Host, public_key: &str) -> String {
    let mut words = public_key.split_whitespace();
    let (kind, key) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let names = if host.ssh_port == 22 {
        format!("{},{}", host.name, host.address)
    } else {
        format!(
            "[{}]:{p},[{}]:{p}",
            host.name,
            host.address,
            p = host.ssh_port
        )
    };
    format!("{names} {kind} {key}\n")
}

/// Starts sshd in `netns` (it daemonizes; `ip netns exec` returns when it has), inside `group`
/// from its first instruction when capped.
pub fn start(
    sshd: &Path,
    netns: &str,
    files: &SshdFiles,
    group: Option<&CpuCgroup>,
) -> Result<(), TestbedError> {
    // Debian's sshd refuses to start without its privilege separation directory, which the
    // (never started) system service would create.
    let privsep = Path::new("/run/sshd");
    if !privsep.is_dir() {
        std::fs::create_dir_all(privsep).map_err(|e| TestbedError::io(privsep, e))?;
    }
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns])
        .arg(sshd)
        .arg("-f")
        .arg(&files.config)
        .arg("-E")
        .arg(&files.log);
    if let Some(group) = group {
        group.apply_to_std(&mut cmd)?;
    }
    run(&mut cmd, "ip", "iproute2").map_err(|e| TestbedError::Sshd {
        netns: netns.to_owned(),
        detail: format!("{e}{}", log_tail(&files.log)),
    })
}

/// The pid sshd writes into its PidFile (after it listens), waiting up to `timeout` for it.
pub fn wait_pid(files: &SshdFiles, timeout: Duration) -> Option<u32> {
    let deadline = Instant::now() + timeout;
    loop {
        let pid = std::fs::read_to_string(&files.pid_file)
            .ok()
            .and_then(|t| t.trim().parse().ok());
        if pid.is_some() || Instant::now() >= deadline {
            return pid;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Logs in once (`ssh ... true`): proves the key, the known host key and the shell.
pub fn check_login(host: &Host) -> Result<(), TestbedError> {
    run(&mut host.ssh("true"), "ssh", "openssh-client")
}

/// The last lines of an sshd log, for error messages ("" when there is none).
pub fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    if lines.is_empty() {
        return String::new();
    }
    let tail = lines[lines.len().saturating_sub(LOG_TAIL)..].join("\n  ");
    format!("\n  {}: {tail}", log.display())
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn host() -> Host {
        Host {
            name: "h2".into(),
            netns: "mqdtb-h2".into(),
            address: Ipv4Addr::new(198, 18, 0, 12),
            ssh_port: 22,
            user: "root".into(),
            identity: "/bed/id_ed25519".into(),
            known_hosts: "/bed/known_hosts".into(),
            ssh_config: "/bed/ssh_config".into(),
            cgroup: None,
            cpu_limit_cores: None,
            sshd_pid: None,
            rtt_min_us: None,
            rtt_median_us: None,
        }
    }

    #[test]
    fn sshd_config_is_key_only_and_names_the_beds_files() {
        let files = SshdFiles::in_dir(Path::new("/bed/h2"));
        let text = sshd_config(&host(), &files, Path::new("/bed/authorized_keys"));
        for line in [
            "ListenAddress 198.18.0.12:22",
            "HostKey \"/bed/h2/ssh_host_ed25519_key\"",
            "PidFile \"/bed/h2/sshd.pid\"",
            "AuthorizedKeysFile \"/bed/authorized_keys\"",
            "UsePAM no",
            "PermitRootLogin prohibit-password",
            "PasswordAuthentication no",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    #[test]
    fn ssh_config_and_known_hosts_agree_on_names() {
        let text = ssh_config(&[host()]);
        for line in [
            "Host h2",
            "  HostName 198.18.0.12",
            "  User root",
            "  IdentityFile \"/bed/id_ed25519\"",
            "  UserKnownHostsFile \"/bed/known_hosts\"",
            "  StrictHostKeyChecking yes",
            "  BatchMode yes",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert_eq!(
            known_hosts_line(&host(), "ssh-ed25519 AAAAC3Nz root@x\n"),
            "h2,198.18.0.12 ssh-ed25519 AAAAC3Nz\n"
        );
        let mut other_port = host();
        other_port.ssh_port = 2222;
        assert_eq!(
            known_hosts_line(&other_port, "ssh-ed25519 AAAAC3Nz"),
            "[h2]:2222,[198.18.0.12]:2222 ssh-ed25519 AAAAC3Nz\n"
        );
    }
}

//! A multi-host test bed on one machine: hosts are network namespaces joined by a bridge, each
//! with its own sshd and optionally a CPU cap, so roles can be placed on "hosts" over ssh.
//!
//! [`net`] (bridge, namespaces, veths, round trips), [`sshd`] (keys and configs, one daemon per
//! host), [`cgroup`] (a CPU cap per host), [`state`] (`testbed.json`, `hosts.yaml`).
//! [`Testbed::up`] builds a bed and undoes everything on failure; [`down`] removes whatever
//! exists with the bed's prefix, so it also cleans up after a half-failed `up`.
//!
//! Links have no added delay: this kernel has no `netem` qdisc. The round trip from the root
//! namespace to each host is measured and recorded instead.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use mqdispatch::testbed::{Options, Testbed};
//!
//! let mut opts = Options::new(2);
//! opts.cpu_limit = Some(0.5);
//! let bed = Testbed::up(&opts)?.into_guard(); // `down` when dropped, also on panic
//! for host in bed.hosts() {
//!     let out = host.ssh("hostname -I").output()?; // ssh -F DIR/ssh_config hK -- CMD
//!     println!("{} {} {}", host.name, host.address, String::from_utf8_lossy(&out.stdout));
//! }
//! bed.down()?;
//! # Ok(())
//! # }
//! ```

pub mod cgroup;
mod down;
pub mod net;
pub mod sshd;
pub mod state;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::{info, warn};

use crate::broker::cgroup::CgroupError;
pub use down::{DownOnDrop, down};
pub use net::Subnet;
pub use state::{Host, TestbedState};

pub const DEFAULT_PREFIX: &str = "mqdtb";
pub const DEFAULT_DIR: &str = "results/testbed";
/// TCP connects per host for the round-trip figures.
const RTT_SAMPLES: usize = 20;
/// How long a fresh sshd may take to listen.
const SSHD_START: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    #[error(
        "network namespaces are not permitted here: {0} (the test bed needs root, or \
         CAP_NET_ADMIN and CAP_SYS_ADMIN)"
    )]
    NotPermitted(String),
    #[error("{tool} not found: apt-get install {package}")]
    Missing {
        tool: &'static str,
        package: &'static str,
    },
    #[error(
        "a test bed with prefix `{prefix}` exists already ({what}): run `mqdispatch testbed down`"
    )]
    Exists { prefix: String, what: String },
    #[error("{0}")]
    BadOption(String),
    #[error("`{cmd}` failed: {detail}")]
    Command { cmd: String, detail: String },
    #[error("sshd in namespace {netns} did not start: {detail}")]
    Sshd { netns: String, detail: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {detail}", path.display())]
    State { path: PathBuf, detail: String },
    #[error(
        "{} exists and holds no test bed (no testbed.json): not touching it; choose another --dir",
        .0.display()
    )]
    NotOurs(PathBuf),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
}

impl TestbedError {
    pub(crate) fn command(cmd: &str, detail: &str) -> Self {
        TestbedError::Command {
            cmd: cmd.to_owned(),
            detail: detail.to_owned(),
        }
    }

    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        TestbedError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// What `up` builds.
#[derive(Debug, Clone)]
pub struct Options {
    pub hosts: u16,
    /// Per host, in cores; `None`: uncapped.
    pub cpu_limit: Option<f64>,
    pub dir: PathBuf,
    /// Prefix of every name (namespaces `<prefix>-h<k>`, bridge `<prefix>0`): 1-8 lower-case
    /// letters and digits, starting with a letter, so link names fit the kernel's 15 bytes.
    pub prefix: String,
    pub subnet: Subnet,
    /// The sshd binary; `None`: found on PATH or in /usr/sbin.
    pub sshd: Option<PathBuf>,
}

impl Options {
    pub fn new(hosts: u16) -> Self {
        Options {
            hosts,
            cpu_limit: None,
            dir: PathBuf::from(DEFAULT_DIR),
            prefix: DEFAULT_PREFIX.to_owned(),
            subnet: Subnet::default(),
            sshd: None,
        }
    }

    fn check(&self) -> Result<(), TestbedError> {
        let bad = |m: String| Err(TestbedError::BadOption(m));
        if !(1..=net::MAX_HOSTS).contains(&self.hosts) {
            return bad(format!(
                "--hosts {} is not 1-{}",
                self.hosts,
                net::MAX_HOSTS
            ));
        }
        if let Some(c) = self.cpu_limit
            && !(c.is_finite() && c > 0.0)
        {
            return bad(format!("--cpu-limit {c} is not a positive number of cores"));
        }
        check_prefix(&self.prefix)
    }
}

fn check_prefix(prefix: &str) -> Result<(), TestbedError> {
    let ok = (1..=8).contains(&prefix.len())
        && prefix.starts_with(|c: char| c.is_ascii_lowercase())
        && prefix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(TestbedError::BadOption(format!(
            "--prefix `{prefix}` is not 1-8 lower-case letters and digits starting with a letter"
        )))
    }
}

/// Names the bed with `prefix` owns: `<prefix>-h<digits>` (namespaces, veths, cgroups) and
/// the bridge `<prefix>0`.
pub fn is_ours(prefix: &str, name: &str) -> bool {
    name == format!("{prefix}0")
        || name
            .strip_prefix(prefix)
            .and_then(|r| r.strip_prefix("-h"))
            .is_some_and(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()))
}

/// A running test bed.
#[derive(Debug)]
pub struct Testbed {
    dir: PathBuf,
    state: TestbedState,
}

impl Testbed {
    /// Builds the bed `opts` describes; on any error, removes what it made and returns the
    /// error. Blocking (runs `ip`, `ssh-keygen`, `ssh`): from async code use `spawn_blocking`.
    pub fn up(opts: &Options) -> Result<Testbed, TestbedError> {
        opts.check()?;
        let sshd = sshd::find_sshd(opts.sshd.as_deref())?;
        refuse_existing(opts)?;
        std::fs::create_dir_all(&opts.dir).map_err(|e| TestbedError::io(&opts.dir, e))?;
        let dir = std::fs::canonicalize(&opts.dir).map_err(|e| TestbedError::io(&opts.dir, e))?;
        let mut bed = Testbed {
            state: plan(opts, &dir),
            dir,
        };
        // testbed.json first: it marks the directory as the bed's, for `down`.
        bed.state.write(&bed.dir)?;
        match bed.build(&sshd) {
            Ok(()) => Ok(bed),
            Err(e) => {
                if let Err(cleanup) = down(&bed.dir, &opts.prefix) {
                    warn!(error = %cleanup, "cleaning up after a failed testbed up");
                }
                Err(e)
            }
        }
    }

    /// The bed whose `testbed.json` is in `dir`.
    pub fn open(dir: &Path) -> Result<Testbed, TestbedError> {
        let dir = std::fs::canonicalize(dir).map_err(|e| TestbedError::io(dir, e))?;
        let state = TestbedState::read(&dir)?;
        Ok(Testbed { dir, state })
    }

    fn build(&mut self, sshd_bin: &Path) -> Result<(), TestbedError> {
        let dir = self.dir.clone();
        let identity = dir.join("id_ed25519");
        sshd::keygen(
            &identity,
            &format!("mqdispatch test bed {}", self.state.prefix),
        )?;
        let authorized = dir.join("authorized_keys");
        copy(&identity.with_extension("pub"), &authorized)?;
        net::add_bridge(&self.state.bridge, self.state.local_address)?;
        let mut known_hosts = String::new();
        for host in &self.state.hosts {
            net::add_host(&host.netns, &self.state.bridge, host.address)?;
            let group = match (&host.cgroup, host.cpu_limit_cores) {
                (Some(name), Some(cores)) => Some(cgroup::create(name, cores)?),
                _ => None,
            };
            let host_dir = dir.join(&host.name);
            std::fs::create_dir_all(&host_dir).map_err(|e| TestbedError::io(&host_dir, e))?;
            let files = sshd::SshdFiles::in_dir(&host_dir);
            sshd::keygen(&files.host_key, &format!("{} host key", host.netns))?;
            let public = read(&files.host_key.with_extension("pub"))?;
            known_hosts.push_str(&sshd::known_hosts_line(host, &public));
            write(&files.config, &sshd::sshd_config(host, &files, &authorized))?;
            let started = sshd::start(sshd_bin, &host.netns, &files, group.as_ref());
            // `down` removes the group by name, on success and on failure alike.
            if let Some(g) = group {
                g.keep();
            }
            started?;
        }
        write(&dir.join("known_hosts"), &known_hosts)?;
        write(
            &dir.join("ssh_config"),
            &sshd::ssh_config(&self.state.hosts),
        )?;
        for host in &mut self.state.hosts {
            let files = sshd::SshdFiles::in_dir(&dir.join(&host.name));
            let addr = SocketAddr::from((host.address, host.ssh_port));
            if !net::wait_listening(addr, SSHD_START) {
                return Err(TestbedError::Sshd {
                    netns: host.netns.clone(),
                    detail: format!(
                        "nothing listens on {addr} after {SSHD_START:?}{}",
                        sshd::log_tail(&files.log)
                    ),
                });
            }
            sshd::check_login(host).map_err(|e| TestbedError::Sshd {
                netns: host.netns.clone(),
                detail: format!("login failed: {e}{}", sshd::log_tail(&files.log)),
            })?;
            host.sshd_pid = sshd::wait_pid(&files, SSHD_START);
            let (min, median) =
                net::connect_rtt(addr, RTT_SAMPLES).map_err(|e| TestbedError::Sshd {
                    netns: host.netns.clone(),
                    detail: format!("measuring the round trip to {addr}: {e}"),
                })?;
            host.rtt_min_us = Some((min * 10.0).round() / 10.0);
            host.rtt_median_us = Some((median * 10.0).round() / 10.0);
            info!(host = %host.name, address = %host.address, rtt_min_us = host.rtt_min_us, "host up");
        }
        self.state.complete = true;
        self.state.write(&dir)?;
        write(&dir.join(state::HOSTS_FILE), &self.state.hosts_yaml())
    }

    /// Stops every process in the bed's namespaces and removes everything it made.
    pub fn down(self) -> Result<(), TestbedError> {
        down(&self.dir, &self.state.prefix)
    }

    /// A handle that runs [`Testbed::down`] when dropped (for tests: nothing left on panic).
    pub fn into_guard(self) -> DownOnDrop {
        DownOnDrop(Some(self))
    }

    pub fn hosts(&self) -> &[Host] {
        &self.state.hosts
    }

    pub fn host(&self, name: &str) -> Option<&Host> {
        self.state.hosts.iter().find(|h| h.name == name)
    }

    pub fn state(&self) -> &TestbedState {
        &self.state
    }

    /// The bed's directory (absolute).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn ssh_config(&self) -> PathBuf {
        self.dir.join("ssh_config")
    }

    pub fn hosts_yaml(&self) -> PathBuf {
        self.dir.join(state::HOSTS_FILE)
    }
}

/// The bed as planned, before anything exists.
fn plan(opts: &Options, dir: &Path) -> TestbedState {
    let hosts = (1..=opts.hosts)
        .map(|k| {
            let netns = format!("{}-h{k}", opts.prefix);
            Host {
                name: format!("h{k}"),
                address: opts.subnet.host(k),
                ssh_port: 22,
                user: "root".into(),
                identity: dir.join("id_ed25519"),
                known_hosts: dir.join("known_hosts"),
                ssh_config: dir.join("ssh_config"),
                cgroup: opts.cpu_limit.map(|_| netns.clone()),
                cpu_limit_cores: opts.cpu_limit,
                sshd_pid: None,
                rtt_min_us: None,
                rtt_median_us: None,
                netns,
            }
        })
        .collect();
    TestbedState {
        prefix: opts.prefix.clone(),
        bridge: format!("{}0", opts.prefix),
        subnet: opts.subnet.to_string(),
        local_address: opts.subnet.local(),
        cpu_limit_cores: opts.cpu_limit,
        link_delay_emulated: false,
        rtt_method: format!(
            "TCP connect from the root namespace to the host's sshd, {RTT_SAMPLES} samples"
        ),
        created_unix_ms: crate::now_ms(),
        complete: false,
        hosts,
    }
}

/// Refuses to build over anything that exists: a bed with the same prefix, the subnet on some
/// interface, or a non-empty directory.
fn refuse_existing(opts: &Options) -> Result<(), TestbedError> {
    let exists = |what: String| {
        Err(TestbedError::Exists {
            prefix: opts.prefix.clone(),
            what,
        })
    };
    let ours = |n: &String| is_ours(&opts.prefix, n);
    if let Some(ns) = net::netns_list()?.iter().find(|n| ours(n)) {
        return exists(format!("network namespace {ns}"));
    }
    if let Some(link) = net::link_list()?.iter().find(|n| ours(n)) {
        return exists(format!("link {link}"));
    }
    if let Some(users) = Some(net::subnet_users(&opts.subnet)?).filter(|u| !u.is_empty()) {
        return exists(format!("{} is on {}", opts.subnet, users.join(", ")));
    }
    // A host without a CPU controller has no groups to collide with.
    let groups = cgroup::existing(|n| is_ours(&opts.prefix, n)).unwrap_or_default();
    if let Some(group) = groups.first() {
        return exists(format!("cgroup {group}"));
    }
    let non_empty = std::fs::read_dir(&opts.dir).is_ok_and(|mut e| e.next().is_some());
    if !non_empty {
        Ok(())
    } else if opts.dir.join(state::STATE_FILE).exists() {
        exists(format!("{} holds one", opts.dir.display()))
    } else {
        Err(TestbedError::NotOurs(opts.dir.clone()))
    }
}

fn read(path: &Path) -> Result<String, TestbedError> {
    std::fs::read_to_string(path).map_err(|e| TestbedError::io(path, e))
}

fn write(path: &Path, text: &str) -> Result<(), TestbedError> {
    std::fs::write(path, text).map_err(|e| TestbedError::io(path, e))
}

fn copy(from: &Path, to: &Path) -> Result<(), TestbedError> {
    std::fs::copy(from, to)
        .map(|_| ())
        .map_err(|e| TestbedError::io(from, e))
}

mod cli;
pub use cli::{Args, cli_main};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_a_prefix() {
        for name in ["mqdtb0", "mqdtb-h1", "mqdtb-h240"] {
            assert!(is_ours("mqdtb", name), "{name}");
        }
        for name in [
            "mqdtb",
            "mqdtb1",
            "mqdtb-h",
            "mqdtb-h1x",
            "mqdtbx-h1",
            "eth0",
        ] {
            assert!(!is_ours("mqdtb", name), "{name}");
        }
    }

    #[test]
    fn options_are_checked_before_anything_is_made() {
        let bad = |f: fn(&mut Options)| {
            let mut o = Options::new(2);
            f(&mut o);
            o.check().unwrap_err().to_string()
        };
        assert!(bad(|o| o.hosts = 0).contains("--hosts 0"));
        assert!(bad(|o| o.hosts = 241).contains("--hosts 241"));
        assert!(bad(|o| o.cpu_limit = Some(0.0)).contains("--cpu-limit 0"));
        assert!(bad(|o| o.prefix = "Bad".into()).contains("--prefix `Bad`"));
        assert!(bad(|o| o.prefix = "toolongname".into()).contains("1-8"));
        assert!(Options::new(2).check().is_ok());
    }

    #[test]
    fn a_plan_gives_each_host_its_address_namespace_and_cap() {
        let mut o = Options::new(2);
        o.cpu_limit = Some(0.5);
        let s = plan(&o, Path::new("/bed"));
        assert_eq!(s.bridge, "mqdtb0");
        assert_eq!(s.local_address.to_string(), "198.18.0.1");
        let h2 = &s.hosts[1];
        assert_eq!(
            (h2.name.as_str(), h2.netns.as_str(), h2.address.to_string()),
            ("h2", "mqdtb-h2", "198.18.0.12".to_owned())
        );
        assert_eq!(h2.cgroup.as_deref(), Some("mqdtb-h2"));
        assert_eq!(h2.identity, Path::new("/bed/id_ed25519"));
        assert!(!s.complete && !s.link_delay_emulated);
    }
}

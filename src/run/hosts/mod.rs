//! The run's hosts (`hosts:` in the scenario): one ssh master connection per host a role is
//! placed on, this build's binary put there by checksum, a work folder per host for the run,
//! the hosts' clock offsets to this machine measured at start and end, and a report token
//! for the agents that report across the bridge. [`brokers`] starts brokers and their agents
//! on hosts, [`loaders`] the loader shards, [`dispatcher`] the method's dispatcher. Every role's stderr log and files land in the
//! run's `hosts/<host>/` folder.
//!
//! Every remote process runs under `mqdispatch lifeline`: it ends with its ssh session, so a
//! stop, an error, SIGTERM or a dropped connection all leave nothing behind (the masters are
//! killed when the session is dropped, or by the process guard if the runner is killed
//! outright). A connection lost mid-run ends the run with an error ([`HostSession::lost`]).

pub(super) mod brokers;
mod clock;
pub(super) mod dispatcher;
pub(super) mod loaders;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use tracing::info;

use crate::broker::BrokerKind;
use crate::remote::binary::{DEFAULT_CACHE, Placed, ensure_binary};
use crate::remote::files::put_private;
use crate::remote::{Connection, ssh::shell_quote};
use crate::report::clocks::LOADER_ROLE;
use crate::scenario::{HostSpec, HostsPlan};
pub use clock::ClockRecord;

/// How far ahead of now loader shards are told to start: an ssh session and a process start
/// fit in it, on a LAN with room to spare.
const LOADER_LEAD: Duration = Duration::from_secs(3);
const QUICK: Duration = Duration::from_secs(30);
/// Where on each host builds and run folders are kept, when set (absolute, or relative to the
/// login's home); default `~/.cache/mqdispatch`.
pub const CACHE_ENV: &str = "MQDISPATCH_HOST_CACHE";

/// One connected host.
struct Host {
    spec: HostSpec,
    conn: Connection,
    /// Absolute path of this build's binary there.
    binary: String,
    /// Absolute path of the run's work folder there.
    workdir: String,
    /// The run's report token there (only its user may read it; removed with the folder).
    token_file: String,
    /// Its clock minus this machine's, measured at the start (0 until measured).
    offset_us: i64,
    /// Its Mosquitto (path, version), found at connect time when it runs a Mosquitto broker.
    mosquitto: Option<(String, String)>,
}

/// What `manifest.json` says about the hosts (`hosts`).
#[derive(Debug, Clone, Serialize)]
pub struct HostsRecord {
    pub local_address: IpAddr,
    /// Where the hosts were defined.
    pub source: String,
    /// From the test bed's `testbed.json`, when the hosts are a bed's.
    pub link_delay_emulated: Option<bool>,
    pub rtt_method: Option<String>,
    pub hosts: Vec<HostRecord>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HostRecord {
    pub name: String,
    pub ssh: String,
    pub address: IpAddr,
    /// What runs there: `broker b1 and its agent`, `loader shard 1/1`, `dispatcher`.
    pub roles: Vec<String>,
    /// This build's binary on the host, and whether this run had to copy it.
    pub binary: String,
    pub binary_copied: bool,
    /// The host's clock against this machine's, at the start and at the end of the run.
    pub clock_start: Option<ClockRecord>,
    pub clock_end: Option<ClockRecord>,
    /// The test bed's measured round trip to the host (`testbed.json`), in µs.
    pub testbed_rtt_min_us: Option<f64>,
    pub testbed_rtt_median_us: Option<f64>,
    /// Where its roles' logs and files are, relative to the results folder.
    pub files: String,
}

/// The connected hosts of one run.
pub(crate) struct HostSession {
    plan: HostsPlan,
    broker_kind: BrokerKind,
    local: IpAddr,
    hosts: BTreeMap<String, Host>,
    /// Control sockets of the masters (short path: a socket path has at most 107 bytes).
    control: PathBuf,
    /// `<results>/hosts`.
    files: PathBuf,
    token: String,
    clock: clock::ClockServer,
    record: HostsRecord,
}

impl HostSession {
    /// Connects to every host a role is placed on, puts the binary there (and checks that a
    /// host of a Mosquitto broker has Mosquitto), makes the run's work folders and measures
    /// the clocks.
    pub(crate) async fn open(
        plan: &HostsPlan,
        broker_kind: BrokerKind,
        results: &Path,
    ) -> anyhow::Result<HostSession> {
        let local = plan
            .local_address
            .context("invariant: the scenario check requires `local: { address }`")?;
        let control = std::env::temp_dir().join(format!(
            "mqd-ssh-{}-{}",
            std::process::id(),
            crate::now_ms()
        ));
        std::fs::create_dir_all(&control)
            .with_context(|| format!("creating {}", control.display()))?;
        let files = results.join("hosts");
        let run_id = results
            .file_name()
            .map_or_else(|| "run".into(), |n| n.to_string_lossy().into_owned());
        let clock = clock::ClockServer::start(local).await?;
        let bed = plan
            .testbed_dir
            .as_deref()
            .and_then(|dir| crate::testbed::TestbedState::read(dir).ok());
        let mut session = HostSession {
            plan: plan.clone(),
            broker_kind,
            local,
            hosts: BTreeMap::new(),
            control,
            files,
            token: random_token(),
            clock,
            record: HostsRecord {
                local_address: local,
                source: plan.source.clone(),
                link_delay_emulated: bed.as_ref().map(|b| b.link_delay_emulated),
                rtt_method: bed.as_ref().map(|b| b.rtt_method.clone()),
                hosts: Vec::new(),
            },
        };
        for spec in plan.used() {
            let (host, copied) = session.connect(spec, &run_id).await?;
            let bed_host = bed
                .as_ref()
                .and_then(|b| b.hosts.iter().find(|h| h.name == spec.name));
            session.record.hosts.push(HostRecord {
                name: spec.name.clone(),
                ssh: spec.ssh.clone(),
                address: spec.address,
                roles: roles_of(plan, &spec.name),
                binary: host.binary.clone(),
                binary_copied: copied,
                clock_start: None,
                clock_end: None,
                testbed_rtt_min_us: bed_host.and_then(|h| h.rtt_min_us),
                testbed_rtt_median_us: bed_host.and_then(|h| h.rtt_median_us),
                files: format!("hosts/{}", spec.name),
            });
            session.hosts.insert(spec.name.clone(), host);
        }
        session.measure_clocks(true).await?;
        Ok(session)
    }

    async fn connect(&self, spec: &HostSpec, run_id: &str) -> anyhow::Result<(Host, bool)> {
        let name = &spec.name;
        std::fs::create_dir_all(self.files.join(name))?;
        let conn = Connection::open(spec.target.clone(), &self.control)
            .await
            .with_context(|| format!("connecting to host {name} ({})", spec.at))?;
        let home = conn.run("printf %s \"$HOME\"", QUICK).await?;
        anyhow::ensure!(
            home.starts_with('/'),
            "host {name}: its login has no absolute $HOME (`{home}`)"
        );
        let cache = std::env::var(CACHE_ENV).unwrap_or_else(|_| DEFAULT_CACHE.to_owned());
        let (binary, placed) = ensure_binary(&conn, &crate::process::self_exe(), &cache)
            .await
            .with_context(|| format!("putting mqdispatch on host {name}"))?;
        let binary = match binary.starts_with('/') {
            true => binary,
            false => format!("{home}/{binary}"),
        };
        // Hosts of a test bed share this machine's file system: one folder per host.
        let cache = match cache.starts_with('/') {
            true => cache,
            false => format!("{home}/{cache}"),
        };
        let workdir = format!("{cache}/runs/{run_id}-{name}");
        let token_file = format!("{workdir}/token");
        put_private(&conn, &token_file, self.token.as_bytes())
            .await
            .with_context(|| format!("writing the run's token on host {name}"))?;
        let mosquitto = match self.broker_kind {
            BrokerKind::Mosquitto if self.plan.broker_hosts.contains(name) => {
                Some(find_mosquitto(&conn, name).await?)
            }
            _ => None,
        };
        info!(host = %name, %binary, copied = placed == Placed::Copied, "host ready");
        let host = Host {
            spec: spec.clone(),
            conn,
            binary,
            workdir,
            token_file,
            offset_us: 0,
            mosquitto,
        };
        Ok((host, placed == Placed::Copied))
    }

    /// Each host probes this machine's clock server; recorded as the host's offset.
    async fn measure_clocks(&mut self, start: bool) -> anyhow::Result<()> {
        let addr = self.clock.addr().to_string();
        for record in &mut self.record.hosts {
            let host = self
                .hosts
                .get_mut(&record.name)
                .expect("invariant: a record per connected host");
            let measured = clock::probe_from(&host.conn, &host.binary, &addr).await;
            let measured = match (measured, start) {
                (Ok(m), _) => m,
                (Err(e), true) => return Err(e.context(format!("clock of host {}", record.name))),
                (Err(e), false) => {
                    tracing::warn!(host = %record.name, error = %format!("{e:#}"), "clock probe at the end failed");
                    continue;
                }
            };
            if start {
                host.offset_us = measured.offset_us;
                record.clock_start = Some(measured);
            } else {
                record.clock_end = Some(measured);
            }
        }
        Ok(())
    }

    pub(crate) fn record(&self) -> HostsRecord {
        self.record.clone()
    }

    pub(crate) fn has_loaders(&self) -> bool {
        !self.plan.loaders.is_empty()
    }

    /// The instant (epoch ms, this machine's clock) loader shards are told to start at.
    pub(crate) fn loader_start_ms(&self) -> u64 {
        crate::now_ms() + LOADER_LEAD.as_millis() as u64
    }

    /// Completes, with an error naming the host, once any host's connection is lost (its ssh
    /// master ended: the host went away, or someone killed the master).
    pub(crate) async fn lost(&self) -> anyhow::Error {
        loop {
            for host in self.hosts.values() {
                if let Some(why) = host.conn.lost() {
                    let (name, ssh) = (&host.spec.name, &host.spec.ssh);
                    return anyhow::anyhow!("lost the connection to host {name} ({ssh}): {why}");
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn host(&self, name: &str) -> anyhow::Result<&Host> {
        self.hosts
            .get(name)
            .with_context(|| format!("invariant: host {name} is connected"))
    }

    /// The end of the run: clocks measured again, the hosts' work folders removed, the
    /// connections closed.
    pub(crate) async fn finish(mut self) -> HostsRecord {
        if let Err(e) = self.measure_clocks(false).await {
            tracing::warn!(error = %format!("{e:#}"), "clocks at the end");
        }
        for host in self.hosts.values() {
            let runs = host.workdir.rsplit_once('/').map_or(".", |(d, _)| d);
            let rm = format!(
                "rm -rf -- {}; rmdir -- {} 2>/dev/null || true",
                shell_quote(&host.workdir),
                shell_quote(runs)
            );
            if let Err(e) = host.conn.run(&rm, QUICK).await {
                tracing::warn!(host = %host.spec.name, error = %e, "removing the run's folder");
            }
        }
        self.record.clone()
    }
}

impl Drop for HostSession {
    fn drop(&mut self) {
        // The masters die with their connections (and every role's session with them).
        self.hosts.clear();
        self.clock.stop();
        let _ = std::fs::remove_dir_all(&self.control);
    }
}

/// Where the method's dispatcher listens: on the address hosts reach this machine at, its
/// report port taking only the run's token, when there are hosts; else on 127.0.0.1.
pub(crate) fn dispatcher_side(
    hosts: Option<&HostSession>,
    cfg: &mut crate::dispatcher::DispatcherConfig,
) -> IpAddr {
    match hosts {
        Some(h) => {
            cfg.token = Some(h.token.clone());
            h.local
        }
        None => [127, 0, 0, 1].into(),
    }
}

/// The Mosquitto binary on a host (its PATH, then the sbin folders Debian and a source
/// install use) and its version line; an error naming the host when it has none.
async fn find_mosquitto(conn: &Connection, name: &str) -> anyhow::Result<(String, String)> {
    let find = "for p in \"$(command -v mosquitto)\" /usr/sbin/mosquitto /usr/local/sbin/mosquitto; \
                do if [ -x \"$p\" ]; then echo \"$p\"; \"$p\" -h 2>/dev/null | head -n 1; exit 0; fi; \
                done; exit 3";
    let found = conn.run(find, QUICK).await.map_err(|e| {
        anyhow::anyhow!(
            "host {name} runs a Mosquitto broker but has no `mosquitto` (`command -v mosquitto` \
             found none, nor /usr/sbin/mosquitto): install it there (`apt-get install -y \
             mosquitto`) ({e})"
        )
    })?;
    let mut lines = found.lines();
    let path = lines.next().unwrap_or_default().trim().to_owned();
    let version = lines
        .next()
        .and_then(crate::broker::mosquitto::parse_version)
        .unwrap_or_else(|| "mosquitto (unknown version)".to_owned());
    Ok((path, version))
}

/// Reads the token file (the script's `$1`) into `MQDISPATCH_TOKEN`, then becomes the role.
const TOKEN_FROM_FILE: &str =
    "MQDISPATCH_TOKEN=$(cat -- \"$1\"); export MQDISPATCH_TOKEN; shift; exec \"$@\"";

impl Host {
    /// `command` (program first) with the run's token in its environment, read from the
    /// host's token file: on no command line, where every user of either machine would see it
    /// in `ps` (the role's `--token` reads `MQDISPATCH_TOKEN`).
    fn with_token(&self, command: Vec<String>) -> Vec<String> {
        let mut wrapped: Vec<String> = ["sh", "-c", TOKEN_FROM_FILE, "sh", &self.token_file]
            .map(str::to_owned)
            .into();
        wrapped.extend(command);
        wrapped
    }
}

/// What the scenario places on host `name`, for the manifest.
fn roles_of(plan: &HostsPlan, name: &str) -> Vec<String> {
    let brokers = plan
        .broker_hosts
        .iter()
        .enumerate()
        .filter(|(_, h)| *h == name)
        .map(|(i, _)| format!("broker b{} and its agent", i + 1));
    let n = plan.loaders.len();
    let loaders = plan
        .loaders
        .iter()
        .enumerate()
        .filter(|(_, h)| *h == name)
        .map(|(k, _)| format!("{LOADER_ROLE} {}/{n}", k + 1));
    let dispatcher = (plan.dispatcher.as_deref() == Some(name)).then(|| "dispatcher".to_owned());
    brokers.chain(loaders).chain(dispatcher).collect()
}

/// 32 random bytes, hex: the agents' report token for this run.
fn random_token() -> String {
    (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// Shifts an epoch-ms time read on a host's clock onto this machine's.
fn to_local_ms(t_ms: u64, offset_us: i64) -> u64 {
    let us = i128::from(t_ms) * 1000 - i128::from(offset_us);
    (us + 500).div_euclid(1000).clamp(0, i128::from(u64::MAX)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_times_shift_by_the_measured_offset() {
        // A host 1.5 ms ahead reports 1.5 ms later than this machine's clock says.
        assert_eq!(to_local_ms(10_000, 1_600), 9_998);
        assert_eq!(to_local_ms(10_000, 1_400), 9_999);
        assert_eq!(to_local_ms(10_000, -2_000), 10_002);
        assert_eq!(to_local_ms(10_000, 0), 10_000);
        assert_eq!(to_local_ms(1, 5_000), 0);
    }

    #[test]
    fn tokens_are_long_and_differ() {
        let (a, b) = (random_token(), random_token());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }
}

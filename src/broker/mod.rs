//! The brokers under test, one kind per file: [`embedded`] (rumqttd in a `mqdispatch broker`
//! child process, the default), [`mosquitto`] (a generated config, a plain child process) and
//! [`external`] (already running elsewhere). [`cgroup`] caps a broker's CPU to emulate a weak
//! host. [`RunningBroker`] is what the experiment runner starts, samples, faults and stops.

pub mod cgroup;
pub mod embedded;
pub mod external;
pub mod mosquitto;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, info, warn};

use crate::agent::{AgentConfig, CounterSource, CpuSource};
use crate::process::{ManagedChild, self_exe};
use cgroup::{CgroupError, CpuCgroup};

/// `RUST_LOG` for an embedded broker child when the user set none.
pub const QUIET_BROKER_LOG: &str = "warn,rumqttd::router::routing=off";

/// How long a broker child may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// Start attempts when a probed free port was taken by someone else in the meantime.
const START_ATTEMPTS: usize = 3;
/// stderr lines kept for error messages.
const STDERR_TAIL: usize = 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BrokerKind {
    Embedded,
    Mosquitto,
    External,
}

/// One broker of a scenario.
#[derive(Clone, Debug, PartialEq)]
pub struct BrokerSpec {
    pub id: String,
    pub kind: BrokerKind,
    /// CPU cap in cores (weak-host emulation), applied with a cgroup.
    pub cpu_limit_cores: Option<f64>,
    /// The CPUs the broker process may run on (`brokers.cpus`); `None`: wherever the harness may.
    pub cpus: Option<crate::affinity::CpuSet>,
    /// `host:port`, for [`BrokerKind::External`] only.
    pub external_addr: Option<String>,
    /// A second, TLS listener with this CA's server certificate ([`BrokerKind::Mosquitto`]
    /// only).
    pub tls: Option<crate::tls::ThrowawayCa>,
    /// The mqdispatch Mosquitto plugin to load ([`mosquitto::find_plugin`]), Mosquitto only.
    pub mosquitto_plugin: Option<PathBuf>,
}

impl BrokerSpec {
    /// A broker of `kind` with nothing else set: no CPU cap or pinning, no TLS, no plugin.
    pub fn new(id: &str, kind: BrokerKind) -> BrokerSpec {
        BrokerSpec {
            id: id.to_owned(),
            kind,
            cpu_limit_cores: None,
            cpus: None,
            external_addr: None,
            tls: None,
            mosquitto_plugin: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(
        "the mqdispatch Mosquitto plugin is not built (looked for {looked}): run \
         `cargo build --release -p mqdispatch-mosquitto-plugin`, or set MQDISPATCH_MOSQUITTO_PLUGIN \
         to the .so"
    )]
    PluginNotBuilt { looked: String },
    #[error(
        "the Mosquitto plugin {0} is not readable by user `mosquitto` (Mosquitto started as root \
         drops to it before loading plugins): make the file readable by others and its directories \
         searchable, or copy it elsewhere and set MQDISPATCH_MOSQUITTO_PLUGIN"
    )]
    PluginUnreadable(PathBuf),
    #[error("{what} is not installed: {how}")]
    NotInstalled {
        what: &'static str,
        how: &'static str,
    },
    #[error("the mqdispatch binary {0} does not exist (set MQDISPATCH_BIN to its path)")]
    NoSelfExe(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start broker {id}: {source}")]
    Spawn { id: String, source: std::io::Error },
    #[error("broker {id} exited during startup; its last messages:\n{stderr}")]
    Exited { id: String, stderr: String },
    #[error("broker {id} did not start listening within {secs} s")]
    Timeout { id: String, secs: u64 },
    #[error("external broker {addr} is not reachable: {why}")]
    Unreachable { addr: String, why: String },
    #[error("broker {id}: {why}")]
    Spec { id: String, why: String },
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
}

impl BrokerError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        BrokerError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// Checks that a broker kind can run here, e.g. that mosquitto is installed.
pub fn check_available(kind: BrokerKind) -> Result<(), BrokerError> {
    match kind {
        BrokerKind::Embedded => {
            let exe = self_exe();
            if exe.is_file() {
                Ok(())
            } else {
                Err(BrokerError::NoSelfExe(exe))
            }
        }
        BrokerKind::Mosquitto => mosquitto::check_available().map(|_| ()),
        BrokerKind::External => Ok(()),
    }
}

/// A started broker. Dropping it kills the process and removes its cgroup; [`Self::stop`] does
/// the same gracefully.
#[derive(Debug)]
pub struct RunningBroker {
    pub id: String,
    /// `127.0.0.1:PORT`: what the dispatcher puts in the Server Reference.
    pub addr: String,
    /// `127.0.0.1:PORT` of the TLS listener, when [`BrokerSpec::tls`] asked for one.
    pub tls_addr: Option<String>,
    pub kind: BrokerKind,
    version: String,
    counters: Option<CounterSource>,
    /// Times a fault brought it back: each restart begins its counters again from 0.
    restarts: u32,
    /// What started it, so a fault can bring it back on the same port.
    spec: BrokerSpec,
    workdir: std::path::PathBuf,
    /// The scenario host it runs on, when another host runs it (then this process holds no
    /// child: the runner's host session does).
    host: Option<String>,
    // Field order matters for drop: the process dies before its cgroup is removed.
    child: Option<ManagedChild>,
    cgroup: Option<CpuCgroup>,
    _io_tasks: Vec<AbortOnDropHandle<()>>,
}

impl RunningBroker {
    /// Starts the broker and returns once its port accepts connections.
    pub async fn start(spec: &BrokerSpec, workdir: &Path) -> Result<RunningBroker, BrokerError> {
        check_available(spec.kind)?;
        if spec.kind == BrokerKind::External {
            return start_external(spec).await;
        }
        if spec.mosquitto_plugin.is_some() && spec.kind != BrokerKind::Mosquitto {
            return Err(BrokerError::Spec {
                id: spec.id.clone(),
                why: "the mqdispatch plugin can only be loaded into a Mosquitto broker".into(),
            });
        }
        let mut last_error = None;
        for attempt in 1..=START_ATTEMPTS {
            match start_child(spec, workdir, None, None).await {
                Ok(broker) => return Ok(broker),
                // A probed port taken in the meantime shows up as an exit during startup.
                Err(e @ BrokerError::Exited { .. }) => {
                    warn!(broker = %spec.id, attempt, error = %e, "broker failed to start, retrying");
                    last_error = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_error.expect("invariant: at least one attempt"))
    }

    /// A broker of `kind` (`version`) that another host runs (`brokers.hosts`): reached at
    /// `addr`, its counters read from `counters`; its process and agent belong to the runner's
    /// host session.
    pub fn on_host(
        id: &str,
        host: &str,
        (kind, version): (BrokerKind, &str),
        addr: String,
        counters: CounterSource,
    ) -> RunningBroker {
        RunningBroker {
            id: id.to_owned(),
            addr,
            tls_addr: None,
            kind,
            version: format!("{version} on {host}"),
            counters: Some(counters),
            restarts: 0,
            spec: BrokerSpec::new(id, kind),
            workdir: std::path::PathBuf::new(),
            host: Some(host.to_owned()),
            child: None,
            cgroup: None,
            _io_tasks: Vec::new(),
        }
    }

    /// The scenario host that runs it, when not this machine.
    pub fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }

    /// Where the broker's cumulative counters are read, when it exposes them.
    pub fn counters(&self) -> Option<&CounterSource> {
        self.counters.as_ref()
    }

    /// How many times a fault restarted it (its counters began again each time).
    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(ManagedChild::pid)
    }

    /// The cgroup directory when the broker is CPU-capped.
    pub fn cgroup_dir(&self) -> Option<&Path> {
        self.cgroup.as_ref().map(CpuCgroup::dir)
    }

    /// What an agent samples for this broker: its cgroup when capped (percent of the cap),
    /// else its process (percent of one core), plus the broker's counters. `None` for an
    /// external broker: run `mqdispatch agent --host` on its machine instead.
    pub fn agent_config(&self, interval: Duration) -> Option<AgentConfig> {
        let pid = self.pid()?;
        let (cpu, capacity_cores) = match &self.cgroup {
            Some(group) => (
                CpuSource::Cgroup {
                    path: group.usage_dir().to_owned(),
                },
                Some(group.cores()),
            ),
            None => (CpuSource::Pid(pid), None),
        };
        Some(AgentConfig {
            broker_id: self.id.clone(),
            cpu,
            capacity_cores,
            counters: self.counters.clone(),
            interval,
            dispatchers: Vec::new(),
            token: None,
            // Not by default: a probe each interval is one more connect/close in the broker's log.
            probe: None,
            metrics: None,
        })
    }

    /// Whether the mqdispatch Mosquitto plugin is loaded (its control topic is on [`Self::addr`]).
    pub fn has_plugin(&self) -> bool {
        self.spec.mosquitto_plugin.is_some()
    }

    /// For the manifest: "rumqttd 0.20.0 (embedded)", "mosquitto 2.0.11", "external".
    pub fn version(&self) -> String {
        self.version.clone()
    }

    /// Fault injection (SIGKILL / SIGSTOP / SIGCONT) to the broker's process group.
    pub fn signal(&self, sig: i32) -> std::io::Result<()> {
        match &self.child {
            Some(child) => child.signal(sig),
            None => Err(std::io::Error::other(format!(
                "broker {} is external: it cannot be signalled",
                self.id
            ))),
        }
    }

    /// Brings a killed (or running) broker back on the same address: the old process is killed
    /// and reaped, a new one starts with the same port, kind and CPU cap. Clients that retry the
    /// address (as DNS round-robin clients do) find it again.
    pub async fn restart(&mut self) -> Result<(), BrokerError> {
        let port = self
            .addr
            .parse::<crate::addr::HostPort>()
            .map_err(|e| BrokerError::Spec {
                id: self.id.clone(),
                why: format!("cannot restart: {e}"),
            })?
            .port();
        if self.kind == BrokerKind::External {
            return Err(BrokerError::Spec {
                id: self.id.clone(),
                why: "an external broker cannot be restarted by the harness".into(),
            });
        }
        // Kill and reap the old process and its cgroup before the port is taken again.
        if let Some(child) = self.child.take() {
            let _ = child.stop().await;
        }
        if let Some(mut group) = self.cgroup.take() {
            let _ = group.remove();
        }
        self._io_tasks.clear();
        let tls_port = self
            .tls_addr
            .as_deref()
            .and_then(|a| a.parse::<crate::addr::HostPort>().ok())
            .map(|a| a.port());
        let fresh = start_child(&self.spec, &self.workdir, Some(port), tls_port).await?;
        let restarts = self.restarts + 1;
        *self = fresh;
        self.restarts = restarts;
        Ok(())
    }

    /// Stops the process (SIGTERM, then SIGKILL after ~2 s), reaps it and removes its cgroup.
    pub async fn stop(mut self) -> Result<(), BrokerError> {
        if let Some(child) = self.child.take() {
            let status = child.stop().await.map_err(|source| BrokerError::Spawn {
                id: self.id.clone(),
                source,
            })?;
            debug!(broker = %self.id, ?status, "broker stopped");
        }
        if let Some(mut group) = self.cgroup.take() {
            group
                .remove()
                .map_err(|e| BrokerError::io(group.dir(), e))?;
        }
        Ok(())
    }
}

async fn start_external(spec: &BrokerSpec) -> Result<RunningBroker, BrokerError> {
    let spec_error = |why: &str| BrokerError::Spec {
        id: spec.id.clone(),
        why: why.to_owned(),
    };
    let addr = spec
        .external_addr
        .clone()
        .ok_or_else(|| spec_error("an external broker needs an address (host:port)"))?;
    if spec.cpu_limit_cores.is_some() || spec.cpus.is_some() {
        return Err(spec_error(
            "a CPU limit or CPU set cannot be applied to an external broker",
        ));
    }
    external::check_reachable(&addr).await?;
    Ok(RunningBroker {
        id: spec.id.clone(),
        addr,
        tls_addr: None,
        kind: BrokerKind::External,
        version: "external".to_owned(),
        counters: None,
        restarts: 0,
        spec: spec.clone(),
        workdir: std::path::PathBuf::new(),
        host: None,
        child: None,
        cgroup: None,
        _io_tasks: Vec::new(),
    })
}

/// Embedded or Mosquitto: cgroup (if capped), spawn inside it, wait until it listens.
/// `port`, `tls_port`: the ports to listen on (a restart), or `None` for free ones.
async fn start_child(
    spec: &BrokerSpec,
    workdir: &Path,
    port: Option<u16>,
    tls_port: Option<u16>,
) -> Result<RunningBroker, BrokerError> {
    if spec.tls.is_some() && spec.kind != BrokerKind::Mosquitto {
        return Err(BrokerError::Spec {
            id: spec.id.clone(),
            why: "only Mosquitto brokers get a TLS listener".into(),
        });
    }
    let mut tls_addr = None;
    let cgroup = spec
        .cpu_limit_cores
        .map(|cores| CpuCgroup::create(&spec.id, cores))
        .transpose()?;
    let (mut cmd, mosquitto_port, version) = match spec.kind {
        BrokerKind::Embedded => {
            let mut cmd = Command::new(self_exe());
            let listen = format!("127.0.0.1:{}", port.unwrap_or(0));
            cmd.args([
                "broker",
                "--listen",
                &listen,
                "--stats-listen",
                "127.0.0.1:0",
            ]);
            if std::env::var_os("RUST_LOG").is_none() {
                // rumqttd logs every accept at info, and every publish still queued for a client that
                // just disconnected as an error ("already gone"): neither is news.
                cmd.env("RUST_LOG", QUIET_BROKER_LOG);
            }
            (cmd, None, embedded::VERSION.to_owned())
        }
        BrokerKind::Mosquitto => {
            let binary = mosquitto::check_available()?;
            let port = match port {
                Some(p) => p,
                None => free_port()?,
            };
            let tls = match &spec.tls {
                Some(ca) => {
                    let p = match tls_port {
                        Some(p) => p,
                        None => free_port()?,
                    };
                    tls_addr = Some(format!("127.0.0.1:{p}"));
                    Some((p, ca))
                }
                None => None,
            };
            let plugin = spec.mosquitto_plugin.as_deref();
            let config = mosquitto::write_config(workdir, &spec.id, port, tls, plugin)?;
            let mut cmd = Command::new(&binary);
            cmd.arg("-c").arg(&config);
            let mut version = mosquitto::version(&binary).await;
            if spec.mosquitto_plugin.is_some() {
                version.push_str(" + mqdispatch plugin");
            }
            (cmd, Some(port), version)
        }
        BrokerKind::External => unreachable!("external brokers are not spawned"),
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(group) = &cgroup {
        group.apply_to(&mut cmd)?;
    }
    if let Some(cpus) = &spec.cpus {
        cpus.check_online().map_err(|why| BrokerError::Spec {
            id: spec.id.clone(),
            why: format!("cpus: {why}"),
        })?;
        cpus.apply_to(&mut cmd);
    }
    let mut child = ManagedChild::spawn(cmd, &spec.id).map_err(|source| BrokerError::Spawn {
        id: spec.id.clone(),
        source,
    })?;
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    let mut io_tasks = Vec::new();
    if let Some(stderr) = child.take_stderr() {
        io_tasks.push(forward_stderr(stderr, spec.id.clone(), tail.clone()));
    }
    let stdout = child.take_stdout().expect("invariant: stdout is piped");
    let exited = || BrokerError::Exited {
        id: spec.id.clone(),
        stderr: tail
            .lock()
            .map(|t| t.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default(),
    };
    let ready = async {
        match mosquitto_port {
            None => read_embedded_banner(stdout).await.ok_or_else(exited),
            Some(port) => {
                io_tasks.push(drain(stdout));
                wait_accepting(port, &child).await.ok_or_else(exited)?;
                Ok((format!("127.0.0.1:{port}"), None))
            }
        }
    };
    let (addr, stats) = tokio::time::timeout(START_TIMEOUT, ready)
        .await
        .map_err(|_| BrokerError::Timeout {
            id: spec.id.clone(),
            secs: START_TIMEOUT.as_secs(),
        })??;
    let counters = match (stats, spec.kind) {
        (Some((stats_addr, rest)), _) => {
            io_tasks.push(rest);
            Some(CounterSource::Rumqttd { stats_addr })
        }
        (None, BrokerKind::Mosquitto) => Some(CounterSource::MosquittoSys { addr: addr.clone() }),
        _ => None,
    };
    info!(broker = %spec.id, %addr, pid = child.pid(), cgroup = ?cgroup.as_ref().map(|g| g.dir().to_owned()), "broker started");
    Ok(RunningBroker {
        id: spec.id.clone(),
        addr,
        tls_addr,
        kind: spec.kind,
        version,
        counters,
        restarts: 0,
        spec: spec.clone(),
        workdir: workdir.to_owned(),
        host: None,
        child: Some(child),
        cgroup,
        _io_tasks: io_tasks,
    })
}

/// Reads `listening on ADDR` and `stats on ADDR` from `mqdispatch broker`; `None` if it exits
/// first. Returns the address, and the stats address with the task draining the rest.
async fn read_embedded_banner(
    stdout: tokio::process::ChildStdout,
) -> Option<(String, Option<(String, AbortOnDropHandle<()>)>)> {
    let mut lines = BufReader::new(stdout).lines();
    let addr = lines
        .next_line()
        .await
        .ok()??
        .strip_prefix("listening on ")?
        .to_owned();
    let stats = lines
        .next_line()
        .await
        .ok()??
        .strip_prefix("stats on ")?
        .to_owned();
    let rest = drain(lines.into_inner());
    Some((addr, Some((stats, rest))))
}

/// Polls until `port` accepts a connection; `None` if the child exits first.
async fn wait_accepting(port: u16, child: &ManagedChild) -> Option<()> {
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Some(());
        }
        if child.has_exited() {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A currently free loopback port, for brokers that cannot be told "port 0".
pub fn free_port() -> Result<u16, BrokerError> {
    let addr: SocketAddr = ([127, 0, 0, 1], 0).into();
    std::net::TcpListener::bind(addr)
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| BrokerError::io(Path::new("127.0.0.1:0"), e))
}

fn drain(stream: impl AsyncRead + Unpin + Send + 'static) -> AbortOnDropHandle<()> {
    AbortOnDropHandle::new(tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(_)) = lines.next_line().await {}
    }))
}

/// Logs the child's stderr (debug level) and keeps its last lines for error messages.
fn forward_stderr(
    stderr: tokio::process::ChildStderr,
    id: String,
    tail: Arc<Mutex<VecDeque<String>>>,
) -> AbortOnDropHandle<()> {
    AbortOnDropHandle::new(tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            debug!(broker = %id, "{line}");
            if let Ok(mut tail) = tail.lock() {
                if tail.len() == STDERR_TAIL {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        }
    }))
}

/// `mqdispatch broker`: the embedded broker in this process.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// MQTT v5 listener (`127.0.0.1:0` picks a free port; the first stdout line says which).
    #[arg(long, value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Also serve MQTT 3.1.1 here (rumqttd needs one listener per protocol).
    #[arg(long, value_name = "ADDR")]
    pub listen_v4: Option<SocketAddr>,
    /// Stats port: streams `{"t_ms":..,"received_total":..,"connections":..}` lines.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub stats_listen: SocketAddr,
    /// How often the broker-side counter is updated (whole seconds).
    #[arg(long, default_value = "1s", value_parser = crate::duration::parse_arg)]
    pub stats_interval: Duration,
}

pub async fn cli_main(args: Args) -> anyhow::Result<()> {
    embedded::cli_main(args).await
}

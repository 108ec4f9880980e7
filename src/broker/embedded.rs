//! `mqdispatch broker`: rumqttd with a config built in code, in this process, plus a stats port
//! that streams the broker-side received counter as JSON lines.
//!
//! rumqttd parses one protocol per listener, so MQTT v5 is served on `--listen` and 3.1.1 only
//! when `--listen-v4` is given (one router: v4 and v5 clients see each other's messages).
//! rumqttd binds its listeners itself, so for port 0 a free port is probed first (bind
//! 127.0.0.1:0, drop, hand the number over); if another process takes it in between, startup
//! fails with a clear error and the harness starts the broker again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use rumqttd::{
    Config, ConnectionSettings, Meter, MetricSettings, MetricType, RouterConfig, ServerSettings,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::agent::CounterReading;

/// The rumqttd release compiled in (for the manifest).
pub const VERSION: &str = "rumqttd 0.20.0 (embedded)";

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "rumqttd did not start listening on {0} (another process may have taken the port): \
         start the broker again"
    )]
    NotListening(SocketAddr),
    #[error("rumqttd: {0}")]
    Broker(String),
    #[error(
        "stats interval must be a whole number of seconds ≥ 1s (rumqttd meters tick in seconds)"
    )]
    BadInterval,
}

/// Resolves port 0 to a currently free port (rumqttd needs a concrete one); checks that a
/// concrete port is free, for a clear error.
fn pick_port(addr: SocketAddr) -> Result<SocketAddr, EmbeddedError> {
    let probe =
        std::net::TcpListener::bind(addr).map_err(|source| EmbeddedError::Bind { addr, source })?;
    probe
        .local_addr()
        .map_err(|source| EmbeddedError::Bind { addr, source })
}

fn server(name: &str, listen: SocketAddr) -> ServerSettings {
    ServerSettings {
        name: name.to_owned(),
        listen,
        tls: None,
        // rumqttd sleeps this long after every accept; 0 keeps connection storms fast.
        next_connection_delay_ms: 0,
        connections: ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: 256 * 1024,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            // Without this a publish to a topic nobody subscribed to drops the connection.
            dynamic_filters: true,
        },
    }
}

/// The rumqttd configuration: v5 (and optionally v4) listeners, meters every `stats_secs`.
pub fn config(
    v5: SocketAddr,
    v4: Option<SocketAddr>,
    stats_secs: u64,
) -> Result<Config, EmbeddedError> {
    // `MetricSettings` has a private field: build it through serde. Alerts must be configured
    // too, or rumqttd's metrics timer panics.
    let metric: MetricSettings =
        serde_json::from_value(serde_json::json!({ "push_interval": stats_secs }))
            .map_err(|e| EmbeddedError::Broker(e.to_string()))?;
    let metrics = HashMap::from([
        (MetricType::Meters, metric.clone()),
        (MetricType::Alerts, metric),
    ]);
    Ok(Config {
        id: 0,
        router: RouterConfig {
            max_connections: 10_010,
            max_outgoing_packet_count: 200,
            // Per-topic commit log kept in memory: 8 × 1 MiB bounds it under sustained load.
            max_segment_size: 1024 * 1024,
            max_segment_count: 8,
            ..RouterConfig::default()
        },
        v5: Some(HashMap::from([("v5".to_owned(), server("v5", v5))])),
        v4: v4.map(|addr| HashMap::from([("v4".to_owned(), server("v4", addr))])),
        metrics: Some(metrics),
        ..Config::default()
    })
}

/// A running embedded broker: its addresses and the counter feed.
#[derive(Debug)]
pub struct Embedded {
    pub v5: SocketAddr,
    pub v4: Option<SocketAddr>,
    pub counters: watch::Receiver<CounterReading>,
}

/// Starts rumqttd on its own threads (they live until the process exits) and waits until its
/// listeners accept. The counter feed advances on every meter tick, and at least every
/// 1.5 intervals while idle (rumqttd sends no meter when nothing was published).
pub async fn start(
    listen: SocketAddr,
    listen_v4: Option<SocketAddr>,
    stats_interval: Duration,
    cancel: CancellationToken,
) -> Result<Embedded, EmbeddedError> {
    if stats_interval.subsec_nanos() != 0 || stats_interval.as_secs() == 0 {
        return Err(EmbeddedError::BadInterval);
    }
    let v5 = pick_port(listen)?;
    let v4 = listen_v4.map(pick_port).transpose()?;
    let config = config(v5, v4, stats_interval.as_secs())?;
    let (meters_tx, meters_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("rumqttd".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            let _ = meters_tx.send(broker.meters().map_err(|e| e.to_string()));
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "rumqttd stopped");
            }
        })
        .map_err(|e| EmbeddedError::Broker(e.to_string()))?;
    let meters = meters_rx
        .recv()
        .map_err(|e| EmbeddedError::Broker(e.to_string()))?
        .map_err(EmbeddedError::Broker)?;
    for addr in std::iter::once(v5).chain(v4) {
        wait_listening_ourselves(addr).await?;
    }

    let (tx, counters) = watch::channel(CounterReading {
        t_ms: crate::now_ms(),
        received_total: 0,
        connections: None,
    });
    tokio::spawn(async move {
        let idle_after = stats_interval * 3 / 2;
        loop {
            let meter = tokio::select! {
                _ = cancel.cancelled() => return,
                m = tokio::time::timeout(idle_after, meters.next()) => m,
            };
            let mut reading = *tx.borrow();
            reading.t_ms = crate::now_ms();
            match meter {
                Ok(Ok(list)) => {
                    for m in list {
                        if let Meter::Router(_, r) = m {
                            reading.received_total += r.total_publishes as u64;
                            // The router's own count of live connections: no work of ours.
                            reading.connections = Some(r.total_connections as u64);
                        }
                    }
                }
                Ok(Err(e)) => {
                    debug!(error = %e, "rumqttd meters closed");
                    return;
                }
                // Idle: rumqttd sends no meter when nothing was published; the last
                // connection count stands (nothing here reads the socket table, which would
                // put the harness's work into the broker's measured CPU).
                Err(_) => {}
            }
            tx.send_replace(reading);
        }
    });
    Ok(Embedded { v5, v4, counters })
}

/// Waits until `addr` has a listening socket that belongs to this process (so a port taken by
/// someone else between probe and bind is detected, not served by a stranger).
async fn wait_listening_ourselves(addr: SocketAddr) -> Result<(), EmbeddedError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline {
        if tokio::task::spawn_blocking(move || owns_listener(addr.port()))
            .await
            .unwrap_or(false)
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(EmbeddedError::NotListening(addr))
}

/// Is a LISTEN socket on `port` (in /proc/net/tcp or tcp6) one of this process's fds?
fn owns_listener(port: u16) -> bool {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        inodes.extend(listening_inodes(&text, port));
    }
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| {
            let target = target.to_string_lossy();
            inodes
                .iter()
                .any(|inode| target == format!("socket:[{inode}]"))
        })
    })
}

/// Inodes of LISTEN (state 0A) sockets on local `port` in a /proc/net/tcp table.
pub fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    sockets_in_state(table, port, "0A")
}

/// Inodes of sockets on local `port` in `state` (hex, as /proc/net/tcp prints it).
fn sockets_in_state(table: &str, port: u16, state: &str) -> Vec<u64> {
    let port_hex = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_ascii_whitespace().collect();
            let local = fields.get(1)?;
            (local.ends_with(&port_hex) && fields.get(3) == Some(&state))
                .then(|| fields.get(9)?.parse().ok())
                .flatten()
        })
        .collect()
}

/// Serves the stats port: each connection gets the current reading and then every update, one
/// JSON line each.
pub async fn serve_stats(
    listener: TcpListener,
    counters: watch::Receiver<CounterReading>,
    cancel: CancellationToken,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((mut stream, peer)) = accepted else {
            continue;
        };
        let mut rx = counters.clone();
        connections.spawn(async move {
            debug!(%peer, "stats client connected");
            loop {
                let mut line = serde_json::to_string(&*rx.borrow_and_update()).unwrap_or_default();
                line.push('\n');
                if stream.write_all(line.as_bytes()).await.is_err() || rx.changed().await.is_err() {
                    return;
                }
            }
        });
        while connections.try_join_next().is_some() {}
    }
}

/// The subcommand: start, announce the addresses on stdout, serve until SIGINT/SIGTERM/SIGHUP.
pub async fn cli_main(args: super::Args) -> anyhow::Result<()> {
    // As many connections as the hard limit allows (a fleet's broker holds thousands).
    crate::fdlimit::raise(crate::fdlimit::BASE_FDS, "the broker")?;
    let cancel = CancellationToken::new();
    let mut signals = crate::shutdown::Signals::install()?;
    let broker = start(
        args.listen,
        args.listen_v4,
        args.stats_interval,
        cancel.clone(),
    )
    .await?;
    let stats = TcpListener::bind(args.stats_listen)
        .await
        .map_err(|source| EmbeddedError::Bind {
            addr: args.stats_listen,
            source,
        })?;
    let stats_addr = stats.local_addr()?;
    // Exactly these lines, in this order: the harness and tests parse them.
    let mut out = format!("listening on {}\nstats on {stats_addr}\n", broker.v5);
    if let Some(v4) = broker.v4 {
        out.push_str(&format!("v4 on {v4}\n"));
    }
    let mut stdout = tokio::io::stdout();
    stdout.write_all(out.as_bytes()).await?;
    stdout.flush().await?;
    info!(v5 = %broker.v5, v4 = ?broker.v4, stats = %stats_addr, "embedded broker running");
    let server = tokio::spawn(serve_stats(stats, broker.counters, cancel.clone()));
    signals.recv().await;
    cancel.cancel();
    let _ = server.await;
    // rumqttd's threads cannot be stopped; they end with the process.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_listening_inodes_for_a_port() {
        // Captured /proc/net/tcp: one listener on 127.0.0.1:1883 (0x075B), one connection.
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:075B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 48213 1 0000000000000000 100 0 0 10 0\n\
   1: 0100007F:075B 0100007F:D2A4 01 00000000:00000000 00:00000000 00000000     0        0 48990 1 0000000000000000 20 4 30 10 -1\n";
        assert_eq!(listening_inodes(table, 1883), vec![48213]);
        assert!(listening_inodes(table, 1884).is_empty());
        assert_eq!(sockets_in_state(table, 1883, "01"), vec![48990]);
    }

    #[test]
    fn config_has_v5_meters_alerts_and_dynamic_filters() {
        let v5: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let c = config(v5, None, 1).unwrap();
        let server = &c.v5.as_ref().unwrap()["v5"];
        assert!(server.connections.dynamic_filters);
        assert_eq!(server.listen, v5);
        assert!(c.v4.is_none());
        let metrics = c.metrics.unwrap();
        assert!(
            metrics.contains_key(&MetricType::Meters) && metrics.contains_key(&MetricType::Alerts)
        );
    }
}

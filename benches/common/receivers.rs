//! Subscribers for the receive-side benchmark, each on a thread of its own so its CPU time
//! (CLOCK_THREAD_CPUTIME_ID) is its alone while the generator and broker share the machine:
//!
//! - [`plain_reader`]: the floor of receiving. CONNECT and SUBSCRIBE written as raw packets,
//!   then blocking `read`s into one buffer, counting PUBLISH frames by their fixed headers.
//! - [`rumqttc_reader`]: a rumqttc v5 client on a current-thread runtime, decoding every
//!   PUBLISH and its payload header, recording end-to-end latency (receipt − send time).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use mqdispatch::loadgen::Lateness;
use mqdispatch::payload::{Header, now_us};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, Subscribe};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};

use super::bare_sender::thread_cpu;

/// What one subscriber did while it ran.
pub struct Received {
    pub messages: u64,
    pub cpu: Duration,
    /// End-to-end latency from the payload header (rumqttc reader only).
    pub latency: Option<Lateness>,
}

/// A running subscriber: connected and subscribed once [`start`]-ed; [`Subscriber::stop`] ends
/// it and returns its counts.
pub struct Subscriber {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<std::io::Result<Received>>,
}

impl Subscriber {
    pub fn stop(self) -> std::io::Result<Received> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("subscriber thread")
    }
}

/// Starts the plain read loop on `filter` at `broker`; returns once it is subscribed.
pub fn plain_reader(broker: &str, client_id: &str, filter: &str) -> std::io::Result<Subscriber> {
    let mut stream = TcpStream::connect(broker)?;
    stream.write_all(&mqdispatch::proto::connect_packet(client_id))?;
    let mut subscribe = BytesMut::new();
    Packet::Subscribe(Subscribe::new(Filter::new(filter, QoS::AtMostOnce), None))
        .write(&mut subscribe, None)
        .map_err(std::io::Error::other)?;
    stream.write_all(&subscribe)?;
    // CONNACK then SUBACK: read until both fixed headers have been seen.
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending = Vec::new();
    let mut acks = 0;
    while acks < 2 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::Error::other("broker closed before SUBACK"));
        }
        pending.extend_from_slice(&buf[..n]);
        let (packets, used) = frames(&pending, |_| {});
        acks += packets;
        pending.drain(..used);
    }
    stream.set_read_timeout(Some(Duration::from_millis(100)))?;
    // A partial frame stays at the front of `buf` (`filled` bytes) until the rest arrives.
    buf[..pending.len()].copy_from_slice(&pending);
    let mut filled = pending.len();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let thread = std::thread::spawn(move || {
        let cpu0 = thread_cpu();
        let mut messages = 0;
        while !flag.load(Ordering::Relaxed) {
            match stream.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => {
                    let end = filled + n;
                    let (_, used) = frames(&buf[..end], |byte1| {
                        messages += u64::from(byte1 >> 4 == 3);
                    });
                    buf.copy_within(used..end, 0);
                    filled = end - used;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Received {
            messages,
            cpu: thread_cpu() - cpu0,
            latency: None,
        })
    });
    Ok(Subscriber { stop, thread })
}

/// Walks whole MQTT frames in `bytes` (fixed header + remaining length), calling `each` with
/// each one's first byte; returns how many and the bytes they span.
fn frames(bytes: &[u8], mut each: impl FnMut(u8)) -> (usize, usize) {
    let (mut at, mut count) = (0, 0);
    loop {
        let Some(&byte1) = bytes.get(at) else {
            return (count, at);
        };
        let (mut len, mut shift, mut i) = (0usize, 0, at + 1);
        loop {
            let Some(&b) = bytes.get(i) else {
                return (count, at);
            };
            len |= usize::from(b & 0x7F) << shift;
            shift += 7;
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
        if i + len > bytes.len() {
            return (count, at);
        }
        each(byte1);
        count += 1;
        at = i + len;
    }
}

/// Starts a rumqttc v5 subscriber on `filter` at `broker`; returns once it is subscribed.
pub fn rumqttc_reader(broker: &str, client_id: &str, filter: &str) -> std::io::Result<Subscriber> {
    let (host, port) = broker
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_owned(), p.parse().ok()?)))
        .ok_or_else(|| std::io::Error::other("broker address is not host:port"))?;
    let mut options = MqttOptions::new(client_id, host, port);
    options.set_outgoing_inflight_upper_limit(10);
    let filter = filter.to_owned();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let (client, mut eventloop) = AsyncClient::new(options, 10);
            client
                .subscribe(filter, QoS::AtMostOnce)
                .await
                .map_err(std::io::Error::other)?;
            let mut latency = Lateness::default();
            let (mut messages, mut cpu0) = (0, None);
            loop {
                let event =
                    tokio::time::timeout(Duration::from_millis(100), eventloop.poll()).await;
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                match event {
                    Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                        cpu0 = Some(thread_cpu());
                        let _ = ready_tx.send(());
                    }
                    Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                        if let Some(header) = Header::read(&p.payload) {
                            let late_us = now_us().saturating_sub(header.sent_us);
                            latency.record(Duration::from_micros(late_us));
                        }
                        messages += 1;
                    }
                    Ok(Ok(_)) | Err(_) => {}
                    Ok(Err(e)) => return Err(std::io::Error::other(e)),
                }
            }
            let cpu = thread_cpu() - cpu0.unwrap_or_else(thread_cpu);
            Ok(Received {
                messages,
                cpu,
                latency: Some(latency),
            })
        })
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .map_err(|_| std::io::Error::other("rumqttc subscriber got no SUBACK within 5 s"))?;
    Ok(Subscriber { stop, thread })
}

/// The project's subscriber, `mqdispatch load --subscriber name=s,count=1,topic=FILTER,qos=0`,
/// as a child process receiving for `receive_for`; its CPU is sampled from /proc around the
/// load ([`ProjectSubscriber::measure_from`], [`ProjectSubscriber::finish`]).
pub struct ProjectSubscriber {
    child: std::process::Child,
    csv: std::path::PathBuf,
    sampler: mqdispatch::agent::cpu::CpuSampler,
    since: Option<std::time::Instant>,
}

impl ProjectSubscriber {
    pub fn spawn(
        broker: &str,
        filter: &str,
        receive_for: Duration,
        dir: &std::path::Path,
    ) -> std::io::Result<ProjectSubscriber> {
        let csv = dir.join("subscriber-seconds.csv");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_mqdispatch"))
            .args(["load", "--broker", broker, "--subscriber"])
            .arg(format!("name=s,count=1,topic={filter},qos=0"))
            .arg("--subscribe-for")
            .arg(format!("{}ms", receive_for.as_millis()))
            .arg("--subscribers-out")
            .arg(&csv)
            .stdout(std::process::Stdio::null())
            .spawn()?;
        let sampler = mqdispatch::agent::cpu::CpuSampler::new(
            mqdispatch::agent::cpu::CpuSource::Pid(child.id()),
            None,
        );
        Ok(ProjectSubscriber {
            child,
            csv,
            sampler,
            since: None,
        })
    }

    /// Starts the CPU measurement (call once it has subscribed, right before the load).
    pub fn measure_from(&mut self) {
        let _ = self.sampler.sample();
        self.since = Some(std::time::Instant::now());
    }

    /// Ends the CPU measurement, waits for the child to exit, and reads what it received.
    pub fn finish(mut self) -> std::io::Result<Received> {
        let pct = self
            .sampler
            .sample()
            .map_err(std::io::Error::other)?
            .ok_or_else(|| std::io::Error::other("no CPU sample of the subscriber"))?;
        let wall = self.since.map_or(Duration::ZERO, |s| s.elapsed());
        let status = self.child.wait()?;
        if !status.success() {
            return Err(std::io::Error::other(format!(
                "subscriber exited with {status}"
            )));
        }
        // `t_s,subscriber,broker,received,...`: the received column summed.
        let messages = std::fs::read_to_string(&self.csv)?
            .lines()
            .skip(1)
            .filter_map(|line| line.split(',').nth(3)?.parse::<u64>().ok())
            .sum();
        Ok(Received {
            messages,
            cpu: wall.mul_f64(pct / 100.0),
            latency: None,
        })
    }
}

impl Drop for ProjectSubscriber {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

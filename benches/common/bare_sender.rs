//! The floor under any per-message loader on this machine: one plain thread that sleeps to each
//! message's absolute deadline (`clock_nanosleep`) and `write`s a pre-encoded PUBLISH to a
//! blocking socket. No MQTT client, no async runtime, no per-message allocation. What this
//! thread's CPU shows is what the kernel charges a sender for one TCP segment per message: on
//! loopback that includes the receiving side's TCP processing and the wake-up of the broker,
//! which run in the sender's context.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mqdispatch::loadgen::Lateness;
use mqdispatch::loadgen::schedule::Schedule;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Publish;

/// What the floor sender did.
pub struct FloorRun {
    pub sent: u64,
    pub wall: Duration,
    /// CPU time of the sending thread alone (CLOCK_THREAD_CPUTIME_ID).
    pub cpu: Duration,
    pub lateness: Lateness,
}

/// Connects one MQTT v5 session per `(client_id, rate)` to `broker` and sends 600 B QoS 0
/// PUBLISHes at each rate for `secs`, each at `start + i/rate`, from one thread.
pub fn run(broker: &str, publishers: &[(String, f64)], secs: u64) -> std::io::Result<FloorRun> {
    let mut streams = Vec::new();
    for (client_id, _) in publishers {
        let mut stream = TcpStream::connect(broker)?;
        stream.set_nodelay(true)?;
        stream.write_all(&mqdispatch::proto::connect_packet(client_id))?;
        let mut connack = [0u8; 64];
        let n = stream.read(&mut connack)?;
        if n == 0 || connack[0] != 0x20 {
            return Err(std::io::Error::other("no CONNACK from the broker"));
        }
        streams.push(stream);
    }
    let packets: Vec<BytesMut> = publishers
        .iter()
        .map(|(client_id, _)| {
            let mut buf = BytesMut::new();
            Publish::new(
                format!("load/{client_id}"),
                QoS::AtMostOnce,
                vec![0u8; 600],
                None,
            )
            .write(&mut buf)
            .expect("a 600 B PUBLISH encodes");
            buf
        })
        .collect();
    std::thread::scope(|scope| {
        scope
            .spawn(|| send_all(&mut streams, &packets, publishers, secs))
            .join()
            .expect("floor sender thread")
    })
}

fn send_all(
    streams: &mut [TcpStream],
    packets: &[BytesMut],
    publishers: &[(String, f64)],
    secs: u64,
) -> std::io::Result<FloorRun> {
    let cpu0 = thread_cpu();
    let start = Instant::now() + Duration::from_millis(1);
    // The generator's own deadlines (`start + round(i × 1e9 / rate)` ns) and totals.
    let schedules: Vec<Schedule> = publishers
        .iter()
        .map(|(_, rate)| Schedule::new(*rate, Duration::from_secs(secs)))
        .collect();
    let total: Vec<u64> = schedules.iter().map(Schedule::total).collect();
    let deadline = |k: usize, i: u64| start + schedules[k].deadline(i);
    let mut next = vec![0u64; publishers.len()];
    let mut lateness = Lateness::default();
    let mut sent = 0;
    // Each time, the publisher whose next message is due first.
    while let Some((k, due)) = (0..publishers.len())
        .filter(|&k| next[k] < total[k])
        .map(|k| (k, deadline(k, next[k])))
        .min_by_key(|&(_, due)| due)
    {
        sleep_until(due);
        lateness.record(Instant::now().saturating_duration_since(due));
        streams[k].write_all(&packets[k])?;
        next[k] += 1;
        sent += 1;
    }
    Ok(FloorRun {
        sent,
        wall: start.elapsed(),
        cpu: thread_cpu() - cpu0,
        lateness,
    })
}

/// `clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME)` to `at` (std's clock is CLOCK_MONOTONIC).
fn sleep_until(at: Instant) {
    let Some(wait) = at.checked_duration_since(Instant::now()) else {
        return;
    };
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: both calls only read/write the timespecs given.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now);
        let mut target = libc::timespec {
            tv_sec: now.tv_sec + wait.as_secs() as libc::time_t,
            tv_nsec: now.tv_nsec + libc::c_long::from(wait.subsec_nanos() as i32),
        };
        if target.tv_nsec >= 1_000_000_000 {
            target.tv_sec += 1;
            target.tv_nsec -= 1_000_000_000;
        }
        while libc::clock_nanosleep(
            libc::CLOCK_MONOTONIC,
            libc::TIMER_ABSTIME,
            &target,
            std::ptr::null_mut(),
        ) == libc::EINTR
        {}
    }
}

pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes only the timespec given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

//! The send thread against real loopback sockets (counts and order, never timings).

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;

use std::sync::atomic::AtomicU16;

use super::*;
use crate::loadgen::frame::PublishFrame;
use crate::loadgen::lateness::Lateness;
use crate::loadgen::publisher::Seconds;
use crate::loadgen::schedule::{Pacer, Schedule};
use crate::loadgen::seconds::Clock;
use crate::loadgen::send_job::Window;
use crate::payload::{Header, template};

/// A connected pair on loopback: (the publisher's side, the broker's side).
fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    client.set_nonblocking(true).unwrap();
    let (server, _) = listener.accept().unwrap();
    (client, server)
}

fn job(client: &TcpStream, rate: f64, secs: f64, qos: QoS, payload: usize) -> Job {
    job_with_window(client, rate, secs, qos, payload, Arc::default())
}

/// A job whose PUBLISHes in flight (QoS 1, window 2) are counted in `inflight`.
fn job_with_window(
    client: &TcpStream,
    rate: f64,
    secs: f64,
    qos: QoS,
    payload: usize,
    inflight: Arc<AtomicU16>,
) -> Job {
    let (events, _) = tokio::sync::mpsc::unbounded_channel();
    let start = tokio::time::Instant::now();
    Job {
        socket: client.as_raw_fd(),
        frame: PublishFrame::new("load/t", qos, &template(payload)),
        pacer: Pacer::new(Schedule::new(rate, Duration::from_secs_f64(secs)), start),
        lateness: Lateness::default(),
        seconds: Seconds::new(Clock::start(), "t", "b1".into(), events),
        window: Window::new(qos != QoS::AtMostOnce, 2, inflight),
        stop_issuing_at: Instant::now() + Duration::from_secs(30),
    }
}

/// Reads PUBLISHes from `server` until `n` have arrived; returns their (seq, pkid).
fn read_publishes(server: &mut TcpStream, n: usize) -> Vec<(u64, u16)> {
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    while got.len() < n {
        let read = server.read(&mut chunk).unwrap();
        assert!(read > 0, "closed after {} PUBLISHes", got.len());
        buf.extend_from_slice(&chunk[..read]);
        while let Ok(packet) = Packet::read(&mut buf, None) {
            let Packet::Publish(p) = packet else {
                panic!("not a PUBLISH: {packet:?}")
            };
            got.push((Header::read(&p.payload).unwrap().seq, p.pkid));
        }
    }
    got
}

#[tokio::test]
async fn writes_every_message_in_order_and_hands_the_job_back() {
    let thread = SendThread::spawn().unwrap();
    let (client, mut server) = pair();
    let job = job(&client, 2000.0, 0.1, QoS::AtMostOnce, 600);
    let written = Arc::clone(&job.seconds.written);
    let mut ticket = thread.handle().start(job);
    let reader = std::thread::spawn(move || read_publishes(&mut server, 200));
    let back = ticket.handback().await;
    assert!(matches!(back.ended, Ended::Done), "{:?}", back.ended);
    assert!(back.unsent.is_empty());
    assert_eq!(back.pacer.sequence(), 200);
    assert_eq!(back.lateness.count(), 200);
    assert_eq!(written.load(Ordering::Relaxed), 200);
    let seqs: Vec<u64> = reader.join().unwrap().iter().map(|p| p.0).collect();
    assert_eq!(seqs, (0..200).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_stopped_job_comes_back_with_its_count() {
    let thread = SendThread::spawn().unwrap();
    let (client, mut server) = pair();
    let mut ticket = thread
        .handle()
        .start(job(&client, 100.0, 60.0, QoS::AtMostOnce, 64));
    let first = read_publishes(&mut server, 1);
    assert_eq!(first, vec![(0, 0)]);
    ticket.stop();
    let back = ticket.handback().await;
    assert!(matches!(back.ended, Ended::Stopped), "{:?}", back.ended);
    let issued = back.pacer.sequence();
    assert!((1..6000).contains(&issued), "{issued}");
    drop(client);
    drop(thread); // joins: nothing writes after the hand-back
    let mut rest = Vec::new();
    server.read_to_end(&mut rest).unwrap();
    let mut buf = BytesMut::from(&rest[..]);
    let mut more = 0;
    while Packet::read(&mut buf, None).is_ok() {
        more += 1;
    }
    assert_eq!(
        1 + more,
        issued,
        "every issued message was written, none after"
    );
}

#[tokio::test]
async fn qos1_waits_for_pubacks_beyond_its_window() {
    let thread = SendThread::spawn().unwrap();
    let (client, mut server) = pair();
    let inflight = Arc::new(AtomicU16::new(0));
    let job = job_with_window(
        &client,
        5000.0,
        0.01,
        QoS::AtLeastOnce,
        64,
        Arc::clone(&inflight),
    );
    let mut ticket = thread.handle().start(job);
    let first = read_publishes(&mut server, 2);
    assert_eq!(first, vec![(0, 1), (1, 2)]);
    // The window (2) is full: nothing more until a PUBACK is counted. Wait until the thread
    // has said it is waiting, then check that nothing else arrived.
    while !ticket.window_waiting.load(Ordering::Acquire) {
        tokio::task::yield_now().await;
    }
    server.set_nonblocking(true).unwrap();
    let mut probe = [0u8; 1];
    assert!(server.read(&mut probe).is_err(), "wrote beyond the window");
    server.set_nonblocking(false).unwrap();
    inflight.fetch_sub(2, Ordering::AcqRel);
    ticket.window_opened();
    let next = read_publishes(&mut server, 2);
    assert_eq!(next, vec![(2, 3), (3, 4)]);
    inflight.fetch_sub(2, Ordering::AcqRel);
    ticket.window_opened();
    ticket.stop();
    let back = ticket.handback().await;
    assert!(back.pacer.sequence() >= 4);
}

#[tokio::test]
async fn a_full_socket_does_not_hold_up_other_publishers_or_split_packets() {
    let thread = SendThread::spawn().unwrap();
    // `stalled`'s broker does not read: its 64 KiB PUBLISHes fill the socket.
    let (stalled_client, mut stalled_server) = pair();
    let (client, mut server) = pair();
    let mut stalled = thread.handle().start(job(
        &stalled_client,
        1000.0,
        0.5,
        QoS::AtMostOnce,
        64 * 1024,
    ));
    let mut steady = thread
        .handle()
        .start(job(&client, 1000.0, 0.3, QoS::AtMostOnce, 64));
    let reader = std::thread::spawn(move || read_publishes(&mut server, 300));
    let back = steady.handback().await;
    assert!(matches!(back.ended, Ended::Done));
    assert_eq!(back.pacer.sequence(), 300);
    // The stalled job cannot be done: its socket still holds the rest of a PUBLISH.
    assert!(
        stalled.handback.try_recv().is_err(),
        "the stalled socket never filled: the test did not test anything"
    );
    assert_eq!(reader.join().unwrap().len(), 300);
    // Now drain the stalled one: every PUBLISH whole and in order.
    let drain = std::thread::spawn(move || read_publishes(&mut stalled_server, 500));
    let back = stalled.handback().await;
    assert!(matches!(back.ended, Ended::Done), "{:?}", back.ended);
    assert!(back.unsent.is_empty());
    let seqs: Vec<u64> = drain.join().unwrap().iter().map(|p| p.0).collect();
    assert_eq!(seqs, (0..500).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_closed_connection_ends_the_job_with_the_write_error() {
    let thread = SendThread::spawn().unwrap();
    let (client, server) = pair();
    drop(server);
    let mut ticket = thread
        .handle()
        .start(job(&client, 1000.0, 10.0, QoS::AtMostOnce, 64));
    let back = ticket.handback().await;
    assert!(
        matches!(back.ended, Ended::WriteFailed(_)),
        "{:?}",
        back.ended
    );
}

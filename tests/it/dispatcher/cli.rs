//! The dispatcher as a child process: command line, stdout contract, signals, off-the-shelf tools.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use mqdispatch::proto::{self, RedirectReason};

use super::{B1, BOUND};
use crate::util::{self, ChildGuard};

#[test]
fn cli_server_moved_reports_port_events_and_clean_exit() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("decisions.csv");
    let mut child = Command::new(util::bin())
        .args([
            "dispatcher",
            "--listen",
            "127.0.0.1:0",
            "--broker",
            &format!("b1={B1}"),
            "--policy",
            "least-load",
            "--metric",
            "msg-rate",
            "--reason",
            "server-moved",
            "--report-listen",
            "127.0.0.1:0",
            "--events",
            events.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let second = lines.next().unwrap().unwrap();
    let guard = ChildGuard {
        child,
        addr: first.strip_prefix("listening on ").unwrap().to_owned(),
    };
    assert!(second.starts_with("reports on 127.0.0.1:"), "{second}");

    let rt = tokio::runtime::Runtime::new().unwrap();
    let r = rt
        .block_on(proto::request_redirect(&guard.addr, "cli-1", BOUND))
        .unwrap();
    assert_eq!(r.reason, RedirectReason::ServerMoved);
    assert_eq!(r.server_reference, B1);

    let mut guard = guard;
    let pid = guard.child.id() as i32;
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is our own unreaped child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let end = std::time::Instant::now() + BOUND;
    let status = loop {
        if let Some(s) = guard.child.try_wait().unwrap() {
            break s;
        }
        assert!(std::time::Instant::now() < end, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    let text = std::fs::read_to_string(&events).unwrap();
    let rows: Vec<&str> = text.lines().collect();
    assert_eq!(
        rows[0],
        "t_s,client_id,broker,load_b1,pred_b1,age_b1,source,role,group"
    );
    assert_eq!(rows.len(), 2, "{text}");
    // No report yet: load 0, nothing predicted, no sample to date (empty age).
    assert!(
        rows[1].ends_with(",cli-1,b1,0,0,,reports,publisher,"),
        "{}",
        rows[1]
    );
}

#[test]
fn cli_refuses_public_report_port_without_token() {
    let out = Command::new(util::bin())
        .args([
            "dispatcher",
            "--listen",
            "127.0.0.1:0",
            "--broker",
            &format!("b1={B1}"),
            "--policy",
            "least-cpu",
            "--report-listen",
            "0.0.0.0:0",
        ])
        .env_remove("MQDISPATCH_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a loopback address") && err.contains("--token"),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "nothing bound, nothing announced");
}

#[test]
fn mosquitto_sub_v5_sees_the_redirect() {
    let Ok(probe) = Command::new("mosquitto_sub").arg("--help").output() else {
        eprintln!("skipped: mosquitto_sub not installed (apt-get install mosquitto-clients)");
        return;
    };
    drop(probe);
    let d = util::spawn_listening(&[
        "dispatcher",
        "--listen",
        "127.0.0.1:0",
        "--broker",
        &format!("b1={B1}"),
        "--policy",
        "least-cpu",
    ]);
    let port = d.addr.rsplit_once(':').unwrap().1;
    let mut sub = Command::new("mosquitto_sub")
        .args([
            "-V",
            "mqttv5",
            "-h",
            "127.0.0.1",
            "-p",
            port,
            "-t",
            "t",
            "-d",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let end = std::time::Instant::now() + BOUND;
    while sub.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > end {
            let _ = sub.kill();
            let _ = sub.wait();
            panic!("mosquitto_sub did not exit after the redirect");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = sub.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // 156 = 0x9C Use another server.
    assert!(text.contains("received CONNACK (156)"), "{text}");
    assert!(text.contains("Use another server"), "{text}");
}

//! `mqdispatch clock serve` and `clock probe` as processes: the JSON line a script reads, and
//! the service stopping by itself after `--for` and on SIGTERM.

use std::process::Command;
use std::time::{Duration, Instant};

use mqdispatch::clock::Estimate;

use crate::util::{bin, spawn_listening};

/// Waits (bounded) for the child to exit by itself; its exit status.
fn exit_within(child: &mut std::process::Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "still running after {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn probe_prints_a_zero_offset_for_a_server_on_this_host() {
    let mut server =
        spawn_listening(&["clock", "serve", "--listen", "127.0.0.1:0", "--for", "60s"]);
    let out = Command::new(bin())
        .args(["clock", "probe", &server.addr, "--samples", "20"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let e: Estimate = serde_json::from_str(stdout.trim()).unwrap();
    assert!(e.offset_us.abs() <= e.uncertainty_us + 2, "{e:?}");
    // SIGTERM ends the service cleanly.
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(
        unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) },
        0
    );
    assert!(exit_within(&mut server.child, Duration::from_secs(10)).success());
}

#[test]
fn serve_stops_after_for_and_probe_names_a_dead_address() {
    let mut server = spawn_listening(&[
        "clock",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--for",
        "300ms",
    ]);
    assert!(exit_within(&mut server.child, Duration::from_secs(10)).success());
    let out = Command::new(bin())
        .args(["clock", "probe", &server.addr])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot connect to clock service"),
        "{stderr}"
    );
}

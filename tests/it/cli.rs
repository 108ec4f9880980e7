//! What every role shares on the command line: a clean stop on SIGINT, SIGTERM or SIGHUP, and
//! logs in plain text (no ANSI colour codes) when stderr is not a terminal.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::util::{self, ChildGuard};

const BOUND: Duration = Duration::from_secs(10);

/// A dispatcher with stderr piped (not a terminal) and info logs, stopped by `signal` once it
/// has announced its address: its exit status and everything it wrote to stderr.
fn dispatcher_stopped_by(signal: i32) -> (ExitStatus, String) {
    let child = Command::new(util::bin())
        .args([
            "dispatcher",
            "--listen",
            "127.0.0.1:0",
            "--broker",
            "b1=127.0.0.1:1",
            "--policy",
            "round-robin",
        ])
        .env("RUST_LOG", "info")
        // Colour must be off because stderr is a pipe, not because the environment says so.
        .env_remove("NO_COLOR")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mqdispatch dispatcher");
    let mut guard = ChildGuard {
        child,
        addr: String::new(),
    };
    let mut stderr = guard.child.stderr.take().expect("piped stderr");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let mut first = String::new();
    BufReader::new(guard.child.stdout.take().expect("piped stdout"))
        .read_line(&mut first)
        .expect("read the first stdout line");
    assert!(first.starts_with("listening on "), "{first:?}");

    let pid = guard.child.id() as i32;
    // SAFETY: kill(2) on our own child, not yet reaped.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    let end = Instant::now() + BOUND;
    let status = loop {
        if let Some(status) = guard.child.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            Instant::now() < end,
            "no exit within {BOUND:?} of signal {signal}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, reader.join().expect("stderr reader"))
}

#[test]
fn dispatcher_stops_cleanly_on_each_stop_signal_and_logs_plain_text() {
    for (signal, name) in [
        (libc::SIGTERM, "SIGTERM"),
        (libc::SIGHUP, "SIGHUP"),
        (libc::SIGINT, "SIGINT"),
    ] {
        let (status, stderr) = dispatcher_stopped_by(signal);
        assert!(status.success(), "{name}: {status}; stderr:\n{stderr}");
        assert!(
            stderr.contains("shutting down") && stderr.contains(name),
            "{name}: stderr:\n{stderr}"
        );
        assert!(
            !stderr.contains('\x1b'),
            "ANSI escape codes in piped stderr:\n{stderr:?}"
        );
    }
}

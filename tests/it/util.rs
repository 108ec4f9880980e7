//! Shared helpers for the integration tests: the built binary, and roles started as children
//! that print `listening on ADDR` first and are killed when the guard drops.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// The `mqdispatch` binary cargo built for these tests.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_mqdispatch")
}

/// A child process killed and reaped when dropped, so a failing assertion leaves no orphan.
pub struct ChildGuard {
    pub child: Child,
    /// The address from the child's first stdout line (`listening on ADDR`).
    pub addr: String,
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `mqdispatch ARGS...` and waits for its `listening on ADDR` line.
pub fn spawn_listening(args: &[&str]) -> ChildGuard {
    let mut command = Command::new(bin());
    if std::env::var_os("RUST_LOG").is_none() {
        command.env("RUST_LOG", mqdispatch::broker::QUIET_BROKER_LOG);
    }
    let mut child = command
        .args(args)
        .env("MQDISPATCH_BIN", bin())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn mqdispatch");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut reader = BufReader::new(stdout);
    let mut first = String::new();
    reader
        .read_line(&mut first)
        .expect("read first stdout line");
    // Keep draining stdout so a child that prints more never dies of a closed pipe.
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    let addr = first
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("first line was {first:?}, expected `listening on ADDR`"))
        .to_owned();
    ChildGuard { child, addr }
}

/// A load report of `cpu` percent for `broker`, stamped now, without the optional fields.
pub fn cpu_report(broker: &str, cpu: f64) -> mqdispatch::load_report::LoadReport {
    mqdispatch::load_report::LoadReport {
        broker: broker.into(),
        t_ms: mqdispatch::now_ms(),
        cpu_pct: cpu,
        msgs_in_per_s: None,
        connections: None,
        token: None,
    }
}

/// A child started by [`spawn_first_line`]: its first stdout line, killed and reaped on drop.
pub struct FirstLine {
    pub child: Child,
    pub line: String,
}

impl FirstLine {
    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for FirstLine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `mqdispatch ARGS...` and returns its first stdout line (the rest is drained).
pub fn spawn_first_line(args: &[&str]) -> FirstLine {
    let mut child = Command::new(bin())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn mqdispatch");
    let mut reader = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut line = String::new();
    reader.read_line(&mut line).expect("read first stdout line");
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    FirstLine {
        child,
        line: line.trim().to_owned(),
    }
}

/// The command `mqdispatch run SCENARIO --out OUT [EXTRA...]`, logging warnings only.
pub fn run_command(scenario: &std::path::Path, out: &std::path::Path, extra: &[&str]) -> Command {
    let mut command = Command::new(bin());
    command
        .arg("run")
        .arg(scenario)
        .arg("--out")
        .arg(out)
        .args(extra)
        .env("RUST_LOG", "warn");
    command
}

/// `mqdispatch run SCENARIO --out OUT [EXTRA...]`, which must succeed.
pub fn run_scenario(scenario: &std::path::Path, out: &std::path::Path, extra: &[&str]) {
    let status = run_command(scenario, out, extra).status().unwrap();
    assert!(status.success(), "mqdispatch run failed: {status}");
}

//! Roles on other hosts: the life line that stops a role when its ssh session ends (tested here
//! without ssh: the session's stdin is a pipe this test holds).

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::AsyncBufReadExt;
use tokio::process::Command;

use mqdispatch::testbed::net::is_running;

use crate::util::bin;

/// Starts `mqdispatch lifeline -- sh -c 'echo $$; exec sleep 600'` and returns it with the
/// role's pid (printed by the role itself).
async fn lifeline_with_sleep() -> (tokio::process::Child, u32) {
    let mut child = Command::new(bin())
        .args(["lifeline", "--", "sh", "-c", "echo $$; exec sleep 600"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("lifeline starts");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let pid: u32 = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("the role prints its pid")
        .unwrap()
        .expect("a line")
        .trim()
        .parse()
        .expect("a pid");
    assert!(is_running(pid));
    (child, pid)
}

async fn gone_within(pid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while is_running(pid) {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

#[tokio::test]
async fn closing_the_life_line_stops_the_role() {
    let (mut lifeline, role) = lifeline_with_sleep().await;
    drop(lifeline.stdin.take());
    let status = tokio::time::timeout(Duration::from_secs(10), lifeline.wait())
        .await
        .expect("the lifeline exits")
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(
        gone_within(role, Duration::from_secs(5)).await,
        "role {role} outlived its life line"
    );
}

#[tokio::test]
async fn sigterm_to_the_lifeline_stops_the_role() {
    let (mut lifeline, role) = lifeline_with_sleep().await;
    let pid = lifeline.id().unwrap() as libc::pid_t;
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    tokio::time::timeout(Duration::from_secs(10), lifeline.wait())
        .await
        .expect("the lifeline exits")
        .unwrap();
    assert!(
        gone_within(role, Duration::from_secs(5)).await,
        "role {role} outlived its life line"
    );
}

#[tokio::test]
async fn a_role_that_fails_fails_the_lifeline() {
    let mut lifeline = Command::new(bin())
        .args(["lifeline", "--", "sh", "-c", "exit 3"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Held open (wait() would close it): the role's own exit must be what ends the lifeline.
    let _life_line = lifeline.stdin.take();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = lifeline.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the lifeline outlived its role");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!status.success(), "{status}");
}

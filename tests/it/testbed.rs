//! The test bed: hosts as network namespaces with their own sshd, reached with
//! `ssh -F DIR/ssh_config hK`, capped in a cgroup, and gone without a trace after `down`.
//! Where namespaces are not permitted (not root) the tests skip with a message, except under
//! `CI=1`, which must run them.

use std::path::{Path, PathBuf};
use std::process::Command;

use mqdispatch::testbed::{self, Options, Testbed, TestbedError, cgroup, net};

use crate::util;

/// A prefix and a /24 of this test run's own, so parallel tests, other runs and a user's bed
/// never collide (`up` refuses a subnet in use rather than sharing it).
pub(crate) fn options(tag: u8, hosts: u16, tmp: &Path) -> Options {
    let pid = std::process::id();
    let mut o = Options::new(hosts);
    o.prefix = format!("mqt{:04x}{}", pid & 0xffff, tag as char);
    o.subnet = format!("198.19.{}.0/24", (pid % 200) as u8 + (tag - b'a'))
        .parse()
        .unwrap();
    o.dir = tmp.join("bed");
    o
}

/// True (after a message) when the test bed cannot be built on this machine; fails under CI.
fn unsupported(test: &str, e: &TestbedError) -> bool {
    matches!(
        e,
        TestbedError::NotPermitted(_) | TestbedError::Missing { .. }
    ) && skip(test, &e.to_string())
}

fn skip(test: &str, why: &str) -> bool {
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: CI must run the test bed tests (as root, with openssh-server): {why}"
    );
    eprintln!("SKIPPED {test}: {why}");
    true
}

fn stdout_of(mut cmd: Command) -> String {
    let out = cmd.output().expect("run ssh");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Live processes whose command line mentions `needle` (an sshd names its config in DIR).
fn processes_mentioning(needle: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(needle))
        .collect()
}

pub(crate) fn assert_nothing_left(prefix: &str, dir: &Path) {
    let ours = |n: &String| testbed::is_ours(prefix, n);
    let namespaces: Vec<_> = net::netns_list()
        .unwrap()
        .into_iter()
        .filter(ours)
        .collect();
    assert!(namespaces.is_empty(), "namespaces left: {namespaces:?}");
    let links: Vec<_> = net::link_list().unwrap().into_iter().filter(ours).collect();
    assert!(links.is_empty(), "links left: {links:?}");
    let groups = cgroup::existing(|n| testbed::is_ours(prefix, n)).unwrap_or_default();
    assert!(groups.is_empty(), "cgroups left: {groups:?}");
    let needle = dir.display().to_string();
    let procs = processes_mentioning(&needle);
    assert!(procs.is_empty(), "processes left: {procs:?}");
    assert!(!dir.exists(), "{} left", dir.display());
}

#[test]
fn two_hosts_run_commands_reach_each_other_and_leave_nothing_after_down() {
    let test = "two_hosts_run_commands_reach_each_other_and_leave_nothing_after_down";
    let tmp = tempfile::tempdir().unwrap();
    let mut opts = options(b'a', 2, tmp.path());
    opts.cpu_limit = Some(0.5);
    let bed = match Testbed::up(&opts) {
        Ok(bed) => bed.into_guard(),
        Err(e) if unsupported(test, &e) => return,
        Err(e) => panic!("{e}"),
    };
    let hosts = bed.hosts().to_vec();
    assert_eq!(hosts.len(), 2);

    // Each host is its own namespace (its address only), capped in its own group.
    for (h, other) in [(&hosts[0], &hosts[1]), (&hosts[1], &hosts[0])] {
        let out = stdout_of(h.ssh("ip -o -4 addr show; cat /proc/self/cgroup"));
        assert!(out.contains(&format!(" inet {}/24 ", h.address)), "{out}");
        assert!(!out.contains(&format!(" inet {}/", other.address)), "{out}");
        let group = h.cgroup.as_deref().expect("capped");
        assert!(cgroup::cgroup_file_names(&out, group), "{out}");
    }

    // Hosts reach each other, and the runner's side, over the bridge.
    for (from, to) in [(&hosts[0], &hosts[1]), (&hosts[1], &hosts[0])] {
        let probe = format!(
            "timeout 5 bash -c '</dev/tcp/{}/22' && echo open",
            to.address
        );
        assert_eq!(stdout_of(from.ssh(&probe)).trim(), "open");
    }

    // A process started over ssh and left running.
    let pid: u32 = stdout_of(hosts[0].ssh("nohup sleep 600 </dev/null >/dev/null 2>&1 & echo $!"))
        .trim()
        .parse()
        .unwrap();
    assert!(net::is_running(pid));

    // The files a scenario and the runner read.
    let yaml = std::fs::read_to_string(bed.hosts_yaml()).unwrap();
    for h in &hosts {
        assert!(
            yaml.contains(&format!("{}: {{ ssh: root@{}", h.name, h.address)),
            "{yaml}"
        );
        assert!(h.rtt_min_us.is_some_and(|r| r > 0.0), "{h:?}");
    }
    assert_eq!(
        Testbed::open(bed.dir()).unwrap().hosts(),
        hosts.as_slice(),
        "testbed.json holds the hosts"
    );

    // A second bed with the same prefix is refused and does not harm the first.
    match Testbed::up(&opts) {
        Err(TestbedError::Exists { .. }) => {}
        other => panic!("expected Exists, got {other:?}"),
    }
    stdout_of(hosts[1].ssh("true"));

    let (dir, prefix) = (bed.dir().to_owned(), opts.prefix.clone());
    bed.down().unwrap();
    assert_nothing_left(&prefix, &dir);
    assert!(!net::is_running(pid), "sleep {pid} survived down");
    // Idempotent.
    testbed::down(&dir, &prefix).unwrap();
}

#[test]
fn a_failing_up_undoes_what_it_made() {
    let test = "a_failing_up_undoes_what_it_made";
    let tmp = tempfile::tempdir().unwrap();
    let mut opts = options(b'b', 2, tmp.path());
    opts.cpu_limit = Some(0.5);
    // An "sshd" that exits at once: the bridge, namespaces and cgroups exist by then.
    opts.sshd = Some(PathBuf::from("/bin/false"));
    match Testbed::up(&opts) {
        Err(e) if unsupported(test, &e) => return,
        Err(e) => assert!(
            matches!(e, TestbedError::Sshd { .. }) && e.to_string().contains("did not start"),
            "{e}"
        ),
        Ok(bed) => {
            bed.down().unwrap();
            panic!("up with /bin/false as sshd succeeded");
        }
    }
    assert_nothing_left(&opts.prefix, &opts.dir);
}

/// Runs `down` for a prefix on drop, so a failing assertion leaves nothing either.
struct DownGuard<'a>(&'a Options);

impl Drop for DownGuard<'_> {
    fn drop(&mut self) {
        let _ = testbed::down(&self.0.dir, &self.0.prefix);
    }
}

#[test]
fn down_removes_a_half_made_bed_without_its_state_file() {
    let test = "down_removes_a_half_made_bed_without_its_state_file";
    let tmp = tempfile::tempdir().unwrap();
    let opts = options(b'c', 1, tmp.path());
    let _guard = DownGuard(&opts);
    let (bridge, ns) = (format!("{}0", opts.prefix), format!("{}-h1", opts.prefix));
    // What an `up` killed half-way leaves: a bridge, a namespace with a process, a cgroup.
    match net::add_bridge(&bridge, opts.subnet.local()) {
        Err(e) if unsupported(test, &e) => return,
        other => other.unwrap(),
    }
    net::add_host(&ns, &bridge, opts.subnet.host(1)).unwrap();
    cgroup::create(&ns, 0.5).unwrap().keep();
    let out = Command::new("ip")
        .args(["netns", "exec", &ns, "sh", "-c"])
        .arg("sleep 600 </dev/null >/dev/null 2>&1 & echo $!")
        .output()
        .unwrap();
    let pid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(net::is_running(pid));
    assert!(!opts.dir.exists());

    testbed::down(&opts.dir, &opts.prefix).unwrap();
    assert_nothing_left(&opts.prefix, &opts.dir);
    assert!(!net::is_running(pid), "sleep {pid} survived down");
}

#[test]
fn the_command_line_brings_a_host_up_and_down() {
    let test = "the_command_line_brings_a_host_up_and_down";
    let tmp = tempfile::tempdir().unwrap();
    let opts = options(b'd', 1, tmp.path());
    let _guard = DownGuard(&opts);
    let dir = opts.dir.display().to_string();
    let subnet = opts.subnet.to_string();
    let bed_args = ["--dir", &dir, "--prefix", &opts.prefix];
    let up = Command::new(util::bin())
        .args(["testbed", "up", "--hosts", "1", "--subnet", &subnet])
        .args(bed_args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&up.stderr);
    if !up.status.success() {
        if stderr.contains("not permitted here") || stderr.contains("not found: apt-get") {
            skip(test, &stderr);
            return;
        }
        panic!("testbed up: {stderr}");
    }
    let address = opts.subnet.host(1);
    let stdout = String::from_utf8_lossy(&up.stdout);
    assert!(
        stdout.contains(&format!("h1 {address} rtt_min_us ")),
        "{stdout}"
    );

    let mut ssh = Command::new("ssh");
    ssh.args([
        "-F",
        &format!("{dir}/ssh_config"),
        "h1",
        "ip -o -4 addr show eth0",
    ]);
    assert!(stdout_of(ssh).contains(&format!(" inet {address}/24 ")));

    let down = Command::new(util::bin())
        .args(["testbed", "down"])
        .args(bed_args)
        .output()
        .unwrap();
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert_nothing_left(&opts.prefix, &opts.dir);

    // Bad flags are input errors (exit 2) that name the flag, and nothing is made.
    let bad = Command::new(util::bin())
        .args(["testbed", "up", "--hosts", "0"])
        .args(bed_args)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--hosts 0 is not 1-240"));
    assert!(!opts.dir.exists());
}

/// [`Testbed::up`] (it blocks) off the async runtime, as a guard that takes the bed down when
/// dropped; `None` (after a message) where a bed cannot be built here.
pub(crate) async fn up_off_runtime(test: &str, opts: &Options) -> Option<testbed::DownOnDrop> {
    let up = tokio::task::spawn_blocking({
        let opts = opts.clone();
        move || Testbed::up(&opts)
    });
    match up.await.unwrap() {
        Ok(bed) => Some(bed.into_guard()),
        Err(e) if unsupported(test, &e) => None,
        Err(e) => panic!("{e}"),
    }
}

/// `down` off the async runtime, then nothing of the bed may be left.
pub(crate) async fn down_off_runtime(bed: testbed::DownOnDrop, opts: &Options) {
    tokio::task::spawn_blocking(move || bed.down())
        .await
        .unwrap()
        .unwrap();
    assert_nothing_left(&opts.prefix, &opts.dir);
}

/// What the runner does with a bed: a multiplexed ssh connection ([`mqdispatch::remote`]) to a
/// host, commands over it running in the host's namespace and cgroup.
#[tokio::test]
async fn remote_connections_reach_a_host_through_its_ssh_target() {
    let test = "remote_connections_reach_a_host_through_its_ssh_target";
    let tmp = tempfile::tempdir().unwrap();
    let mut opts = options(b'e', 1, tmp.path());
    opts.cpu_limit = Some(0.5);
    let Some(bed) = up_off_runtime(test, &opts).await else {
        return;
    };
    let host = bed.hosts()[0].clone();
    let control = tempfile::tempdir().unwrap();
    let connection = mqdispatch::remote::Connection::open(host.ssh_target(), control.path())
        .await
        .unwrap();
    let out = connection
        .run(
            "ip -o -4 addr show eth0; cat /proc/self/cgroup",
            std::time::Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert!(
        out.contains(&format!(" inet {}/24 ", host.address)),
        "{out}"
    );
    assert!(
        cgroup::cgroup_file_names(&out, host.cgroup.as_deref().unwrap()),
        "{out}"
    );
    drop(connection);
    down_off_runtime(bed, &opts).await;
}

/// Live pids in a namespace whose command line mentions `needle` (zombies count as gone: this
/// machine's pid 1 may not reap orphans).
pub(crate) fn pids_in_namespace_mentioning(netns: &str, needle: &str) -> Vec<u32> {
    net::netns_pids(netns)
        .expect("ip netns pids")
        .into_iter()
        .filter(|&pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            net::is_running(pid)
                && String::from_utf8_lossy(&cmdline)
                    .replace('\0', " ")
                    .contains(needle)
        })
        .collect()
}

pub(crate) async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "not within 10 s: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The runner's building blocks on a bed host: this build's binary put there once, a role run
/// in the host's namespace under its lifeline, its files brought back, and the role gone when
/// it is stopped or when the connection it hangs on drops.
#[tokio::test]
async fn roles_over_ssh_run_in_the_host_and_never_outlive_their_session() {
    use mqdispatch::remote::binary::{Placed, ensure_binary};
    use mqdispatch::remote::{Connection, RemoteRole, files::fetch_dir};

    let test = "roles_over_ssh_run_in_the_host_and_never_outlive_their_session";
    let tmp = tempfile::tempdir().unwrap();
    let opts = options(b'f', 1, tmp.path());
    let Some(bed) = up_off_runtime(test, &opts).await else {
        return;
    };
    let host = bed.hosts()[0].clone();
    let control = tempfile::tempdir().unwrap();
    let conn = Connection::open(host.ssh_target(), control.path())
        .await
        .unwrap();

    // The namespace shares this machine's file system: keep the copy out of the real home.
    let home = tmp.path().join("home");
    let cache = home.join("cache").display().to_string();
    let binary = std::path::Path::new(util::bin());
    let (path, placed) = ensure_binary(&conn, binary, &cache).await.unwrap();
    assert_eq!(placed, Placed::Copied);
    let (again, placed) = ensure_binary(&conn, binary, &cache).await.unwrap();
    assert_eq!(
        (again.as_str(), placed),
        (path.as_str(), Placed::AlreadyThere)
    );

    // A role that writes a file and stays: stopped cleanly, its file brought back.
    let workdir = home.join("role").display().to_string();
    let log = tmp.path().join("role.log");
    let marker = format!("mqd-role-{}", std::process::id());
    let role = RemoteRole::start(
        &conn,
        "writer",
        &path,
        &[
            "sh".into(),
            "-c".into(),
            format!("echo written > out.txt; sleep 600; : {marker}"),
        ],
        &workdir,
        &log,
    )
    .unwrap();
    until("the role runs in the host's namespace", || {
        !pids_in_namespace_mentioning(&host.netns, &marker).is_empty()
    })
    .await;
    let local = tmp.path().join("fetched");
    until("the role wrote its file", || {
        std::path::Path::new(&workdir).join("out.txt").exists()
    })
    .await;
    fetch_dir(&conn, &workdir, &local).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(local.join("out.txt")).unwrap(),
        "written\n"
    );
    role.stop().await;
    until("a stopped role is gone", || {
        pids_in_namespace_mentioning(&host.netns, &marker).is_empty()
    })
    .await;

    // A role whose connection drops (the master killed, as when the runner dies) is gone too.
    let dropped = format!("{marker}-dropped");
    let role = RemoteRole::start(
        &conn,
        "sleeper",
        &path,
        &["sh".into(), "-c".into(), format!("sleep 600; : {dropped}")],
        &workdir,
        &tmp.path().join("sleeper.log"),
    )
    .unwrap();
    until("the second role runs", || {
        !pids_in_namespace_mentioning(&host.netns, &dropped).is_empty()
    })
    .await;
    drop(conn);
    until("a role whose connection dropped is gone", || {
        pids_in_namespace_mentioning(&host.netns, &dropped).is_empty()
    })
    .await;
    assert!(role.has_ended());
    drop(role);

    down_off_runtime(bed, &opts).await;
}

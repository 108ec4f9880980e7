//! The test bed's network: a bridge in the root namespace, one network namespace per host with
//! a veth to the bridge, addresses from one /24 of 198.18.0.0/15 (RFC 2544's benchmark range,
//! routed nowhere). Everything goes through the `ip` tool; names are `<prefix>0` (bridge) and
//! `<prefix>-h<k>` (namespace and the root side of its veth).

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::Command;
use std::str::FromStr;
use std::time::{Duration, Instant};

use super::TestbedError;

/// One /24 inside 198.18.0.0/15: `.1` is the runner's side (`local`), host k is `.(10 + k)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    base: [u8; 3],
}

/// Most hosts one /24 holds with host k at `.(10 + k)`.
pub const MAX_HOSTS: u16 = 240;

impl Subnet {
    pub fn local(&self) -> Ipv4Addr {
        self.addr(1)
    }

    /// Host k (from 1).
    pub fn host(&self, k: u16) -> Ipv4Addr {
        self.addr(10 + k as u8)
    }

    fn addr(&self, last: u8) -> Ipv4Addr {
        let [a, b, c] = self.base;
        Ipv4Addr::new(a, b, c, last)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        ip.octets()[..3] == self.base
    }
}

impl Default for Subnet {
    fn default() -> Self {
        Subnet { base: [198, 18, 0] }
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/24", self.addr(0))
    }
}

impl FromStr for Subnet {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("`{text}` is not a /24 inside 198.18.0.0/15, e.g. 198.18.0.0/24");
        let (ip, len) = text.split_once('/').ok_or_else(bad)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let [a, b, c, d] = ip.octets();
        if len != "24" || d != 0 || a != 198 || !(18..=19).contains(&b) {
            return Err(bad());
        }
        Ok(Subnet { base: [a, b, c] })
    }
}

/// Runs `ip ARGS`, returning its stdout; a refusal for lack of privilege becomes
/// [`TestbedError::NotPermitted`].
pub fn ip(args: &[&str]) -> Result<String, TestbedError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => TestbedError::Missing {
                tool: "ip",
                package: "iproute2",
            },
            _ => TestbedError::command(&format!("ip {}", args.join(" ")), &e.to_string()),
        })?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    let cmd = format!("ip {}", args.join(" "));
    if stderr.contains("Operation not permitted") || stderr.contains("Permission denied") {
        return Err(TestbedError::NotPermitted(format!("`{cmd}`: {stderr}")));
    }
    Err(TestbedError::command(&cmd, &stderr))
}

/// Namespace names of `ip netns list` output (`NAME` or `NAME (id: N)` per line).
pub fn parse_netns_list(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Link names of `ip -o link show` output (`3: NAME@PEER: <FLAGS> ...` per line).
pub fn parse_link_list(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_owned())
        .collect()
}

/// Interface names with an IPv4 address in `subnet`, from `ip -o -4 addr show` output
/// (`4: eth0    inet 10.0.0.2/24 brd ...`).
pub fn parse_addr_owners(text: &str, subnet: &Subnet) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace().skip(1);
            let name = words.next()?;
            let addr = words.skip_while(|w| *w != "inet").nth(1)?;
            let ip: Ipv4Addr = addr.split('/').next()?.parse().ok()?;
            subnet.contains(ip).then(|| name.to_owned())
        })
        .collect()
}

pub fn netns_list() -> Result<Vec<String>, TestbedError> {
    ip(&["netns", "list"]).map(|t| parse_netns_list(&t))
}

pub fn link_list() -> Result<Vec<String>, TestbedError> {
    ip(&["-o", "link", "show"]).map(|t| parse_link_list(&t))
}

/// Interfaces of the root namespace that already hold an address in `subnet`.
pub fn subnet_users(subnet: &Subnet) -> Result<Vec<String>, TestbedError> {
    ip(&["-o", "-4", "addr", "show"]).map(|t| parse_addr_owners(&t, subnet))
}

/// The bridge, with the runner's address, up.
pub fn add_bridge(name: &str, local: Ipv4Addr) -> Result<(), TestbedError> {
    ip(&["link", "add", name, "type", "bridge"])?;
    ip(&["addr", "add", &format!("{local}/24"), "dev", name])?;
    ip(&["link", "set", name, "up"])?;
    Ok(())
}

/// Namespace `netns` with loopback up and `eth0` (address `addr`) on a veth to `bridge`; the
/// root side of the veth is named like the namespace.
pub fn add_host(netns: &str, bridge: &str, addr: Ipv4Addr) -> Result<(), TestbedError> {
    ip(&["netns", "add", netns])?;
    ip(&[
        "link", "add", netns, "type", "veth", "peer", "name", "eth0", "netns", netns,
    ])?;
    ip(&["link", "set", netns, "master", bridge])?;
    ip(&["link", "set", netns, "up"])?;
    ip(&[
        "-n",
        netns,
        "addr",
        "add",
        &format!("{addr}/24"),
        "dev",
        "eth0",
    ])?;
    ip(&["-n", netns, "link", "set", "eth0", "up"])?;
    ip(&["-n", netns, "link", "set", "lo", "up"])?;
    Ok(())
}

/// Deletes a link (a veth's peer goes with it); one already gone is fine.
pub fn delete_link(name: &str) -> Result<(), TestbedError> {
    match ip(&["link", "delete", name]) {
        Err(TestbedError::Command { detail, .. }) if detail.contains("Cannot find device") => {
            Ok(())
        }
        other => other.map(|_| ()),
    }
}

/// Processes whose network namespace is `netns`.
pub fn netns_pids(netns: &str) -> Result<Vec<u32>, TestbedError> {
    Ok(ip(&["netns", "pids", netns])?
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

/// How long processes get to exit after SIGTERM, then after SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(2);
const KILL_WAIT: Duration = Duration::from_secs(3);

/// Stops every process in `netns` and in `extra` (SIGTERM, then SIGKILL), waiting until none
/// is left. Processes forked meanwhile are caught by the next round.
pub fn kill_all(netns: Option<&str>, extra: impl Fn() -> Vec<u32>) -> Result<(), TestbedError> {
    let live = || -> Result<Vec<u32>, TestbedError> {
        let mut pids = match netns {
            Some(ns) => netns_pids(ns)?,
            None => Vec::new(),
        };
        pids.extend(extra().into_iter().filter(|p| is_running(*p)));
        Ok(pids)
    };
    for (signal, wait) in [(libc::SIGTERM, TERM_GRACE), (libc::SIGKILL, KILL_WAIT)] {
        let deadline = Instant::now() + wait;
        loop {
            let pids = live()?;
            if pids.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                break;
            }
            for pid in pids {
                // SAFETY: kill(2) with a pid read from the kernel just now; no memory involved.
                unsafe { libc::kill(pid as libc::pid_t, signal) };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let left = live()?;
    Err(TestbedError::command(
        &format!("kill {left:?}"),
        &format!(
            "processes of {} survive SIGKILL",
            netns.unwrap_or("the test bed")
        ),
    ))
}

/// True for a process that exists and is not a zombie (one nobody reaped is already dead).
pub fn is_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(|st| st != "Z"))
        })
        .unwrap_or(false)
}

/// TCP connect times to `addr`: `(min, median)` in microseconds over `samples` connects. A
/// connect returns when the SYN-ACK arrives, so each is one round trip plus the stack's work.
pub fn connect_rtt(addr: SocketAddr, samples: usize) -> std::io::Result<(f64, f64)> {
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples.max(1) {
        let start = Instant::now();
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        times.push(start.elapsed().as_secs_f64() * 1e6);
        drop(stream);
    }
    times.sort_by(f64::total_cmp);
    Ok((times[0], times[times.len() / 2]))
}

/// Polls until something accepts TCP connections on `addr`, or `timeout` passes.
pub fn wait_listening(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_inside_the_benchmark_range_only() {
        let s: Subnet = "198.19.7.0/24".parse().unwrap();
        assert_eq!(s.local(), Ipv4Addr::new(198, 19, 7, 1));
        assert_eq!(s.host(2), Ipv4Addr::new(198, 19, 7, 12));
        assert_eq!(s.to_string(), "198.19.7.0/24");
        assert_eq!(Subnet::default().to_string(), "198.18.0.0/24");
        for bad in [
            "10.0.0.0/24",
            "198.20.0.0/24",
            "198.18.0.0/16",
            "198.18.0.5/24",
            "198.18.0.0",
        ] {
            let e = bad.parse::<Subnet>().unwrap_err();
            assert!(e.contains(bad) && e.contains("198.18.0.0/15"), "{e}");
        }
    }

    #[test]
    fn ip_outputs_parse() {
        assert_eq!(
            parse_netns_list("mqdtb-h2 (id: 1)\nmqdtb-h1 (id: 0)\nother\n"),
            ["mqdtb-h2", "mqdtb-h1", "other"]
        );
        let links = "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue\n\
                     7: mqdtb-h1@if6: <BROADCAST,MULTICAST,UP> mtu 1500 master mqdtb0\n\
                     5: mqdtb0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500\n";
        assert_eq!(parse_link_list(links), ["lo", "mqdtb-h1", "mqdtb0"]);
        let addrs = "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever\n\
                     5: mqdtb0    inet 198.18.0.1/24 scope global mqdtb0\\       valid_lft\n\
                     4: eth0    inet 172.16.0.2/24 brd 172.16.0.255 scope global eth0\n";
        assert_eq!(parse_addr_owners(addrs, &Subnet::default()), ["mqdtb0"]);
        assert!(parse_addr_owners(addrs, &"198.18.1.0/24".parse().unwrap()).is_empty());
    }

    #[test]
    fn a_zombie_or_missing_process_is_not_running() {
        assert!(is_running(std::process::id()));
        assert!(!is_running(u32::MAX));
    }
}

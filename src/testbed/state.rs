//! What `up` made, in DIR: `testbed.json` (hosts, addresses, caps, measured round trips; what
//! `down` and the runner read back) and `hosts.yaml` (the `hosts:` block a scenario includes).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use super::TestbedError;

pub const STATE_FILE: &str = "testbed.json";
pub const HOSTS_FILE: &str = "hosts.yaml";

/// One host of the bed: a network namespace with its own sshd.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Host {
    /// Short name used in scenarios and `ssh -F DIR/ssh_config NAME`: `h1`, `h2`, ...
    pub name: String,
    /// Network namespace (also the root side of its veth, and its cgroup's name).
    pub netns: String,
    pub address: Ipv4Addr,
    pub ssh_port: u16,
    pub user: String,
    /// Private key that logs in (the same throwaway key for every host).
    pub identity: PathBuf,
    pub known_hosts: PathBuf,
    pub ssh_config: PathBuf,
    /// CPU cgroup of the host's sshd and everything started over ssh, when capped.
    pub cgroup: Option<String>,
    pub cpu_limit_cores: Option<f64>,
    pub sshd_pid: Option<u32>,
    /// TCP connect time from the root namespace to the host's sshd, minimum and median.
    pub rtt_min_us: Option<f64>,
    pub rtt_median_us: Option<f64>,
}

impl Host {
    /// `user@address`, what a scenario's `ssh:` holds.
    pub fn ssh_destination(&self) -> String {
        if self.ssh_port == 22 {
            format!("{}@{}", self.user, self.address)
        } else {
            format!("{}@{}:{}", self.user, self.address, self.ssh_port)
        }
    }

    /// Arguments of `ssh` that reach this host: `-F DIR/ssh_config NAME`.
    pub fn ssh_args(&self) -> Vec<String> {
        vec![
            "-F".into(),
            self.ssh_config.display().to_string(),
            self.name.clone(),
        ]
    }

    /// The host for [`crate::remote::Connection`]: its name as the destination, resolved by
    /// the bed's ssh_config (address, key, known_hosts).
    pub fn ssh_target(&self) -> crate::remote::SshTarget {
        crate::remote::SshTarget {
            name: self.name.clone(),
            destination: self.name.clone(),
            port: None,
            identity: None,
            known_hosts: None,
            config: Some(self.ssh_config.clone()),
        }
    }

    /// `ssh -F DIR/ssh_config NAME -- REMOTE` (the remote shell parses `remote`).
    pub fn ssh(&self, remote: &str) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.args(self.ssh_args()).arg("--").arg(remote);
        cmd
    }
}

/// Contents of `testbed.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestbedState {
    /// Prefix of every name the bed made (namespaces, links, cgroups).
    pub prefix: String,
    pub bridge: String,
    pub subnet: String,
    /// The runner's side of the bridge (host `local`).
    pub local_address: Ipv4Addr,
    /// Per host, in cores; `None`: uncapped.
    pub cpu_limit_cores: Option<f64>,
    /// Always false: the kernel has no `netem` qdisc, so links have no added delay; the
    /// measured round trips are recorded per host instead.
    pub link_delay_emulated: bool,
    /// How `rtt_*_us` were measured.
    pub rtt_method: String,
    pub created_unix_ms: u64,
    /// False while `up` is still building (or after it failed half-way).
    pub complete: bool,
    pub hosts: Vec<Host>,
}

impl TestbedState {
    pub fn read(dir: &Path) -> Result<Self, TestbedError> {
        let path = dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| TestbedError::io(&path, e))?;
        serde_json::from_str(&text).map_err(|e| TestbedError::State {
            path,
            detail: e.to_string(),
        })
    }

    pub fn write(&self, dir: &Path) -> Result<(), TestbedError> {
        let path = dir.join(STATE_FILE);
        let text = serde_json::to_string_pretty(self).expect("invariant: plain data serializes");
        std::fs::write(&path, text + "\n").map_err(|e| TestbedError::io(&path, e))
    }

    /// The `hosts:` block for scenarios: `local` (no `ssh`: this machine, reached by the
    /// others at `address`) and one entry per host.
    pub fn hosts_yaml(&self) -> String {
        // JSON strings are YAML scalars: paths with spaces or colons stay one value.
        let quote = |p: &Path| serde_json::to_string(&p.display().to_string()).unwrap_or_default();
        let mut out = format!(
            "# Test bed {} ({}): written by `mqdispatch testbed up`, removed by `down`.\n\
             hosts:\n  local: {{ address: {} }}\n",
            self.prefix, self.subnet, self.local_address
        );
        for h in &self.hosts {
            out.push_str(&format!(
                "  {}: {{ ssh: {}, identity: {}, known_hosts: {} }}\n",
                h.name,
                h.ssh_destination(),
                quote(&h.identity),
                quote(&h.known_hosts)
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(k: u8) -> Host {
        Host {
            name: format!("h{k}"),
            netns: format!("mqdtb-h{k}"),
            address: Ipv4Addr::new(198, 18, 0, 10 + k),
            ssh_port: 22,
            user: "root".into(),
            identity: "/bed dir/id_ed25519".into(),
            known_hosts: "/bed dir/known_hosts".into(),
            ssh_config: "/bed dir/ssh_config".into(),
            cgroup: Some(format!("mqdtb-h{k}")),
            cpu_limit_cores: Some(0.5),
            sshd_pid: Some(100 + k as u32),
            rtt_min_us: Some(31.5),
            rtt_median_us: Some(40.0),
        }
    }

    fn state() -> TestbedState {
        TestbedState {
            prefix: "mqdtb".into(),
            bridge: "mqdtb0".into(),
            subnet: "198.18.0.0/24".into(),
            local_address: Ipv4Addr::new(198, 18, 0, 1),
            cpu_limit_cores: Some(0.5),
            link_delay_emulated: false,
            rtt_method: "tcp connect".into(),
            created_unix_ms: 1,
            complete: true,
            hosts: vec![host(1), host(2)],
        }
    }

    #[test]
    fn hosts_yaml_names_every_host_and_local() {
        assert_eq!(
            state().hosts_yaml(),
            "# Test bed mqdtb (198.18.0.0/24): written by `mqdispatch testbed up`, removed by `down`.\n\
             hosts:\n  local: { address: 198.18.0.1 }\n  \
             h1: { ssh: root@198.18.0.11, identity: \"/bed dir/id_ed25519\", known_hosts: \"/bed dir/known_hosts\" }\n  \
             h2: { ssh: root@198.18.0.12, identity: \"/bed dir/id_ed25519\", known_hosts: \"/bed dir/known_hosts\" }\n"
        );
    }

    #[test]
    fn state_round_trips_through_its_file() {
        let dir = tempfile::tempdir().unwrap();
        state().write(dir.path()).unwrap();
        assert_eq!(TestbedState::read(dir.path()).unwrap(), state());
    }

    #[test]
    fn ssh_reaches_a_host_by_its_config_name() {
        let h = host(1);
        assert_eq!(h.ssh_args(), ["-F", "/bed dir/ssh_config", "h1"]);
        assert_eq!(h.ssh_destination(), "root@198.18.0.11");
        let cmd = h.ssh("ip -o -4 addr");
        let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy()).collect();
        assert_eq!(
            args,
            ["-F", "/bed dir/ssh_config", "h1", "--", "ip -o -4 addr"]
        );
    }
}

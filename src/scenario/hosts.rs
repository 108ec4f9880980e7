//! The scenario's `hosts:` block (machines by name: `ssh: user@address[:port]`, `identity`,
//! `known_hosts`, `address`; `local: { address }` for the runner's own), or
//! `hosts: { include: PATH }` reading such a block from a file (a test bed's `hosts.yaml`), and
//! where roles go: `brokers.hosts` (one host per broker) and `loaders` (hosts sharing the
//! publishers by arrival index) and `dispatcher_host` (the method's dispatcher; default the
//! runner's machine).
//!
//! Names are checked here, with `file:line:column`; whether each host takes a login is
//! [`check_reachable`], run by `validate` and before a run starts.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use super::{Checker, yaml_error};
use crate::InputError;
use crate::broker::BrokerKind;
use crate::remote::SshTarget;

/// The name of the runner's own machine in `hosts:`.
pub const LOCAL: &str = "local";
/// How long a host may take to accept a batch-mode login in [`check_reachable`].
const REACH_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the scenario's roles run.
#[derive(Debug, Clone, Serialize)]
pub struct HostsPlan {
    /// Where the hosts were defined (the scenario, or the file it included).
    pub source: String,
    /// The address other hosts reach the runner at (`local: { address }`).
    pub local_address: Option<IpAddr>,
    /// Every remote host defined, by name.
    pub hosts: Vec<HostSpec>,
    /// The host of broker `b<i+1>` (empty: brokers run here).
    pub broker_hosts: Vec<String>,
    /// Hosts that run the publishers, shard k of N on the k-th (empty: here).
    pub loaders: Vec<String>,
    /// The host of every dispatcher method's dispatcher (`None`: here).
    pub dispatcher: Option<String>,
    /// The test bed's folder, when the hosts came from a bed's `hosts.yaml` (its
    /// `testbed.json` lies beside it and gives the measured round trips).
    pub testbed_dir: Option<PathBuf>,
}

/// One remote host.
#[derive(Debug, Clone, Serialize)]
pub struct HostSpec {
    pub name: String,
    /// As written: `user@address[:port]`.
    pub ssh: String,
    /// The address its roles listen on and others reach it at.
    pub address: IpAddr,
    pub identity: Option<PathBuf>,
    pub known_hosts: Option<PathBuf>,
    /// How to log in.
    #[serde(skip)]
    pub target: SshTarget,
    /// `file:line:column` of its definition, for messages.
    #[serde(skip)]
    pub at: String,
}

impl HostsPlan {
    pub fn host(&self, name: &str) -> Option<&HostSpec> {
        self.hosts.iter().find(|h| h.name == name)
    }

    /// Whether any role runs on another host.
    pub fn places_roles(&self) -> bool {
        !self.broker_hosts.is_empty() || !self.loaders.is_empty() || self.dispatcher.is_some()
    }

    /// The hosts roles are placed on, each once, in name order.
    pub fn used(&self) -> Vec<&HostSpec> {
        self.hosts
            .iter()
            .filter(|h| {
                self.broker_hosts.contains(&h.name)
                    || self.loaders.contains(&h.name)
                    || self.dispatcher.as_ref() == Some(&h.name)
            })
            .collect()
    }
}

/// `hosts:` as written: host entries, or one `include: PATH`.
pub(super) type RawHosts = BTreeMap<String, Spanned<RawHostValue>>;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawHostValue {
    Host(RawHost),
    Path(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHost {
    #[serde(default)]
    ssh: Option<String>,
    #[serde(default)]
    identity: Option<PathBuf>,
    #[serde(default)]
    known_hosts: Option<PathBuf>,
    #[serde(default)]
    address: Option<String>,
}

/// A file `hosts: { include: PATH }` names: a `hosts:` block and nothing else (comments aside).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IncludedHosts {
    hosts: RawHosts,
}

/// What the rest of the scenario says about placement, for the checks.
pub(super) struct Placement<'a> {
    pub brokers: Option<&'a Spanned<Vec<Spanned<String>>>>,
    pub loaders: Option<&'a Spanned<Vec<Spanned<String>>>>,
    pub dispatcher: Option<&'a Spanned<String>>,
    /// Whether any method has `assign: dispatcher`.
    pub dispatcher_methods: bool,
    pub broker_count: usize,
    pub broker_kind: BrokerKind,
    /// Keys that cannot be combined with brokers on hosts, and where they are.
    pub conflicts: Vec<(serde_saphyr::Location, &'static str)>,
}

impl Checker<'_> {
    pub(super) fn hosts(
        &self,
        raw: Option<&Spanned<RawHosts>>,
        placement: Placement<'_>,
    ) -> Result<Option<HostsPlan>, InputError> {
        let Some(raw) = raw else {
            if let Some(list) = placement.brokers.or(placement.loaders) {
                return Err(self.at(
                    list,
                    "roles on hosts need a `hosts:` block naming them, e.g. \
                     `hosts: { include: results/testbed/hosts.yaml }`",
                ));
            }
            if let Some(d) = placement.dispatcher.filter(|d| d.value != LOCAL) {
                return Err(self.at(
                    d,
                    "dispatcher_host needs a `hosts:` block naming it, e.g. \
                     `hosts: { include: results/testbed/hosts.yaml }`",
                ));
            }
            return Ok(None);
        };
        let included: RawHosts;
        let (source, entries, testbed_dir) = match raw.value.get("include") {
            Some(include) => {
                let RawHostValue::Path(path) = &include.value else {
                    return Err(self.at(include, "include takes a file path"));
                };
                if raw.value.len() > 1 {
                    return Err(self.at(
                        raw,
                        "`include` stands alone: put every host in the included file",
                    ));
                }
                let path = PathBuf::from(path);
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    self.at(
                        include,
                        format!(
                            "cannot read {} ({e}); the path is relative to the working \
                             directory; a test bed writes it with `mqdispatch testbed up`",
                            path.display()
                        ),
                    )
                })?;
                let origin = path.display().to_string();
                let file: IncludedHosts =
                    serde_saphyr::from_str(&text).map_err(|e| yaml_error(&origin, &e))?;
                let dir = path.parent().map(Path::to_owned).unwrap_or_default();
                let bed = dir
                    .join(crate::testbed::state::STATE_FILE)
                    .is_file()
                    .then(|| std::fs::canonicalize(&dir).unwrap_or(dir));
                included = file.hosts;
                (origin, &included, bed)
            }
            None => (self.origin.to_owned(), &raw.value, None),
        };
        let defined = Checker { origin: &source };
        let mut local_address = None;
        let mut hosts = Vec::new();
        for (name, value) in entries {
            let RawHostValue::Host(host) = &value.value else {
                return Err(defined.at(
                    value,
                    format!("host `{name}` needs a mapping, e.g. `{{ ssh: root@198.18.0.11 }}`"),
                ));
            };
            if name == LOCAL {
                if host.ssh.is_some() || host.identity.is_some() || host.known_hosts.is_some() {
                    return Err(defined.at(
                        value,
                        "`local` is this machine: give only `address` (where the other hosts \
                         reach it)",
                    ));
                }
                let address = host.address.as_deref().ok_or_else(|| {
                    defined.at(value, "`local` needs `address: IP` (where hosts reach it)")
                })?;
                local_address = Some(defined.ip(value, address)?);
                continue;
            }
            hosts.push(defined.host(name, host, value)?);
        }
        let known = |name: &str| name == LOCAL || hosts.iter().any(|h| h.name == name);
        let names = |list: Option<&Spanned<Vec<Spanned<String>>>>, role: &str| {
            let Some(list) = list else {
                return Ok(Vec::new());
            };
            let mut out = Vec::new();
            for name in &list.value {
                if !known(&name.value) {
                    return Err(self.at(
                        name,
                        format!("{role}: no host `{}` in {source}", name.value),
                    ));
                }
                if name.value == LOCAL {
                    return Err(self.at(
                        name,
                        format!(
                            "{role}: `local` cannot be listed; leave the key out to run the \
                             role here"
                        ),
                    ));
                }
                out.push(name.value.clone());
            }
            Ok(out)
        };
        let broker_hosts = names(placement.brokers, "brokers.hosts")?;
        let loaders = names(placement.loaders, "loaders")?;
        if let Some(list) = placement.brokers {
            if broker_hosts.len() != placement.broker_count {
                return Err(self.at(
                    list,
                    format!(
                        "brokers.hosts needs one host per broker ({}), e.g. `hosts: [h1, h2]`",
                        placement.broker_count
                    ),
                ));
            }
            if placement.broker_kind == BrokerKind::External {
                return Err(self.at(
                    list,
                    "brokers on hosts are `kind: embedded` or `kind: mosquitto` (the runner \
                     starts them there); an external broker has `addresses` instead",
                ));
            }
            if let Some((loc, key)) = placement.conflicts.first() {
                return Err(self.at_location(*loc, format!("brokers on hosts: {key}")));
            }
        }
        if let Some(list) = placement.loaders.filter(|_| placement.brokers.is_none()) {
            return Err(self.at(
                list,
                "loaders on hosts need the brokers on hosts too (`brokers: { hosts: [...] }`): \
                 brokers here listen on 127.0.0.1",
            ));
        }
        if let Some(list) = placement.loaders
            && loaders.is_empty()
        {
            return Err(self.at(
                list,
                "loaders lists no host: leave it out to load from here",
            ));
        }
        let dispatcher = self.dispatcher_host(&placement, &known, &source)?;
        let plan = HostsPlan {
            source,
            local_address,
            hosts,
            broker_hosts,
            loaders,
            dispatcher,
            testbed_dir,
        };
        if plan.places_roles() && plan.local_address.is_none() {
            return Err(self.at(
                raw,
                format!(
                    "roles on hosts need `local: {{ address: IP }}` in {}: the address the \
                     hosts reach this machine at (agents report to the dispatcher there)",
                    plan.source
                ),
            ));
        }
        Ok(Some(plan))
    }

    /// `dispatcher_host`: a defined host (`local`: here, as without the key), with the brokers
    /// on hosts (here they listen on 127.0.0.1, which a dispatcher elsewhere cannot hand out
    /// or reach to move clients) and a method that has a dispatcher.
    fn dispatcher_host(
        &self,
        placement: &Placement<'_>,
        known: &dyn Fn(&str) -> bool,
        source: &str,
    ) -> Result<Option<String>, InputError> {
        let Some(name) = placement.dispatcher.filter(|d| d.value != LOCAL) else {
            return Ok(None);
        };
        if !known(&name.value) {
            return Err(self.at(
                name,
                format!("dispatcher_host: no host `{}` in {source}", name.value),
            ));
        }
        if placement.brokers.is_none() {
            return Err(self.at(
                name,
                "dispatcher_host needs the brokers on hosts too (`brokers: { hosts: [...] }`): \
                 brokers here listen on 127.0.0.1, out of its reach",
            ));
        }
        if !placement.dispatcher_methods {
            return Err(self.at(
                name,
                "dispatcher_host: no method has `assign: dispatcher`; leave the key out",
            ));
        }
        Ok(Some(name.value.clone()))
    }

    fn host(
        &self,
        name: &str,
        host: &RawHost,
        value: &Spanned<RawHostValue>,
    ) -> Result<HostSpec, InputError> {
        let plain = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !plain {
            return Err(self.at(
                value,
                format!("host name `{name}`: letters, digits, `-` and `_` only"),
            ));
        }
        let ssh = host.ssh.as_deref().ok_or_else(|| {
            self.at(
                value,
                format!("host `{name}` needs `ssh: user@address[:port]` (or is it `local`?)"),
            )
        })?;
        let mut target = SshTarget::parse(name, ssh).map_err(|e| self.at(value, e))?;
        target.identity = host.identity.clone();
        target.known_hosts = host.known_hosts.clone();
        let address = match &host.address {
            Some(a) => self.ip(value, a)?,
            None => {
                let written = target.destination.rsplit_once('@').map_or("", |(_, a)| a);
                written.parse().map_err(|_| {
                    self.at(
                        value,
                        format!(
                            "host `{name}`: `{written}` is not an IP address: add `address: IP` \
                             (where its roles listen)"
                        ),
                    )
                })?
            }
        };
        let loc = value.referenced;
        Ok(HostSpec {
            name: name.to_owned(),
            ssh: ssh.to_owned(),
            address,
            identity: host.identity.clone(),
            known_hosts: host.known_hosts.clone(),
            target,
            at: format!("{}:{}:{}", self.origin, loc.line(), loc.column()),
        })
    }

    fn ip(&self, value: &Spanned<RawHostValue>, text: &str) -> Result<IpAddr, InputError> {
        text.trim().parse().map_err(|_| {
            self.at(
                value,
                format!("`{text}` is not an IP address, e.g. 198.18.0.1"),
            )
        })
    }
}

/// Every host a role is placed on takes a batch-mode login and runs `true` (all at once,
/// each within 10 s); the error names the host's definition `file:line:column`.
pub async fn check_reachable(plan: &HostsPlan) -> Result<(), InputError> {
    let mut checks = tokio::task::JoinSet::new();
    for h in plan.used() {
        let h = h.clone();
        checks.spawn(async move {
            h.target
                .check_reachable(REACH_TIMEOUT)
                .await
                .map_err(|e| format!("{}: host `{}` is not reachable: {e}", h.at, h.name))
        });
    }
    let mut failed: Vec<String> = checks
        .join_all()
        .await
        .into_iter()
        .filter_map(Result::err)
        .collect();
    failed.sort();
    match failed.is_empty() {
        true => Ok(()),
        false => Err(InputError(failed.join("\n"))),
    }
}

#[cfg(test)]
mod tests {
    use crate::scenario::parse;

    const BASE: &str = "name: t
brokers: { kind: embedded, count: 2, hosts: [h1, h2] }
publishers: [{ name: light, count: 2, rate: 10, payload_bytes: 600, duration: 1s }]
arrival: { order: random, interval: 1s }
methods: [{ name: dns-rr, assign: dns-rr }]
";

    fn with(extra: &str) -> Result<crate::scenario::Scenario, String> {
        parse(&format!("{BASE}{extra}"), "s.yaml").map_err(|e| e.0)
    }

    const HOSTS: &str = "hosts:
  local: { address: 198.18.0.1 }
  h1: { ssh: root@198.18.0.11, identity: /bed/id_ed25519, known_hosts: /bed/known_hosts }
  h2: { ssh: lab@10.0.0.12:2222, address: 198.18.0.12 }
  h3: { ssh: root@198.18.0.13 }
";

    #[test]
    fn hosts_place_brokers_and_loaders() {
        let s = with(&format!("{HOSTS}loaders: [h3]\n")).unwrap();
        let plan = s.hosts.unwrap();
        assert_eq!(plan.broker_hosts, ["h1", "h2"]);
        assert_eq!(plan.loaders, ["h3"]);
        assert_eq!(plan.local_address, Some("198.18.0.1".parse().unwrap()));
        let h2 = plan.host("h2").unwrap();
        assert_eq!(h2.target.port, Some(2222));
        assert_eq!(h2.address.to_string(), "198.18.0.12");
        let h1 = plan.host("h1").unwrap();
        assert_eq!(
            h1.target.identity.as_deref(),
            Some("/bed/id_ed25519".as_ref())
        );
        assert_eq!(h1.at, "s.yaml:8:7");
        assert_eq!(plan.used().len(), 3);
    }

    #[test]
    fn every_name_must_be_defined_and_errors_say_where() {
        let e = with(&format!("{HOSTS}loaders: [h9]\n")).unwrap_err();
        assert!(
            e.starts_with("s.yaml:11:") && e.contains("no host `h9`"),
            "{e}"
        );
        let e = with("loaders: [h3]\n").unwrap_err();
        assert!(e.contains("need a `hosts:` block"), "{e}");
        let e = with(&HOSTS.replace("  local: { address: 198.18.0.1 }\n", "")).unwrap_err();
        assert!(e.contains("local: { address: IP }"), "{e}");
        let e = with(&HOSTS.replace("root@198.18.0.13", "198.18.0.13")).unwrap_err();
        assert!(
            e.starts_with("s.yaml:10:") && e.contains("user@address"),
            "{e}"
        );
        let e = with(&HOSTS.replace("lab@10.0.0.12:2222, address: 198.18.0.12", "lab@box"))
            .unwrap_err();
        assert!(e.contains("not an IP address"), "{e}");
        let e = with(&format!("{HOSTS}loaders: [local]\n")).unwrap_err();
        assert!(e.contains("`local` cannot be listed"), "{e}");
    }

    #[test]
    fn the_dispatcher_goes_on_a_defined_host_beside_brokers_on_hosts() {
        let dispatched = BASE.replace(
            "[{ name: dns-rr, assign: dns-rr }]",
            "[{ name: dns-rr, assign: dns-rr }, { name: p, assign: dispatcher, policy: least-cpu }]",
        );
        let read = |base: &str, extra: &str| {
            parse(&format!("{base}{HOSTS}{extra}"), "s.yaml").map_err(|e| e.0)
        };
        let plan = read(&dispatched, "dispatcher_host: h3\n")
            .unwrap()
            .hosts
            .unwrap();
        assert_eq!(plan.dispatcher.as_deref(), Some("h3"));
        assert_eq!(plan.used().len(), 3, "h3 is used by the dispatcher alone");
        let here = read(&dispatched, "dispatcher_host: local\n").unwrap();
        assert_eq!(here.hosts.unwrap().dispatcher, None);

        let e = read(&dispatched, "dispatcher_host: h9\n").unwrap_err();
        assert!(
            e.starts_with("s.yaml:11:18:") && e.contains("no host `h9`"),
            "{e}"
        );
        let e = read(BASE, "dispatcher_host: h3\n").unwrap_err();
        assert!(e.contains("no method has `assign: dispatcher`"), "{e}");
        let local = dispatched.replace(", hosts: [h1, h2]", "");
        let e = read(&local, "dispatcher_host: h3\n").unwrap_err();
        assert!(
            e.starts_with("s.yaml:11:") && e.contains("needs the brokers on hosts too"),
            "{e}"
        );
        let e = parse(&format!("{local}dispatcher_host: h3\n"), "s.yaml")
            .unwrap_err()
            .0;
        assert!(
            e.starts_with("s.yaml:6:") && e.contains("needs a `hosts:` block"),
            "{e}"
        );
        // What a dispatcher on a host cannot do is refused with the brokers on hosts.
        let tls = read(&dispatched, "dispatcher_host: h3\ntls: true\n").unwrap_err();
        assert!(tls.contains("tls: true"), "{tls}");
        let restart = "dispatcher_host: h3\nfaults: [{ at: 1s, kind: restart-dispatcher }]\n";
        let e = read(&dispatched, restart).unwrap_err();
        assert!(e.contains("brokers on hosts: no faults"), "{e}");
    }

    #[test]
    fn what_brokers_on_hosts_cannot_do_is_refused_where_it_is_written() {
        let one = BASE.replace("hosts: [h1, h2]", "hosts: [h1]");
        let e = parse(&format!("{one}{HOSTS}"), "s.yaml").unwrap_err().0;
        assert!(
            e.starts_with("s.yaml:2:") && e.contains("one host per broker"),
            "{e}"
        );
        let capped = BASE.replace("embedded, count: 2,", "embedded, count: 2, cpu_limit: 0.5,");
        let e = parse(&format!("{capped}{HOSTS}"), "s.yaml").unwrap_err().0;
        assert!(e.contains("brokers on hosts: no brokers.cpu_limit"), "{e}");
        let mosq = BASE.replace("embedded", "mosquitto");
        assert!(parse(&format!("{mosq}{HOSTS}"), "s.yaml").is_ok());
        let plugin = BASE.replace("embedded,", "mosquitto, plugin: true,");
        let e = parse(&format!("{plugin}{HOSTS}"), "s.yaml").unwrap_err().0;
        assert!(
            e.starts_with("s.yaml:2:") && e.contains("brokers on hosts: no brokers.plugin"),
            "{e}"
        );
        let moving = mosq.replace(
            "[{ name: dns-rr, assign: dns-rr }]",
            "[{ name: p, assign: dispatcher, policy: least-cpu, rebalance: {} }]",
        );
        let e = parse(&format!("{moving}{HOSTS}"), "s.yaml").unwrap_err().0;
        assert!(e.contains("no moves through the Mosquitto plugin"), "{e}");
        let takeover = moving.replace("rebalance: {}", "rebalance: { mover: takeover }");
        assert!(parse(&format!("{takeover}{HOSTS}"), "s.yaml").is_ok());
        let local = BASE.replace(", hosts: [h1, h2]", "");
        let e = parse(&format!("{local}{HOSTS}loaders: [h3]\n"), "s.yaml")
            .unwrap_err()
            .0;
        assert!(e.contains("need the brokers on hosts too"), "{e}");
    }

    #[test]
    fn the_shipped_hosts_scenarios_are_the_paper_s_on_bed_hosts() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hosts.yaml");
        std::fs::write(&file, HOSTS).unwrap();
        let read = |text: &str| {
            let text = text.replace("results/testbed/hosts.yaml", &file.display().to_string());
            parse(&text, "x.yaml").unwrap()
        };
        let paper = parse(include_str!("../../scenarios/paper.yaml"), "paper.yaml").unwrap();
        let on_hosts = read(include_str!("../../scenarios/paper-hosts.yaml"));
        assert_eq!(on_hosts.profiles, paper.profiles);
        assert_eq!(on_hosts.arrival, paper.arrival);
        assert_eq!(on_hosts.methods, paper.methods);
        assert_eq!((on_hosts.trials, on_hosts.seed), (paper.trials, paper.seed));
        for s in [
            on_hosts,
            read(include_str!("../../scenarios/hosts-quick.yaml")),
        ] {
            let plan = s.hosts.unwrap();
            assert_eq!(
                (plan.broker_hosts, plan.loaders),
                (vec!["h1".into(), "h2".into()], vec!["h3".to_owned()])
            );
        }
    }

    #[test]
    fn an_included_file_gives_the_hosts_and_its_errors_name_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hosts.yaml");
        std::fs::write(&file, format!("# a bed\n{HOSTS}")).unwrap();
        let include = format!("hosts: {{ include: {} }}\n", file.display());
        let plan = with(&include).unwrap().hosts.unwrap();
        assert_eq!(plan.source, file.display().to_string());
        assert_eq!(
            plan.host("h1").unwrap().at,
            format!("{}:4:7", file.display())
        );
        assert_eq!(plan.testbed_dir, None, "no testbed.json beside it");
        std::fs::write(dir.path().join("testbed.json"), "{}").unwrap();
        let plan = with(&include).unwrap().hosts.unwrap();
        assert_eq!(
            plan.testbed_dir.as_deref(),
            Some(dir.path().canonicalize().unwrap().as_path())
        );

        std::fs::write(
            &file,
            HOSTS.replace("known_hosts: /bed", "known_host: /bed"),
        )
        .unwrap();
        let e = with(&include).unwrap_err();
        assert!(e.starts_with(&format!("{}:3:", file.display())), "{e}");
        let e = with("hosts: { include: /no/such/hosts.yaml }\n").unwrap_err();
        assert!(
            e.starts_with("s.yaml:6:") && e.contains("cannot read"),
            "{e}"
        );
    }
}

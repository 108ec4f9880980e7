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
mod tests;

//! The scenario's `brokers:` block: kind and count, a CPU cap, pinning to CPUs, external
//! addresses, the Mosquitto plugin; and the checks of this host that must pass before a run
//! starts (plugin built, CPUs online).

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use super::{Checker, Scenario};
use crate::InputError;
use crate::broker::BrokerKind;

#[derive(Debug, Clone, Serialize)]
pub struct BrokersPlan {
    pub kind: BrokerKind,
    pub count: usize,
    pub cpu_limit: Option<f64>,
    /// The CPUs each broker runs on (`cpus`, one set per broker in order); empty: not pinned.
    pub cpus: Vec<crate::affinity::CpuSet>,
    /// `host:port` of each external broker (kind `external` only).
    pub addresses: Vec<String>,
    /// Load the mqdispatch Mosquitto plugin (`plugin: true`, kind `mosquitto` only).
    pub plugin: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBrokers {
    pub(super) kind: BrokerKind,
    #[serde(default)]
    count: Option<Spanned<usize>>,
    #[serde(default)]
    cpu_limit: Option<Spanned<f64>>,
    #[serde(default)]
    cpus: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    addresses: Vec<Spanned<String>>,
    #[serde(default)]
    plugin: Option<Spanned<bool>>,
    /// One host per broker (`hosts: [h1, h2]`, names from the scenario's `hosts:`).
    #[serde(default)]
    pub(super) hosts: Option<Spanned<Vec<Spanned<String>>>>,
}

impl RawBrokers {
    pub(super) fn cpu_limit_at(&self) -> Option<serde_saphyr::Location> {
        self.cpu_limit.as_ref().map(|c| c.referenced)
    }

    pub(super) fn cpus_at(&self) -> Option<serde_saphyr::Location> {
        self.cpus.as_ref().map(|c| c.referenced)
    }

    /// Where `plugin: true` is written, if it is.
    pub(super) fn plugin_at(&self) -> Option<serde_saphyr::Location> {
        self.plugin
            .as_ref()
            .filter(|p| p.value)
            .map(|p| p.referenced)
    }

    /// The broker count as [`Checker::brokers`] settles it (run after it succeeded).
    pub(super) fn count_or_addresses(&self) -> usize {
        self.count
            .as_ref()
            .map_or(self.addresses.len(), |c| c.value)
    }
}

impl Checker<'_> {
    pub(super) fn brokers(&self, raw: &Spanned<RawBrokers>) -> Result<BrokersPlan, InputError> {
        let b = &raw.value;
        let cpu_limit = match &b.cpu_limit {
            None => None,
            Some(l) if l.value.is_finite() && l.value > 0.0 && l.value <= 1024.0 => Some(l.value),
            Some(l) => return Err(self.at(l, "cpu_limit is in cores and must be > 0, e.g. 0.25")),
        };
        let addresses: Vec<String> = b.addresses.iter().map(|a| a.value.clone()).collect();
        for a in &b.addresses {
            if let Err(e) = a.value.parse::<crate::addr::HostPort>() {
                return Err(self.at(a, e));
            }
        }
        let count = match (b.kind, &b.count) {
            (BrokerKind::External, None) => addresses.len(),
            (BrokerKind::External, Some(c)) if c.value != addresses.len() => {
                return Err(self.at(
                    c,
                    "count must match the number of addresses for external brokers",
                ));
            }
            (_, Some(c)) => c.value,
            (_, None) => return Err(self.at(raw, "brokers needs `count`, e.g. `count: 2`")),
        };
        if count == 0 {
            let loc = b.count.as_ref().map_or(raw.referenced, |c| c.referenced);
            return Err(self.at_location(loc, "zero brokers: set `count` to 1 or more"));
        }
        if b.kind != BrokerKind::External && !addresses.is_empty() {
            return Err(self.at(&b.addresses[0], "addresses only apply to `kind: external`"));
        }
        if b.kind == BrokerKind::External && cpu_limit.is_some() {
            return Err(self.at(raw, "cpu_limit cannot be applied to external brokers"));
        }
        let cpus = match &b.cpus {
            None => Vec::new(),
            Some(list) if b.kind == BrokerKind::External => {
                return Err(self.at(list, "cpus cannot be applied to external brokers"));
            }
            Some(list) if list.value.len() != count => {
                return Err(self.at(
                    list,
                    format!(
                        "cpus needs one CPU list per broker ({count}), e.g. `cpus: [\"2\", \"3\"]`"
                    ),
                ));
            }
            Some(list) => list
                .value
                .iter()
                .map(|set| set.value.parse().map_err(|e: String| self.at(set, e)))
                .collect::<Result<_, _>>()?,
        };
        let plugin = match &b.plugin {
            Some(p) if p.value && b.kind != BrokerKind::Mosquitto => {
                return Err(self.at(
                    p,
                    "plugin: true needs `kind: mosquitto` (it is a Mosquitto plugin)",
                ));
            }
            Some(p) => p.value,
            None => false,
        };
        Ok(BrokersPlan {
            kind: b.kind,
            count,
            cpu_limit,
            cpus,
            addresses,
            plugin,
        })
    }
}

/// With `plugin: true`, the Mosquitto plugin must be built; with `cpus`, every CPU must be
/// online here (checked before anything starts: a scenario written for a bigger host parses
/// anywhere, and fails here, not midway).
pub fn check_host(scenario: &Scenario) -> Result<(), crate::broker::BrokerError> {
    if scenario.brokers.plugin {
        crate::broker::mosquitto::find_plugin()?;
    }
    for (i, set) in scenario.brokers.cpus.iter().enumerate() {
        set.check_online()
            .map_err(|why| crate::broker::BrokerError::Spec {
                id: format!("b{}", i + 1),
                why: format!("cpus: {why}"),
            })?;
    }
    Ok(())
}

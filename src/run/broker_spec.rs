//! How the runner starts the scenario's broker number `index`: its kind, CPU cap, pinning,
//! address (external), TLS and plugin. Method runs and the calibration share it, so the
//! calibration measures brokers set up exactly as the measured ones.

use crate::broker::BrokerSpec;
use crate::scenario::Scenario;

pub(super) fn broker_spec(
    scenario: &Scenario,
    index: usize,
    id: &str,
    tls: Option<&crate::tls::ThrowawayCa>,
) -> anyhow::Result<BrokerSpec> {
    let plan = &scenario.brokers;
    Ok(BrokerSpec {
        id: id.to_owned(),
        kind: plan.kind,
        cpu_limit_cores: plan.cpu_limit,
        cpus: plan.cpus.get(index).cloned(),
        external_addr: plan.addresses.get(index).cloned(),
        tls: tls.cloned(),
        mosquitto_plugin: plan
            .plugin
            .then(crate::broker::mosquitto::find_plugin)
            .transpose()?,
    })
}

//! A scenario's `faults:`: what breaks when, checked against the brokers.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use super::{BrokersPlan, Checker, duration_serde};
use crate::InputError;
use crate::broker::BrokerKind;

/// Something broken on purpose during a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FaultPlan {
    #[serde(with = "duration_serde")]
    pub at: Duration,
    pub kind: FaultKind,
    /// Index of the broker (0-based) the fault targets (0 for `restart-dispatcher`).
    pub broker: usize,
    /// For `kill` and `stop`: bring the broker back after this long.
    pub restore_after: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// SIGKILL the broker (restart with `restore_after`).
    Kill,
    /// SIGSTOP the broker: alive but silent (SIGCONT with `restore_after`).
    Stop,
    /// Kill the broker's agent: its reports stop while the broker keeps serving.
    KillAgent,
    /// Stop the dispatcher; start a fresh one on the same ports after `restore_after`
    /// (default: at once). Connected publishers keep publishing meanwhile.
    RestartDispatcher,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFault {
    at: Spanned<String>,
    kind: FaultKind,
    #[serde(default)]
    broker: Option<Spanned<usize>>,
    #[serde(default)]
    restore_after: Option<Spanned<String>>,
}

impl Checker<'_> {
    pub(super) fn fault(
        &self,
        raw: &Spanned<RawFault>,
        brokers: &BrokersPlan,
        scale: f64,
    ) -> Result<FaultPlan, InputError> {
        let f = &raw.value;
        let broker = match (&f.broker, f.kind) {
            (None, FaultKind::RestartDispatcher) => 0,
            (Some(b), FaultKind::RestartDispatcher) => {
                return Err(self.at(b, "restart-dispatcher takes no broker"));
            }
            (None, _) => return Err(self.at(raw, "this fault needs `broker: N` (0-based)")),
            (Some(b), _) if b.value >= brokers.count => {
                return Err(self.at(
                    b,
                    format!(
                        "broker {} does not exist (brokers are 0..{})",
                        b.value,
                        brokers.count - 1
                    ),
                ));
            }
            (Some(b), _) => b.value,
        };
        if brokers.kind == BrokerKind::External
            && matches!(f.kind, FaultKind::Kill | FaultKind::Stop)
        {
            return Err(self.at(
                raw,
                "external brokers cannot be killed or stopped by the harness",
            ));
        }
        let restore_after = match &f.restore_after {
            Some(r) if f.kind == FaultKind::KillAgent => {
                return Err(self.at(
                    r,
                    "restore_after applies to kill, stop and restart-dispatcher only",
                ));
            }
            Some(r) => Some(self.duration(r, scale)?),
            None if f.kind == FaultKind::RestartDispatcher => Some(Duration::ZERO),
            None => None,
        };
        Ok(FaultPlan {
            at: self.duration(&f.at, scale)?,
            kind: f.kind,
            broker,
            restore_after,
        })
    }
}

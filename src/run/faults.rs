//! Fault injection during a method run: kill or freeze a broker, silence an agent.
//!
//! A fault that cannot be injected (or recorded in `faults.csv`) is a failure of the run, not a
//! log line: [`FaultLog`] keeps it, the runner lists it under Errors in `summary.md` and marks
//! the run incomplete.

use std::path::Path;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::agents::AgentSet;
use super::dispatcher_slot::DispatcherSlot;
use super::method_run::MethodRun;
use crate::broker::RunningBroker;
use crate::scenario::{FaultKind, FaultPlan};

/// One thing to do to a broker at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Kill,
    Freeze,
    Thaw,
    Restart,
    KillAgent,
    DispatcherDown,
    DispatcherUp,
}

impl Action {
    fn label(self) -> &'static str {
        match self {
            Self::Kill => "kill",
            Self::Freeze => "stop",
            Self::Thaw => "cont",
            Self::Restart => "restart",
            Self::KillAgent => "kill-agent",
            Self::DispatcherDown => "dispatcher-down",
            Self::DispatcherUp => "dispatcher-up",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    pub at_ms: u64,
    pub action: Action,
    pub broker: usize,
}

/// The faults of a scenario as absolute times, handed out as they fall due.
pub struct Schedule {
    pending: Vec<Due>,
}

impl Schedule {
    pub fn new(faults: &[FaultPlan], t0_ms: u64) -> Self {
        let mut pending = Vec::new();
        for f in faults {
            let at_ms = t0_ms + f.at.as_millis() as u64;
            // The scenario check refuses restore_after for kill-agent: it has no restore.
            let (first, restore) = match f.kind {
                FaultKind::Kill => (Action::Kill, Some(Action::Restart)),
                FaultKind::Stop => (Action::Freeze, Some(Action::Thaw)),
                FaultKind::KillAgent => (Action::KillAgent, None),
                FaultKind::RestartDispatcher => {
                    (Action::DispatcherDown, Some(Action::DispatcherUp))
                }
            };
            pending.push(Due {
                at_ms,
                action: first,
                broker: f.broker,
            });
            if let (Some(after), Some(restore)) = (f.restore_after, restore) {
                pending.push(Due {
                    at_ms: at_ms + after.as_millis() as u64,
                    action: restore,
                    broker: f.broker,
                });
            }
        }
        pending.sort_by_key(|d| d.at_ms);
        Self { pending }
    }

    /// When the next fault falls due, if any is left.
    pub fn next_at_ms(&self) -> Option<u64> {
        self.pending.first().map(|d| d.at_ms)
    }

    /// The faults due at `now_ms`, in time order, each handed out once.
    pub fn due(&mut self, now_ms: u64) -> Vec<Due> {
        let split = self.pending.partition_point(|d| d.at_ms <= now_ms);
        self.pending.drain(..split).collect()
    }
}

/// Rows of `faults.csv` (`trial,method,t_s,kind,target`): the plots mark them. Faults that
/// failed are kept apart, for the run's errors.
pub struct FaultLog {
    writer: csv::Writer<std::fs::File>,
    failures: Vec<String>,
}

impl FaultLog {
    pub fn create(dir: &Path) -> anyhow::Result<Self> {
        let mut writer = csv::Writer::from_path(dir.join("faults.csv"))?;
        writer.write_record(["trial", "method", "t_s", "kind", "target"])?;
        writer.flush()?;
        Ok(Self {
            writer,
            failures: Vec::new(),
        })
    }

    /// The failures since the last call.
    pub fn take_failures(&mut self) -> Vec<String> {
        std::mem::take(&mut self.failures)
    }

    fn fail(&mut self, trial: u32, method: &str, what: &str, error: impl std::fmt::Display) {
        warn!(trial, method, what, %error, "fault injection failed");
        self.failures
            .push(format!("trial {trial}, method {method}: {what}: {error}"));
    }

    fn record(&mut self, trial: u32, method: &str, t_s: f64, kind: &str, target: &str) {
        let row = [
            trial.to_string(),
            method.to_owned(),
            format!("{t_s:.3}"),
            kind.to_owned(),
            target.to_owned(),
        ];
        if let Err(e) = self
            .writer
            .write_record(&row)
            .and_then(|()| Ok(self.writer.flush()?))
        {
            let what = format!("recording {kind} {target} at {t_s:.1} s in faults.csv");
            self.fail(trial, method, &what, e);
        }
    }
}

/// What a fault can act on during a method run.
pub struct Targets<'a> {
    pub brokers: &'a mut [RunningBroker],
    /// Each broker's agent, `None` while it is stopped.
    pub agent_tokens: &'a mut [Option<CancellationToken>],
    pub agents: &'a AgentSet,
    /// The in-process dispatcher, for dispatcher methods.
    pub dispatcher: Option<&'a mut DispatcherSlot>,
}

pub async fn inject(
    due: &Due,
    targets: Targets<'_>,
    run: &MethodRun<'_>,
    log: &mut FaultLog,
    t0_ms: u64,
) {
    let Targets {
        brokers,
        agent_tokens,
        agents,
        dispatcher,
    } = targets;
    // On the recorder's axis (brokers.csv, outages.csv): seconds from t0 floored to a second.
    let t_s = || crate::now_ms().saturating_sub(t0_ms - t0_ms % 1000) as f64 / 1000.0;
    let Some(broker) = brokers.get_mut(due.broker) else {
        let what = format!(
            "{} broker index {} at {:.1} s",
            due.action.label(),
            due.broker,
            t_s()
        );
        let error = format!("the run has {} brokers", brokers.len());
        log.fail(run.trial, &run.method.name, &what, error);
        return;
    };
    // A frozen or dead broker host takes its agent with it: its reports stop, which is how the
    // dispatcher notices. The agent comes back with the broker.
    let stop_agent = |tokens: &mut [Option<CancellationToken>]| {
        if let Some(token) = tokens[due.broker].take() {
            token.cancel();
        }
    };
    let mut target = broker.id.clone();
    let outcome = match due.action {
        Action::Kill => {
            stop_agent(agent_tokens);
            broker.signal(libc::SIGKILL)
        }
        Action::Freeze => {
            stop_agent(agent_tokens);
            broker.signal(libc::SIGSTOP)
        }
        Action::Thaw => broker.signal(libc::SIGCONT).map(|()| {
            agent_tokens[due.broker] = agents.spawn(broker);
        }),
        Action::Restart => match broker.restart().await {
            Ok(()) => {
                agent_tokens[due.broker] = agents.spawn(broker);
                Ok(())
            }
            Err(e) => Err(std::io::Error::other(e)),
        },
        Action::KillAgent => {
            stop_agent(agent_tokens);
            Ok(())
        }
        Action::DispatcherDown | Action::DispatcherUp => {
            target = "dispatcher".into();
            match dispatcher {
                // dns-rr has no dispatcher to restart: the fault does not apply, nothing failed.
                None => {
                    info!(
                        action = due.action.label(),
                        "no dispatcher in this method: skipped"
                    );
                    return;
                }
                Some(slot) if due.action == Action::DispatcherDown => {
                    slot.stop().await;
                    Ok(())
                }
                Some(slot) => slot.restart().await,
            }
        }
    };
    let t_s = t_s();
    match outcome {
        Ok(()) => info!(%target, action = due.action.label(), t_s, "fault injected"),
        Err(e) => {
            let what = format!("{} {target} at {t_s:.1} s", due.action.label());
            log.fail(run.trial, &run.method.name, &what, e);
            return;
        }
    }
    log.record(
        run.trial,
        &run.method.name,
        t_s,
        due.action.label(),
        &target,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn failures_are_kept_for_the_run_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = FaultLog::create(dir.path()).expect("log");
        log.fail(2, "proposed", "kill b2 at 30.0 s", "no such process");
        assert_eq!(
            log.take_failures(),
            ["trial 2, method proposed: kill b2 at 30.0 s: no such process"]
        );
        assert!(log.take_failures().is_empty());
    }

    #[test]
    fn schedule_hands_out_faults_once_in_time_order() {
        let faults = [
            FaultPlan {
                at: Duration::from_secs(30),
                kind: FaultKind::Kill,
                broker: 1,
                restore_after: Some(Duration::from_secs(10)),
            },
            FaultPlan {
                at: Duration::from_secs(5),
                kind: FaultKind::KillAgent,
                broker: 0,
                restore_after: None,
            },
        ];
        let mut s = Schedule::new(&faults, 1_000);
        assert_eq!(s.due(5_999), vec![]);
        let first = s.due(6_000);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].action, Action::KillAgent);
        assert_eq!(s.due(6_000), vec![]);
        let later = s.due(100_000);
        assert_eq!(
            later.iter().map(|d| d.action).collect::<Vec<_>>(),
            vec![Action::Kill, Action::Restart]
        );
    }
}

//! The one piece of state every connection shares: load table + policy state behind a short,
//! synchronous critical section (never held across an await), and the answers precomputed per
//! broker so the hot path only clones bytes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, DisconnectReasonCode};
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;

use super::groups::{self, Groups, Slot, SubscriberPolicy};
use super::load_table::{LoadTable, TableError};
use super::metrics::{BrokerLabel, DispatcherMetrics, Refusal};
use super::policy::{self, BrokerView, PolicyState};
use super::rebalance::members::{BrokerInflow, GroupMembers};
use super::rebalance::rates::KnownClient;
use super::{BrokerEntry, Decision, DispatcherConfig, FedBy, Policy, Role, Unhinted};
use crate::load_report::LoadReport;
use crate::proto;

struct Inner {
    table: LoadTable,
    state: PolicyState,
    /// Reused for every placement: no allocation on the hot path.
    views: Vec<BrokerView>,
    /// Only with rebalancing: where each client was last sent, and its declared rate.
    clients: Option<HashMap<String, (usize, Option<f64>)>>,
    /// Clients the rebalancer moved: their next CONNECT goes to this broker (if live).
    pins: HashMap<String, usize>,
    /// Subscriber group members placed so far.
    groups: Groups,
}

/// Who is being placed.
#[derive(Debug, Clone, PartialEq)]
pub enum Client<'a> {
    /// By `--policy`; it may have declared its publish rate.
    Publisher { declared_rate: Option<f64> },
    /// By `--subscriber-policy`, as a member of the group of its first filter (and recorded as
    /// a member of every group it names).
    Subscriber { filters: &'a [String] },
}

/// How the client is sent to its broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// CONNACK 0x9C/0x9D to its CONNECT.
    Connack,
    /// DISCONNECT 0x9C/0x9D to a client that was accepted with CONNACK 0x00.
    Disconnect,
}

/// How the client reached the dispatcher: it is sent to the broker's address for the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Plain,
    Tls,
}

pub struct Placer {
    inner: Mutex<Inner>,
    policy: Policy,
    /// CONNACK redirect per broker, config order.
    redirects: Vec<Bytes>,
    /// CONNACK redirect to each broker's TLS address (its plain address when it has none; the
    /// TLS port refuses to start then), config order.
    tls_redirects: Vec<Bytes>,
    /// DISCONNECT redirect per broker (plain and TLS addresses), config order.
    disconnects: Vec<Bytes>,
    tls_disconnects: Vec<Bytes>,
    unavailable: Bytes,
    /// DISCONNECT 0x89 Server busy: no live broker for an accepted client.
    busy: Bytes,
    subscriber_policy: SubscriberPolicy,
    decisions: Option<UnboundedSender<Decision>>,
    /// [`FedBy`] of the loads the policy sees now (changes when Prometheus stops answering).
    fed_by: AtomicU8,
    /// [`DispatcherConfig::fed`].
    fed: Option<Arc<tokio::sync::watch::Sender<bool>>>,
    pub metrics: DispatcherMetrics,
    pub handshake_timeout: Duration,
    pub max_packet_bytes: u32,
    pub unhinted: Unhinted,
}

impl Placer {
    pub fn new(cfg: &DispatcherConfig, decisions: Option<UnboundedSender<Decision>>) -> Self {
        let ids: Vec<String> = cfg.brokers.iter().map(|b| b.id.clone()).collect();
        let fed_by = cfg.load_source.fed_by();
        let metrics = DispatcherMetrics::new(&ids, cfg.reason, fed_by.source_name());
        let redirects = cfg
            .brokers
            .iter()
            .map(|b| proto::redirect_connack(cfg.reason, &b.addr).freeze())
            .collect();
        let tls_addr = |b: &BrokerEntry| b.tls_addr.clone().unwrap_or_else(|| b.addr.clone());
        let tls_redirects = cfg
            .brokers
            .iter()
            .map(|b| proto::redirect_connack(cfg.reason, &tls_addr(b)).freeze())
            .collect();
        let disconnects = cfg
            .brokers
            .iter()
            .map(|b| proto::redirect_disconnect(cfg.reason, &b.addr).freeze())
            .collect();
        let tls_disconnects = cfg
            .brokers
            .iter()
            .map(|b| proto::redirect_disconnect(cfg.reason, &tls_addr(b)).freeze())
            .collect();
        Self {
            inner: Mutex::new(Inner {
                table: LoadTable::new(ids, cfg.metric, cfg.window, cfg.report_interval),
                state: PolicyState::new(cfg.seed),
                views: Vec::with_capacity(cfg.brokers.len()),
                clients: cfg.rebalance.as_ref().map(|_| HashMap::new()),
                pins: HashMap::new(),
                groups: Groups::new(cfg.brokers.len()),
            }),
            policy: cfg.policy,
            redirects,
            tls_redirects,
            disconnects,
            tls_disconnects,
            unavailable: proto::refusal_connack(ConnectReturnCode::ServerUnavailable).freeze(),
            busy: proto::disconnect_packet(DisconnectReasonCode::ServerBusy).freeze(),
            subscriber_policy: cfg.subscriber_policy,
            decisions,
            fed_by: AtomicU8::new(fed_by as u8),
            fed: cfg.fed.clone(),
            metrics,
            handshake_timeout: cfg.handshake_timeout,
            max_packet_bytes: cfg.max_packet_bytes,
            unhinted: cfg.unhinted,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere cannot leave the table half-updated in a way that matters more than
        // refusing every later client would.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Chooses a broker for `client_id`, records the placement and returns the CONNACK to send
    /// (a redirect, or 0x88 Server unavailable when no broker is live).
    pub fn place(&self, client_id: &str) -> Bytes {
        self.place_over(client_id, None, Transport::Plain)
    }

    /// [`Self::place`] for a client that came over `transport` and may have declared its
    /// publish rate in its CONNECT. A client the rebalancer pinned goes to its pinned broker
    /// (if live) instead of the policy's choice.
    pub fn place_over(
        &self,
        client_id: &str,
        declared_rate: Option<f64>,
        transport: Transport,
    ) -> Bytes {
        let who = Client::Publisher { declared_rate };
        self.answer(client_id, &who, transport, Answer::Connack)
    }

    /// Places `who` and returns the packet that sends it there: a CONNACK (0x9C/0x9D, or 0x88
    /// when no broker is live) to a CONNECT, or a DISCONNECT (0x9C/0x9D, or 0x89 Server busy)
    /// to a client already accepted.
    pub fn answer(
        &self,
        client_id: &str,
        who: &Client<'_>,
        transport: Transport,
        answer: Answer,
    ) -> Bytes {
        let chosen = self.decide(client_id, who);
        match chosen {
            Some(i) => {
                self.metrics.redirected(i);
                tracing::debug!(client_id, broker = i, ?answer, "redirected");
                let table = match (answer, transport) {
                    (Answer::Connack, Transport::Plain) => &self.redirects,
                    (Answer::Connack, Transport::Tls) => &self.tls_redirects,
                    (Answer::Disconnect, Transport::Plain) => &self.disconnects,
                    (Answer::Disconnect, Transport::Tls) => &self.tls_disconnects,
                };
                table[i].clone()
            }
            None => {
                self.metrics.refused(Refusal::ServerUnavailable);
                tracing::warn!(client_id, "no live broker: refused");
                match answer {
                    Answer::Connack => self.unavailable.clone(),
                    Answer::Disconnect => self.busy.clone(),
                }
            }
        }
    }

    /// The policy's (or the pin's) choice for `who`, recorded, and its decision sent.
    fn decide(&self, client_id: &str, who: &Client<'_>) -> Option<usize> {
        let now = Instant::now();
        let (chosen, decision) = {
            let mut guard = self.lock();
            let inner = &mut *guard;
            inner.table.views(now, &mut inner.views);
            let pinned = inner
                .pins
                .remove(client_id)
                .filter(|&i| inner.views.get(i).is_some_and(|v| v.live));
            let chosen = match who {
                Client::Publisher { .. } => {
                    pinned.or_else(|| policy::choose(self.policy, &inner.views, &mut inner.state))
                }
                Client::Subscriber { filters } => pinned.or_else(|| {
                    let group = filters.first()?;
                    subscriber_choice(self.subscriber_policy, inner, group, client_id, now)
                }),
            };
            if let Some(i) = chosen {
                match who {
                    Client::Publisher { declared_rate } => {
                        // The burst-safe prediction counts publishers: a subscriber adds no
                        // inflow to its broker.
                        inner.table.place(i, now);
                        if let Some(clients) = &mut inner.clients {
                            clients.insert(client_id.to_owned(), (i, *declared_rate));
                        }
                    }
                    Client::Subscriber { filters } => inner.groups.record(client_id, filters, i),
                }
            }
            let decision = self.decisions.as_ref().map(|_| {
                // What the policy saw: the views from before this client was placed.
                let per_broker = |f: fn(&BrokerView) -> f64| {
                    let ids = inner.table.ids().iter();
                    ids.zip(&inner.views)
                        .map(|(id, v)| (id.clone(), f(v)))
                        .collect()
                };
                let t_ms = crate::now_ms();
                let ages = inner.table.sample_ages_ms(t_ms);
                let (role, group) = match who {
                    Client::Publisher { .. } => (Role::Publisher, None),
                    Client::Subscriber { filters } => (Role::Subscriber, filters.first().cloned()),
                };
                Decision {
                    t_ms,
                    client_id: client_id.to_owned(),
                    broker: chosen.map(|i| inner.table.ids()[i].clone()),
                    loads: per_broker(|v| v.load),
                    predicted: per_broker(|v| v.pending),
                    sample_ages_ms: inner.table.ids().iter().cloned().zip(ages).collect(),
                    fed_by: self.fed_by(),
                    role,
                    group,
                }
            });
            (chosen, decision)
        };
        if let (Some(tx), Some(d)) = (&self.decisions, decision) {
            // The receiver going away (its owner stopped listening) must not stop placement.
            let _ = tx.send(d);
        }
        chosen
    }

    /// The member rebalancer's inputs at `now`: per broker (live, window msgs/s received), and
    /// every group's members per broker as this dispatcher placed and moved them.
    pub fn member_inputs(&self, now: Instant) -> (Vec<BrokerInflow>, Vec<GroupMembers>) {
        let inner = self.lock();
        let brokers = (inner.table.inflows(now).into_iter())
            .map(|(live, rate)| BrokerInflow { live, rate })
            .collect();
        let groups = (inner.groups.names().into_iter())
            .map(|group| GroupMembers {
                on: (0..inner.table.ids().len())
                    .map(|b| inner.groups.members_on(&group, b))
                    .collect(),
                group,
            })
            .collect();
        (brokers, groups)
    }

    /// The rebalancer's inputs at `now`: per broker (live, newest msgs/s), and every client this
    /// dispatcher placed with where it is now (empty unless rebalancing is on).
    pub fn rebalance_inputs(&self, now: Instant) -> (Vec<(bool, Option<f64>)>, Vec<KnownClient>) {
        let inner = self.lock();
        let brokers = inner.table.latest_rates(now);
        let mut clients: Vec<KnownClient> = inner
            .clients
            .iter()
            .flatten()
            .map(|(id, &(broker, declared))| KnownClient {
                id: id.clone(),
                broker,
                declared,
            })
            .collect();
        // HashMap order is random: the planner's ties must not be.
        clients.sort_by(|a, b| a.id.cmp(&b.id));
        (brokers, clients)
    }

    /// The rebalancer moved `client_id` to broker `to`: its next CONNECT here goes there, and it
    /// counts there from now on.
    pub fn pin(&self, client_id: &str, to: usize) {
        let mut inner = self.lock();
        inner.pins.insert(client_id.to_owned(), to);
        inner.groups.relocate(client_id, to);
        if let Some(c) = inner.clients.as_mut().and_then(|c| c.get_mut(client_id)) {
            c.0 = to;
        }
    }

    /// Clients a broker says are not connected (a move answered `not-connected`): forget them.
    pub fn forget(&self, client_id: &str) {
        let mut inner = self.lock();
        inner.pins.remove(client_id);
        inner.groups.forget(client_id);
        if let Some(c) = inner.clients.as_mut() {
            c.remove(client_id);
        }
    }

    pub fn broker_ids(&self) -> Vec<String> {
        self.lock().table.ids().to_vec()
    }

    pub fn knows(&self, broker: &str) -> bool {
        self.lock().table.knows(broker)
    }

    pub fn record(&self, report: &LoadReport) -> Result<(), TableError> {
        let mut inner = self.lock();
        inner.table.record(report, Instant::now())?;
        if let Some(fed) = &self.fed
            && !*fed.borrow()
            && inner.table.every_broker_sampled()
        {
            fed.send_replace(true);
        }
        Ok(())
    }

    pub fn fed_by(&self) -> FedBy {
        FedBy::from_u8(self.fed_by.load(Ordering::Relaxed))
    }

    pub fn set_fed_by(&self, fed_by: FedBy) {
        self.fed_by.store(fed_by as u8, Ordering::Relaxed);
    }

    /// Brings the per-broker gauges of `/metrics` up to date with the load table.
    pub fn refresh_metrics(&self) {
        let now = Instant::now();
        let mut views = Vec::new();
        let guard = self.lock();
        guard.table.views(now, &mut views);
        let m = &self.metrics;
        for (i, (id, v)) in guard.table.ids().iter().zip(&views).enumerate() {
            let label = BrokerLabel { broker: id.clone() };
            m.broker_load.get_or_create(&label).set(v.load);
            m.broker_predicted.get_or_create(&label).set(v.pending);
            m.broker_up.get_or_create(&label).set(i64::from(v.live));
            match guard.table.sample_age(i, now) {
                Some(age) => {
                    m.broker_age.get_or_create(&label).set(age.as_secs_f64());
                }
                None => {
                    m.broker_age.remove(&label);
                }
            }
        }
    }
}

/// The subscriber policy's choice for `client_id` as a member of `group` at `now` (not counting
/// its own earlier placement).
fn subscriber_choice(
    policy: SubscriberPolicy,
    inner: &Inner,
    group: &str,
    client_id: &str,
    now: Instant,
) -> Option<usize> {
    let inflows = inner.table.inflows(now);
    let counts = inner.groups.counts_without(group, client_id);
    let slots: Vec<Slot> = (inflows.into_iter().zip(counts))
        .map(|((live, inflow), members)| Slot {
            live,
            inflow,
            members,
        })
        .collect();
    groups::choose(policy, &slots, inner.groups.joined(group))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatcher::Metric;

    fn two_brokers(policy: Policy) -> DispatcherConfig {
        let brokers = ["b1", "b2"]
            .map(|id| BrokerEntry {
                id: id.into(),
                addr: format!("{id}.example:1883"),
                tls_addr: None,
            })
            .to_vec();
        DispatcherConfig::new(brokers, policy)
    }

    fn placer(
        policy: Policy,
        metric: Metric,
    ) -> (Placer, tokio::sync::mpsc::UnboundedReceiver<Decision>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut cfg = two_brokers(policy);
        cfg.metric = metric;
        let p = Placer::new(&cfg, Some(tx));
        for broker in ["b1", "b2"] {
            p.record(&report(broker)).unwrap();
        }
        (p, rx)
    }

    fn report(broker: &str) -> LoadReport {
        LoadReport {
            broker: broker.into(),
            t_ms: 1_000,
            cpu_pct: 20.0,
            msgs_in_per_s: None,
            connections: None,
            token: None,
        }
    }

    fn pending(p: &Placer) -> Vec<f64> {
        let mut views = Vec::new();
        p.lock().table.views(Instant::now(), &mut views);
        views.iter().map(|v| v.pending).collect()
    }

    #[test]
    fn fed_once_every_broker_has_a_sample_and_decisions_date_their_inputs() {
        let (fed_tx, fed_rx) = tokio::sync::watch::channel(false);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut cfg = two_brokers(Policy::LeastCpu);
        cfg.fed = Some(Arc::new(fed_tx));
        let p = Placer::new(&cfg, Some(tx));
        p.record(&report("b1")).unwrap();
        assert!(!*fed_rx.borrow(), "b2 has no sample yet");
        p.place("c0");
        let d = rx.try_recv().unwrap();
        let now = d.t_ms;
        assert_eq!(d.sample_ages_ms[1], ("b2".into(), None));
        assert_eq!(d.sample_ages_ms[0].1, Some(now - 1_000));
        p.record(&report("b2")).unwrap();
        assert!(*fed_rx.borrow());
    }

    /// A burst of 1000 placements between two samples of two equally loaded brokers.
    fn burst_split(policy: Policy) -> [usize; 2] {
        let (p, mut rx) = placer(policy, Metric::Cpu);
        let mut counts = [0; 2];
        for k in 0..1000 {
            let answer = p.place(&format!("c{k}"));
            let d = rx.try_recv().unwrap();
            assert_eq!(d.loads, [("b1".into(), 20.0), ("b2".into(), 20.0)]);
            let i = match d.broker.as_deref() {
                Some("b1") => 0,
                Some("b2") => 1,
                other => panic!("{other:?}"),
            };
            assert_eq!(
                answer, p.redirects[i],
                "the answer names the decided broker"
            );
            counts[i] += 1;
        }
        counts
    }

    #[test]
    fn least_load_spreads_a_burst_least_cpu_does_not() {
        let spread = burst_split(Policy::LeastLoad);
        assert!(spread.iter().all(|&c| c <= 520), "least-load {spread:?}");
        assert_eq!(burst_split(Policy::LeastCpu), [1000, 0]);
    }

    #[test]
    fn subscribers_follow_the_inflow_and_the_rebalancer_sees_each_group() {
        let (p, mut rx) = placer(Policy::RoundRobin, Metric::Cpu);
        for (broker, rate) in [("b1", 1000.0), ("b2", 3000.0)] {
            let mut r = report(broker);
            r.msgs_in_per_s = Some(rate);
            p.record(&r).unwrap();
        }
        let group = ["$share/g/load/#".to_owned()];
        let who = Client::Subscriber { filters: &group };
        let on: Vec<usize> = (0..4)
            .map(|k| {
                let answer = p.answer(&format!("s{k}"), &who, Transport::Plain, Answer::Connack);
                let i = p.redirects.iter().position(|r| *r == answer).unwrap();
                let d = rx.try_recv().unwrap();
                assert_eq!(
                    (d.role, d.group.as_deref()),
                    (Role::Subscriber, Some(&*group[0]))
                );
                i
            })
            .collect();
        // Each broker its first member (the one with more inflow first), then by inflow per
        // member: 3000/1 and 1500 against 1000/1.
        assert_eq!(on, [1, 0, 1, 1]);
        let members = |p: &Placer| p.member_inputs(Instant::now()).1;
        assert_eq!(members(&p)[0].on, [vec!["s1"], vec!["s0", "s2", "s3"]]);
        let (inflows, _) = p.member_inputs(Instant::now());
        assert_eq!(
            inflows.iter().map(|b| b.rate).collect::<Vec<_>>(),
            [1000.0, 3000.0]
        );
        // A member the rebalancer moves counts where it went.
        p.pin("s3", 0);
        assert_eq!(members(&p)[0].on, [vec!["s1", "s3"], vec!["s0", "s2"]]);
        assert_eq!(members(&p)[0].group, group[0]);
        // Without a hint a publisher still goes by `--policy`; a DISCONNECT answer names the
        // same broker.
        let pubr = Client::Publisher {
            declared_rate: None,
        };
        let answer = p.answer("pub", &pubr, Transport::Plain, Answer::Disconnect);
        assert_eq!(answer, p.disconnects[0], "round-robin's first");
    }

    /// Paused clock: the placer stamps placements and reports with `Instant::now()`.
    #[tokio::test(start_paused = true)]
    async fn a_placement_stays_predicted_until_a_report_that_can_show_it() {
        let ms = Duration::from_millis;
        for (metric, lag) in [(Metric::Cpu, ms(1_000)), (Metric::MsgRate, ms(2_000))] {
            let (p, mut rx) = placer(Policy::LeastLoad, metric);
            p.place("c0");
            let placed = Instant::now();
            let d0 = rx.try_recv().unwrap();
            assert_eq!(d0.broker.as_deref(), Some("b1"));
            assert_eq!(d0.predicted, [("b1".into(), 0.0), ("b2".into(), 0.0)]);
            let full = pending(&p)[0];
            assert!(full > 0.0, "{metric:?}");

            // Right after, and just before the lag: these reports cannot include the client.
            for at in [ms(100), lag - ms(1)] {
                tokio::time::advance(placed + at - Instant::now()).await;
                p.record(&report("b1")).unwrap();
                assert_eq!(pending(&p)[0], full, "{metric:?} at {at:?}");
            }
            // The next decision carries the prediction it was made with.
            p.place("c1");
            let d1 = rx.try_recv().unwrap();
            assert_eq!(d1.predicted[0], ("b1".into(), full), "{metric:?}");

            // A report one lag after the placement can show it: the prediction starts to fade...
            tokio::time::advance(placed + lag - Instant::now()).await;
            p.record(&report("b1")).unwrap();
            let fading = pending(&p)[0];
            assert!(fading > 0.0 && fading < full, "{metric:?}: {fading}");
            // ...and retires once every sample in the window can show it.
            for _ in 0..5 {
                tokio::time::advance(Duration::from_secs(1)).await;
                p.record(&report("b1")).unwrap();
            }
            assert_eq!(pending(&p)[0], 0.0, "{metric:?}");
        }
    }
}

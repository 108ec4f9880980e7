//! The rebalancer's side of the Mosquitto plugin's control topic: JSON orders on
//! [`CONTROL_TOPIC`], answers on [`RESPONSE_TOPIC`], over one rumqttc v5 connection per broker.
//!
//! One request at a time per broker (a lock around the exchange): each answer is matched to its
//! request by `id` (answers without one, `hello` and `error`, go to the request in flight).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::{Mutex, mpsc};
use tokio_util::task::AbortOnDropHandle;

use crate::addr::HostPort;
use crate::proto::RedirectReason;

pub const CONTROL_TOPIC: &str = "$CONTROL/mqdispatch/v1";
pub const RESPONSE_TOPIC: &str = "$CONTROL/mqdispatch/v1/response";
/// Bound on one order's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(3);

/// PUBLISH packets this process's control connections wrote, per broker address. The broker
/// counts them among the messages it received (Mosquitto's
/// `$SYS/broker/publish/messages/received`): a harness counting delivery takes them out
/// ([`take_published`]). Process-wide because the connections live inside the dispatcher.
static PUBLISHED: std::sync::Mutex<BTreeMap<String, u64>> = std::sync::Mutex::new(BTreeMap::new());

fn note_published(addr: &str) {
    let mut published = PUBLISHED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    *published.entry(addr.to_owned()).or_default() += 1;
}

/// Control PUBLISH packets written to the broker at `addr` since the last call (and forgets
/// them: a later broker may get the same port).
pub fn take_published(addr: &str) -> u64 {
    PUBLISHED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .remove(addr)
        .unwrap_or(0)
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("bad broker address: {0}")]
    Addr(String),
    #[error("connection: {0}")]
    Connection(String),
    #[error(
        "no answer on {RESPONSE_TOPIC} within {0:?}: is the mqdispatch plugin loaded \
         (`plugin /path/libmqdispatch_mosquitto_plugin.so` in mosquitto.conf)?"
    )]
    NoAnswer(Duration),
    #[error("plugin error: {0}")]
    Plugin(String),
    #[error("unexpected answer: {0}")]
    Unexpected(String),
}

/// An order, as the plugin reads it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    Hello,
    Move {
        id: String,
        client_id: String,
        server_reference: String,
        reason_code: u8,
    },
    Rates {
        id: String,
    },
}

/// Any answer of the plugin (fields by op; unknown fields ignored).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct Response {
    pub op: String,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub mechanism: Option<String>,
    #[serde(default)]
    pub result: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub t_ms: Option<u64>,
    #[serde(default)]
    pub clients: Option<HashMap<String, Counts>>,
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize)]
pub struct Counts {
    pub msgs: u64,
    #[serde(default)]
    pub bytes: u64,
}

/// What a `move` order did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveResult {
    Disconnect9c,
    Kick98,
    NotConnected,
}

impl Response {
    fn into_error(self) -> ControlError {
        match self.error {
            Some(e) => ControlError::Plugin(e),
            None => ControlError::Unexpected(format!("{self:?}")),
        }
    }

    /// A `move` answer's result (pure).
    pub fn move_result(self) -> Result<MoveResult, ControlError> {
        match (self.op.as_str(), self.result.as_deref()) {
            ("move", Some("disconnect-0x9c")) => Ok(MoveResult::Disconnect9c),
            ("move", Some("kick-0x98")) => Ok(MoveResult::Kick98),
            ("move", Some("not-connected")) => Ok(MoveResult::NotConnected),
            _ => Err(self.into_error()),
        }
    }
}

/// Per-client msgs/s from two cumulative `rates` answers (pure): clients in both, over the time
/// between them; `None` if no time passed.
pub fn rates_between(
    before: (u64, &HashMap<String, Counts>),
    after: (u64, &HashMap<String, Counts>),
) -> Option<HashMap<String, f64>> {
    let dt = after.0.checked_sub(before.0).filter(|&d| d > 0)? as f64 / 1000.0;
    Some(
        after
            .1
            .iter()
            .filter_map(|(id, a)| {
                let b = before.1.get(id)?;
                Some((id.clone(), a.msgs.saturating_sub(b.msgs) as f64 / dt))
            })
            .collect(),
    )
}

struct Exchange {
    client: AsyncClient,
    answers: mpsc::UnboundedReceiver<Response>,
    next_id: u64,
    last_rates: Option<(u64, HashMap<String, Counts>)>,
}

/// One broker's control connection.
pub struct ControlClient {
    broker: String,
    exchange: Mutex<Exchange>,
    /// What the plugin said a move sends (`disconnect-0x9c` or `kick-0x98`).
    pub mechanism: String,
    _poll: AbortOnDropHandle<()>,
}

impl ControlClient {
    /// Connects to the broker at `addr`, subscribes to the answers and says `hello`.
    pub async fn connect(addr: &str, broker: &str) -> Result<Self, ControlError> {
        let target: HostPort = addr
            .parse()
            .map_err(|e| ControlError::Addr(format!("{e}")))?;
        let mut options = MqttOptions::new(
            format!("mqdispatch-rebalancer-{broker}"),
            target.host(),
            target.port(),
        );
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_outgoing_inflight_upper_limit(16);
        let (client, mut eventloop) = AsyncClient::new(options, 16);
        let (tx, answers) = mpsc::unbounded_channel();
        let (subscribed_tx, mut subscribed) = mpsc::unbounded_channel();
        let broker_id = broker.to_owned();
        let broker_addr = addr.to_owned();
        let poll = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    // Every write, retransmissions included: each is a PUBLISH the broker counts.
                    Ok(Event::Outgoing(Outgoing::Publish(_))) => note_published(&broker_addr),
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = subscribed_tx.send(Ok(()));
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) if p.topic == RESPONSE_TOPIC => {
                        match serde_json::from_slice::<Response>(&p.payload) {
                            Ok(r) => {
                                let _ = tx.send(r);
                            }
                            Err(e) => {
                                tracing::warn!(broker = %broker_id, error = %e, "unreadable control answer")
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = subscribed_tx.send(Err(e.to_string()));
                        tracing::debug!(broker = %broker_id, error = %e, "control connection");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        let poll = AbortOnDropHandle::new(poll);
        client
            .subscribe(RESPONSE_TOPIC, QoS::AtLeastOnce)
            .await
            .map_err(|e| ControlError::Connection(e.to_string()))?;
        match tokio::time::timeout(ANSWER_TIMEOUT, subscribed.recv()).await {
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(e))) => {
                return Err(ControlError::Connection(format!(
                    "{e} (on subscribing to {RESPONSE_TOPIC}: is this a Mosquitto with the \
                     mqdispatch plugin?)"
                )));
            }
            Ok(None) | Err(_) => {
                return Err(ControlError::Connection(format!(
                    "no SUBACK for {RESPONSE_TOPIC} within {ANSWER_TIMEOUT:?}"
                )));
            }
        }
        let mut me = Self {
            broker: broker.to_owned(),
            exchange: Mutex::new(Exchange {
                client,
                answers,
                next_id: 0,
                last_rates: None,
            }),
            mechanism: String::new(),
            _poll: poll,
        };
        let hello = me.request(Request::Hello, None).await?;
        me.mechanism = hello
            .mechanism
            .ok_or_else(|| ControlError::Unexpected("hello without a mechanism".into()))?;
        tracing::info!(broker = %me.broker, mechanism = %me.mechanism, "mosquitto plugin ready");
        Ok(me)
    }

    async fn request(&self, req: Request, id: Option<&str>) -> Result<Response, ControlError> {
        let mut ex = self.exchange.lock().await;
        // Answers to requests that timed out earlier are stale.
        while ex.answers.try_recv().is_ok() {}
        let payload =
            serde_json::to_vec(&req).map_err(|e| ControlError::Unexpected(e.to_string()))?;
        ex.client
            .publish(CONTROL_TOPIC, QoS::AtLeastOnce, false, payload)
            .await
            .map_err(|e| ControlError::Connection(e.to_string()))?;
        let wait = async {
            while let Some(answer) = ex.answers.recv().await {
                match (&answer.id, id) {
                    (Some(got), Some(want)) if got != want => continue,
                    _ => return Some(answer),
                }
            }
            None
        };
        match tokio::time::timeout(ANSWER_TIMEOUT, wait).await {
            Ok(Some(answer)) if answer.op == "error" => Err(answer.into_error()),
            Ok(Some(answer)) => Ok(answer),
            Ok(None) => Err(ControlError::Connection("control task ended".into())),
            Err(_) => Err(ControlError::NoAnswer(ANSWER_TIMEOUT)),
        }
    }

    async fn fresh_id(&self) -> String {
        let mut ex = self.exchange.lock().await;
        ex.next_id += 1;
        format!("{}-{}", self.broker, ex.next_id)
    }

    /// Orders the plugin to send `client_id` to `server_reference`.
    pub async fn move_client(
        &self,
        client_id: &str,
        server_reference: &str,
        reason: RedirectReason,
    ) -> Result<MoveResult, ControlError> {
        let id = self.fresh_id().await;
        let reason_code = match reason {
            RedirectReason::UseAnotherServer => 0x9C,
            RedirectReason::ServerMoved => 0x9D,
        };
        let req = Request::Move {
            id: id.clone(),
            client_id: client_id.to_owned(),
            server_reference: server_reference.to_owned(),
            reason_code,
        };
        self.request(req, Some(&id)).await?.move_result()
    }

    /// Per-client msgs/s since the previous call (`None` on the first call).
    pub async fn rates(&self) -> Result<Option<HashMap<String, f64>>, ControlError> {
        let id = self.fresh_id().await;
        let answer = self
            .request(Request::Rates { id: id.clone() }, Some(&id))
            .await?;
        let (Some(t_ms), Some(clients)) = (answer.t_ms, answer.clients) else {
            return Err(ControlError::Unexpected(
                "rates answer without t_ms or clients".into(),
            ));
        };
        let mut ex = self.exchange.lock().await;
        let rates = ex
            .last_rates
            .as_ref()
            .and_then(|(t0, before)| rates_between((*t0, before), (t_ms, &clients)));
        ex.last_rates = Some((t_ms, clients));
        Ok(rates)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_are_the_contract_payloads() {
        let hello = serde_json::to_value(Request::Hello).unwrap();
        assert_eq!(hello, serde_json::json!({"op": "hello"}));
        let m = Request::Move {
            id: "b1-1".into(),
            client_id: "t1-x-light-3".into(),
            server_reference: "127.0.0.1:1884".into(),
            reason_code: 0x9C,
        };
        assert_eq!(
            serde_json::to_value(m).unwrap(),
            serde_json::json!({"op": "move", "id": "b1-1", "client_id": "t1-x-light-3",
                "server_reference": "127.0.0.1:1884", "reason_code": 156})
        );
        let r = serde_json::to_value(Request::Rates { id: "7".into() }).unwrap();
        assert_eq!(r, serde_json::json!({"op": "rates", "id": "7"}));
    }

    #[test]
    fn answers_parse_and_map() {
        let parse = |s: &str| serde_json::from_str::<Response>(s).unwrap();
        let a = parse(r#"{"op":"move","id":"1","client_id":"c","result":"kick-0x98"}"#);
        assert_eq!(a.move_result().unwrap(), MoveResult::Kick98);
        let a = parse(r#"{"op":"move","id":"1","client_id":"c","result":"error","error":"boom"}"#);
        assert!(matches!(a.move_result(), Err(ControlError::Plugin(e)) if e == "boom"));
        let before =
            parse(r#"{"op":"rates","id":"1","t_ms":1000,"clients":{"a":{"msgs":100,"bytes":6}}}"#);
        let after = parse(
            r#"{"op":"rates","id":"2","t_ms":3000,"clients":{"a":{"msgs":4100,"bytes":9},"b":{"msgs":5,"bytes":1}}}"#,
        );
        let rates = rates_between(
            (before.t_ms.unwrap(), before.clients.as_ref().unwrap()),
            (after.t_ms.unwrap(), after.clients.as_ref().unwrap()),
        )
        .unwrap();
        assert_eq!(rates, HashMap::from([("a".to_owned(), 2000.0)]));
    }
}

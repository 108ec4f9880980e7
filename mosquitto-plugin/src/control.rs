//! The control protocol on `$CONTROL/mqdispatch/v1` (pure: parsing, answers, the client table).
//! The wire format is the contract in the README ("Mosquitto plugin"): one JSON object per
//! message, answers on `$CONTROL/mqdispatch/v1/response`.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::{Value, json};

pub const TOPIC: &str = "$CONTROL/mqdispatch/v1";
pub const RESPONSE_TOPIC: &str = "$CONTROL/mqdispatch/v1/response";

/// DISCONNECT reasons a move may carry: 0x9C use another server, 0x9D server moved.
pub const USE_ANOTHER_SERVER: u8 = 0x9C;
pub const SERVER_MOVED: u8 = 0x9D;

/// What a move sends, decided once at start-up from the symbols the broker exports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    /// DISCONNECT with the requested reason and a Server Reference (broker internals).
    Disconnect,
    /// `mosquitto_kick_client_by_clientid`: DISCONNECT 0x98 administrative action, no properties.
    Kick,
}

impl Mechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::Disconnect => "disconnect-0x9c",
            Mechanism::Kick => "kick-0x98",
        }
    }
}

/// What happened to one move order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MoveOutcome {
    Disconnected,
    Kicked,
    NotConnected,
    Error(String),
}

impl MoveOutcome {
    fn as_str(&self) -> &'static str {
        match self {
            MoveOutcome::Disconnected => "disconnect-0x9c",
            MoveOutcome::Kicked => "kick-0x98",
            MoveOutcome::NotConnected => "not-connected",
            MoveOutcome::Error(_) => "error",
        }
    }
}

#[derive(Debug, PartialEq, Eq, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    Hello,
    Move {
        #[serde(default)]
        id: String,
        client_id: String,
        server_reference: String,
        #[serde(default = "default_reason")]
        reason_code: u8,
    },
    Rates {
        #[serde(default)]
        id: String,
    },
}

fn default_reason() -> u8 {
    USE_ANOTHER_SERVER
}

/// Parses one control payload; `Err` is the text of an `{"op":"error"}` answer.
pub fn parse(payload: &[u8]) -> Result<Request, String> {
    let request: Request =
        serde_json::from_slice(payload).map_err(|e| format!("bad request: {e}"))?;
    if let Request::Move {
        client_id,
        server_reference,
        reason_code,
        ..
    } = &request
    {
        if client_id.is_empty() {
            return Err("bad request: move needs a non-empty client_id".into());
        }
        if server_reference.is_empty() || server_reference.contains('\0') {
            return Err("bad request: move needs a server_reference such as host:port".into());
        }
        if client_id.contains('\0') {
            return Err("bad request: client_id contains NUL".into());
        }
        if *reason_code != USE_ANOTHER_SERVER && *reason_code != SERVER_MOVED {
            return Err(format!(
                "bad request: reason_code {reason_code} is not 156 (use another server) or 157 (server moved)"
            ));
        }
    }
    Ok(request)
}

pub fn error_answer(error: &str) -> Value {
    json!({"op": "error", "error": error})
}

pub fn hello_answer(mechanism: Mechanism) -> Value {
    json!({"op": "hello", "mechanism": mechanism.as_str(), "version": env!("CARGO_PKG_VERSION")})
}

pub fn move_answer(id: &str, client_id: &str, outcome: &MoveOutcome) -> Value {
    let mut answer =
        json!({"op": "move", "id": id, "client_id": client_id, "result": outcome.as_str()});
    if let MoveOutcome::Error(e) = outcome {
        answer["error"] = Value::from(e.as_str());
    }
    answer
}

/// Per connected client: its id and what it has published so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counts {
    pub client_id: String,
    pub msgs: u64,
    pub bytes: u64,
}

/// Connected clients that have published, keyed by the broker's context pointer. An entry lives
/// from the client's first PUBLISH to its MOSQ_EVT_DISCONNECT, which the broker raises before a
/// context can be freed: so a pointer found here is a live context.
#[derive(Debug, Default)]
pub struct Clients {
    by_context: HashMap<usize, Counts>,
}

impl Clients {
    /// Counts one PUBLISH; `client_id` is asked only for a context seen the first time.
    pub fn on_message(&mut self, context: usize, bytes: u64, client_id: impl FnOnce() -> String) {
        let counts = self.by_context.entry(context).or_insert_with(|| Counts {
            client_id: client_id(),
            msgs: 0,
            bytes: 0,
        });
        counts.msgs += 1;
        counts.bytes += bytes;
    }

    pub fn forget(&mut self, context: usize) {
        self.by_context.remove(&context);
    }

    /// The live context of a client id, if it has published since it connected.
    pub fn context_of(&self, client_id: &str) -> Option<usize> {
        self.by_context
            .iter()
            .find(|(_, c)| c.client_id == client_id)
            .map(|(&ctx, _)| ctx)
    }

    pub fn rates_answer(&self, id: &str, t_ms: u64) -> Value {
        let clients: serde_json::Map<String, Value> = self
            .by_context
            .values()
            .map(|c| {
                (
                    c.client_id.clone(),
                    json!({"msgs": c.msgs, "bytes": c.bytes}),
                )
            })
            .collect();
        json!({"op": "rates", "id": id, "t_ms": t_ms, "clients": clients})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_ops() {
        assert_eq!(parse(br#"{"op":"hello"}"#), Ok(Request::Hello));
        assert_eq!(
            parse(br#"{"op":"move","id":"m1","client_id":"x","server_reference":"127.0.0.1:1884","reason_code":157}"#),
            Ok(Request::Move {
                id: "m1".into(),
                client_id: "x".into(),
                server_reference: "127.0.0.1:1884".into(),
                reason_code: 157
            })
        );
        assert_eq!(
            parse(br#"{"op":"move","client_id":"x","server_reference":"h:1"}"#),
            Ok(Request::Move {
                id: String::new(),
                client_id: "x".into(),
                server_reference: "h:1".into(),
                reason_code: 0x9C
            })
        );
        assert_eq!(
            parse(br#"{"op":"rates","id":"r"}"#),
            Ok(Request::Rates { id: "r".into() })
        );
    }

    #[test]
    fn rejects_malformed_and_unknown_requests() {
        for bad in [
            &b"not json"[..],
            br#"{"op":"jump"}"#,
            br#"{"client_id":"x"}"#,
            br#"{"op":"move","client_id":"","server_reference":"h:1"}"#,
            br#"{"op":"move","client_id":"x","server_reference":""}"#,
            br#"{"op":"move","client_id":"x","server_reference":"h:1","reason_code":152}"#,
            br#"{"op":"move","client_id":"x\u0000y","server_reference":"h:1"}"#,
            b"\xff\xfe",
        ] {
            let e = parse(bad).expect_err(&String::from_utf8_lossy(bad));
            assert!(e.starts_with("bad request"), "{e}");
        }
    }

    #[test]
    fn answers_follow_the_contract() {
        assert_eq!(
            hello_answer(Mechanism::Kick),
            json!({"op":"hello","mechanism":"kick-0x98","version":env!("CARGO_PKG_VERSION")})
        );
        assert_eq!(
            move_answer("m", "x", &MoveOutcome::Disconnected),
            json!({"op":"move","id":"m","client_id":"x","result":"disconnect-0x9c"})
        );
        assert_eq!(
            move_answer("m", "x", &MoveOutcome::Error("boom".into())),
            json!({"op":"move","id":"m","client_id":"x","result":"error","error":"boom"})
        );
        assert_eq!(error_answer("e"), json!({"op":"error","error":"e"}));
    }

    #[test]
    fn client_table_counts_and_forgets_by_context() {
        let mut t = Clients::default();
        for _ in 0..3 {
            t.on_message(1, 10, || "a".into());
        }
        t.on_message(2, 5, || "b".into());
        // The id is asked only once per context.
        t.on_message(1, 10, || unreachable!("id asked twice"));
        assert_eq!(t.context_of("a"), Some(1));
        assert_eq!(
            t.rates_answer("r", 7),
            json!({"op":"rates","id":"r","t_ms":7,"clients":{"a":{"msgs":4,"bytes":40},"b":{"msgs":1,"bytes":5}}})
        );
        // A takeover: a new context with the same id; the old one's disconnect forgets only it.
        t.on_message(3, 1, || "a".into());
        t.forget(1);
        assert_eq!(t.context_of("a"), Some(3));
        t.forget(3);
        assert_eq!(t.context_of("a"), None);
    }
}

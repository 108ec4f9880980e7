//! The CONNECT path of the dispatcher as a pure function of the bytes a client sends: read the
//! first packet with `proto::read_hello` (from a reader that hands the bytes over in chunks, so
//! the incremental framing is exercised), then build the answer the dispatcher would send
//! (`Placer::place` for v5, the 3.1.1 refusal for 3.x) and check it parses back.
//!
//! Shared by the cargo-fuzz target (fuzz_targets/connect.rs) and the stable replay test in the
//! main crate (tests/it/faults/fuzz_replay.rs), which includes this file with `#[path]`.

use std::io;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use bytes::BytesMut;
use mqdispatch::dispatcher::placer::Placer;
use mqdispatch::dispatcher::{BrokerEntry, DispatcherConfig, Policy};
use mqdispatch::proto::{self, Hello, ProtoError};
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet};
use tokio::io::{AsyncRead, ReadBuf};

/// The reference every v5 client must be redirected to.
pub const BROKER: &str = "127.0.0.1:1883";

/// Hands `data` over `chunk` bytes per read (then EOF), like a slow client.
struct Chunked<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.chunk.min(self.data.len()).min(buf.remaining());
        buf.put_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Poll::Ready(Ok(()))
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
    })
}

fn placer() -> &'static Placer {
    static PLACER: OnceLock<Placer> = OnceLock::new();
    PLACER.get_or_init(|| {
        let broker = BrokerEntry {
            id: "b1".into(),
            addr: BROKER.into(),
            tls_addr: None,
        };
        Placer::new(
            &DispatcherConfig::new(vec![broker], Policy::RoundRobin),
            None,
        )
    })
}

/// The outcome, for the replay test's expectations.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Redirected,
    LegacyRefused,
    Closed,
}

/// Runs one input; panics if an invariant breaks. The first byte picks the read chunk size.
pub fn check(data: &[u8]) -> Outcome {
    let Some((&chunk, input)) = data.split_first() else {
        return Outcome::Closed;
    };
    let mut reader = Chunked {
        data: input,
        chunk: usize::from(chunk % 64) + 1,
    };
    let limit = proto::DEFAULT_MAX_CONNECT_BYTES;
    let hello = runtime().block_on(proto::read_hello(&mut reader, limit));
    match hello {
        Ok(Hello::V5 { client_id, .. }) => {
            assert!(
                input.len() >= 2 && input[0] == 0x10,
                "v5 CONNECT from {input:?}"
            );
            let answer = placer().place(&client_id);
            let mut buf = BytesMut::from(&answer[..]);
            match Packet::read(&mut buf, None) {
                Ok(Packet::ConnAck(ack)) => {
                    assert_eq!(ack.code, ConnectReturnCode::UseAnotherServer);
                    let reference = ack.properties.and_then(|p| p.server_reference);
                    assert_eq!(reference.as_deref(), Some(BROKER));
                }
                other => panic!("answer to {client_id:?} is not a CONNACK: {other:?}"),
            }
            assert!(buf.is_empty(), "bytes after the CONNACK");
            Outcome::Redirected
        }
        Ok(Hello::Legacy { level }) => {
            assert!(level == 3 || level == 4, "legacy level {level}");
            assert_eq!(&proto::legacy_refusal()[..], [0x20, 0x02, 0x00, 0x01]);
            Outcome::LegacyRefused
        }
        Err(ProtoError::TooLarge { claimed, limit: l }) => {
            assert!(
                claimed > l as usize,
                "refused {claimed} bytes under the {l} limit"
            );
            Outcome::Closed
        }
        Err(_) => Outcome::Closed,
    }
}

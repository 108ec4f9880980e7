//! A v5 client accepted without a hint (`--unhinted accept`): after CONNACK 0x00 its first
//! request says what it is. A SUBSCRIBE names its filters (a subscriber); a PUBLISH makes it a
//! publisher, decided from the packet's first byte, so a PUBLISH of any size is never read in
//! full (and so is a DISCONNECT). PINGREQ is answered (a few times at most); anything else closes the connection. The
//! caller bounds the time; each packet read is bounded by `max_bytes`.

use bytes::BytesMut;
use rumqttc::v5::mqttbytes::v5::Packet;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::proto::{self, ProtoError};

/// PINGREQs answered before the first SUBSCRIBE or PUBLISH; more close the connection.
const MAX_PINGS: u32 = 4;
const PINGRESP: [u8; 2] = [0xD0, 0x00];

/// What an accepted client asked for first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirstRequest {
    /// SUBSCRIBE: its topic filters, in order.
    Subscribe(Vec<String>),
    /// PUBLISH (not read further).
    Publish,
    /// The client disconnected on its own.
    Disconnect,
}

/// Reads up to the client's first SUBSCRIBE or PUBLISH. `buf` holds what arrived after the
/// CONNECT already.
pub async fn read_first_request<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    max_bytes: u32,
) -> Result<FirstRequest, ProtoError> {
    let mut pings = 0;
    loop {
        match buf.first().map(|b| b >> 4) {
            None => {}
            Some(3) => return Ok(FirstRequest::Publish),
            // Whatever its reason, the client is leaving.
            Some(14) => return Ok(FirstRequest::Disconnect),
            Some(8 | 12) if proto::whole_frame(buf, max_bytes)?.is_some() => {
                match Packet::read(buf, Some(max_bytes)) {
                    Ok(Packet::Subscribe(s)) if s.filters.is_empty() => {
                        let why = "SUBSCRIBE without a filter".into();
                        return Err(ProtoError::UnexpectedPacket(why));
                    }
                    Ok(Packet::Subscribe(s)) => {
                        let filters = s.filters.into_iter().map(|f| f.path).collect();
                        return Ok(FirstRequest::Subscribe(filters));
                    }
                    Ok(Packet::PingReq(_)) if pings < MAX_PINGS => {
                        pings += 1;
                        stream.write_all(&PINGRESP).await?;
                        continue;
                    }
                    Ok(other) => return Err(ProtoError::UnexpectedPacket(format!("{other:?}"))),
                    Err(e) => return Err(ProtoError::Malformed(e)),
                }
            }
            Some(8 | 12) => {}
            Some(t) => {
                return Err(ProtoError::UnexpectedPacket(format!(
                    "packet type {t} before SUBSCRIBE or PUBLISH"
                )));
            }
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(ProtoError::Truncated);
        }
    }
}

#[cfg(test)]
mod tests {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::{Filter, Subscribe};

    use super::*;

    /// Runs the reader over `input` (split in two reads at `split`), returning its result and
    /// what it wrote back.
    async fn first(input: &[u8], split: usize) -> (Result<FirstRequest, ProtoError>, Vec<u8>) {
        let (mut ours, mut theirs) = tokio::io::duplex(4096);
        let (a, b) = input.split_at(split.min(input.len()));
        let (a, b) = (a.to_vec(), b.to_vec());
        let client = tokio::spawn(async move {
            theirs.write_all(&a).await.unwrap();
            tokio::task::yield_now().await;
            theirs.write_all(&b).await.unwrap();
            theirs.shutdown().await.unwrap();
            let mut back = Vec::new();
            theirs.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut buf = BytesMut::new();
        let got = read_first_request(&mut ours, &mut buf, 1024).await;
        drop(ours);
        (got, client.await.unwrap())
    }

    fn subscribe(filters: &[&str]) -> Vec<u8> {
        let mut s = Subscribe::new(Filter::new(filters[0], QoS::AtMostOnce), None);
        for f in &filters[1..] {
            s.filters.push(Filter::new(*f, QoS::AtLeastOnce));
        }
        s.pkid = 1;
        let mut buf = BytesMut::new();
        s.write(&mut buf).unwrap();
        buf.to_vec()
    }

    #[tokio::test]
    async fn subscribe_gives_its_filters_even_split_across_reads() {
        let packet = subscribe(&["$share/g/load/#", "a/+"]);
        for split in [0, 1, 3, packet.len()] {
            let (got, back) = first(&packet, split).await;
            let want = vec!["$share/g/load/#".to_owned(), "a/+".to_owned()];
            assert_eq!(got.unwrap(), FirstRequest::Subscribe(want), "split {split}");
            assert!(back.is_empty(), "no SUBACK");
        }
    }

    #[tokio::test]
    async fn pings_are_answered_then_the_subscribe_counts() {
        let mut input = [0xC0, 0x00, 0xC0, 0x00].to_vec();
        input.extend(subscribe(&["t"]));
        let (got, back) = first(&input, 1).await;
        assert_eq!(got.unwrap(), FirstRequest::Subscribe(vec!["t".into()]));
        assert_eq!(back, [0xD0, 0x00, 0xD0, 0x00]);
        let flood = [0xC0, 0x00].repeat(5);
        let (got, back) = first(&flood, 0).await;
        assert!(
            matches!(got, Err(ProtoError::UnexpectedPacket(_))),
            "{got:?}"
        );
        assert_eq!(back.len(), 2 * MAX_PINGS as usize);
    }

    #[tokio::test]
    async fn publish_is_known_from_its_first_byte() {
        // A PUBLISH claiming 256 MiB: decided without reading it.
        let (got, _) = first(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F], 5).await;
        assert_eq!(got.unwrap(), FirstRequest::Publish);
    }

    #[tokio::test]
    async fn bad_or_unexpected_input_is_an_error() {
        let (got, _) = first(&[0xE0, 0x00], 2).await;
        assert_eq!(got.unwrap(), FirstRequest::Disconnect);
        let (got, _) = first(&[0x10, 0x00], 2).await;
        assert!(
            matches!(got, Err(ProtoError::UnexpectedPacket(_))),
            "{got:?}"
        );
        let (got, _) = first(&[0x82, 0xFF, 0xFF, 0xFF, 0x7F], 5).await;
        assert!(matches!(got, Err(ProtoError::TooLarge { .. })), "{got:?}");
        let (got, _) = first(&[0x82, 0x05, 0x00], 3).await;
        assert!(matches!(got, Err(ProtoError::Truncated)), "{got:?}");
        // Packet id 1, no properties, no filter.
        let (got, _) = first(&[0x82, 0x03, 0x00, 0x01, 0x00], 5).await;
        assert!(got.is_err(), "{got:?}");
    }
}

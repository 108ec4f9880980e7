//! One publisher's PUBLISH, encoded once: fixed header, topic, (packet id,) empty properties,
//! payload. Each message only rewrites the 16 header bytes of the payload (and, at QoS 1, the
//! packet id) in place, so sending it is one `write` of a ready buffer with no encoding and no
//! allocation.

use bytes::BytesMut;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Publish;

use crate::payload::{HEADER_BYTES, Header};

/// A pre-encoded MQTT v5 PUBLISH whose header and packet id change per message.
pub(crate) struct PublishFrame {
    buf: Vec<u8>,
    /// Offset of the payload (its header comes first).
    payload_at: usize,
    /// Offset of the packet id (QoS 1 only).
    pkid_at: Option<usize>,
}

impl PublishFrame {
    /// `payload` is the publisher's template (at least [`HEADER_BYTES`]; profiles refuse less).
    pub fn new(topic: &str, qos: QoS, payload: &[u8]) -> PublishFrame {
        let mut publish = Publish::new(topic, qos, payload.to_vec(), None);
        if qos != QoS::AtMostOnce {
            publish.pkid = 1; // a placeholder of the right width, rewritten per message
        }
        let mut encoded = BytesMut::with_capacity(publish.size());
        publish
            .write(&mut encoded)
            .expect("invariant: a PUBLISH under the profile's size limits encodes");
        let payload_at = encoded.len() - payload.len();
        // Between topic and payload: [packet id (2)] + properties length 0 (1 byte).
        let pkid_at = (qos != QoS::AtMostOnce).then(|| payload_at - 3);
        PublishFrame {
            buf: encoded.to_vec(),
            payload_at,
            pkid_at,
        }
    }

    /// The frame of the message with `header` (and packet id `pkid`, ignored at QoS 0).
    pub fn stamp(&mut self, header: Header, pkid: u16) -> &[u8] {
        header.write(&mut self.buf[self.payload_at..self.payload_at + HEADER_BYTES]);
        if let Some(at) = self.pkid_at {
            self.buf[at..at + 2].copy_from_slice(&pkid.to_be_bytes());
        }
        &self.buf
    }
}

#[cfg(test)]
mod tests {
    use rumqttc::v5::mqttbytes::v5::Packet;

    use super::*;
    use crate::payload::template;

    fn decode(bytes: &[u8]) -> Publish {
        let mut buf = BytesMut::from(bytes);
        match Packet::read(&mut buf, None).expect("a whole packet") {
            Packet::Publish(p) => {
                assert!(buf.is_empty(), "bytes after the PUBLISH");
                p
            }
            other => panic!("not a PUBLISH: {other:?}"),
        }
    }

    #[test]
    fn each_stamp_is_a_valid_publish_with_its_own_header() {
        for (qos, payload_len) in [(QoS::AtMostOnce, 600), (QoS::AtLeastOnce, 16)] {
            let mut frame = PublishFrame::new("load/light-1", qos, &template(payload_len));
            for (seq, pkid) in [(0u64, 1u16), (1, 2), (70_000, 65_535)] {
                let header = Header {
                    sent_us: 1_733_000_000_000_000 + seq,
                    seq,
                };
                let publish = decode(frame.stamp(header, pkid));
                assert_eq!(publish.topic, "load/light-1");
                assert_eq!(publish.qos, qos);
                assert_eq!(publish.payload.len(), payload_len);
                assert_eq!(Header::read(&publish.payload), Some(header));
                assert!(publish.payload[HEADER_BYTES..].iter().all(|&b| b == b'x'));
                let expected_pkid = if qos == QoS::AtMostOnce { 0 } else { pkid };
                assert_eq!(publish.pkid, expected_pkid);
            }
        }
    }
}

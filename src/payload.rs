//! The payload header every loader PUBLISH carries, so a subscriber can tell how late and which
//! message it got.
//!
//! Bytes 0–7: send time in microseconds since the Unix epoch, big-endian (MQTTLoader's format,
//! so its subscriber and ours read the same payloads). Bytes 8–15: the publisher's sequence
//! number, big-endian, from 0. The rest is filler. A payload is at least [`HEADER_BYTES`] long.

use std::time::{SystemTime, UNIX_EPOCH};

/// Send time (8 bytes) + sequence number (8 bytes).
pub const HEADER_BYTES: usize = 16;

/// What a subscriber reads off the front of a payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Microseconds since the Unix epoch when the publisher handed the message to its socket.
    pub sent_us: u64,
    /// 0 for a publisher's first message, +1 for each next one.
    pub seq: u64,
}

impl Header {
    /// Writes the header into the first [`HEADER_BYTES`] of `buf`.
    ///
    /// # Panics
    /// When `buf` is shorter than the header (profiles refuse such payloads before any run).
    pub fn write(&self, buf: &mut [u8]) {
        buf[..8].copy_from_slice(&self.sent_us.to_be_bytes());
        buf[8..HEADER_BYTES].copy_from_slice(&self.seq.to_be_bytes());
    }

    /// Reads the header of a payload; `None` when it is too short to carry one.
    pub fn read(payload: &[u8]) -> Option<Header> {
        let sent = payload.get(..8)?;
        let seq = payload.get(8..HEADER_BYTES)?;
        Some(Header {
            sent_us: u64::from_be_bytes(sent.try_into().ok()?),
            seq: u64::from_be_bytes(seq.try_into().ok()?),
        })
    }
}

/// Microseconds since the Unix epoch: the clock of the send time and of its receipt.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// A payload of `len` bytes (at least [`HEADER_BYTES`]): a zeroed header and `x` filler, for a
/// sender to stamp with [`Header::write`] before each message.
pub fn template(len: usize) -> Vec<u8> {
    let mut buf = vec![b'x'; len.max(HEADER_BYTES)];
    buf[..HEADER_BYTES].fill(0);
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_is_big_endian_time_then_sequence() {
        let mut buf = template(20);
        Header {
            sent_us: 0x0102_0304_0506_0708,
            seq: 9,
        }
        .write(&mut buf);
        assert_eq!(&buf[..8], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&buf[8..16], &[0, 0, 0, 0, 0, 0, 0, 9]);
        assert_eq!(&buf[16..], b"xxxx");
        assert_eq!(
            Header::read(&buf),
            Some(Header {
                sent_us: 0x0102_0304_0506_0708,
                seq: 9
            })
        );
    }

    #[test]
    fn a_payload_shorter_than_the_header_has_none() {
        assert_eq!(Header::read(&[0; 15]), None);
        assert!(Header::read(&[0; 16]).is_some());
    }

    #[test]
    fn the_clock_is_in_microseconds_since_the_epoch() {
        let us = now_us();
        let ms = crate::now_ms();
        assert!(us / 1000 >= ms.saturating_sub(1000) && us / 1000 <= ms + 1000);
    }
}

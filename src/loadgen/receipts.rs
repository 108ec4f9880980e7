//! What subscribers measure, without a record per message: latency into HDR histograms, and
//! each publisher's sequence numbers into a sliding bitmap (duplicates, out of order).
//!
//! Pure: the subscriber feeds it `(receive time, header)` pairs; tests drive it directly.

use hdrhistogram::Histogram;

/// Latencies are recorded in microseconds, up to this (longer ones count as this).
pub const MAX_LATENCY_US: u64 = 60_000_000;

/// A latency histogram in µs, 1 µs to 60 s, 3 significant digits (0.1 % resolution).
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("invariant: valid fixed bounds")
}

/// Receive time − send time in µs; a receipt stamped before its send (clock steps) counts as 0,
/// as MQTTLoader does.
pub fn latency_us(received_us: u64, sent_us: u64) -> u64 {
    received_us.saturating_sub(sent_us)
}

/// A latency histogram's quantile in ms (`q` in 0..=1); `None` when it holds no value.
pub fn quantile_ms(h: &Histogram<u64>, q: f64) -> Option<f64> {
    (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1000.0)
}

/// The largest latency recorded, in ms; `None` when it holds no value.
pub fn max_ms(h: &Histogram<u64>) -> Option<f64> {
    (!h.is_empty()).then(|| h.max() as f64 / 1000.0)
}

/// Sequence numbers this far behind the newest are still told apart (8 KiB of bits per
/// publisher: 6.5 s of a 10,000 msg/s publisher).
pub const SEQ_WINDOW: u64 = 1 << 16;

/// One publisher's sequence numbers as one delivery unit (a shared group, or one plain
/// subscriber) saw them.
#[derive(Clone, Debug)]
pub struct SeqTracker {
    /// Every sequence below this has left the window.
    base: u64,
    /// Bit `s % SEQ_WINDOW` set = `s` received, for `base <= s < base + SEQ_WINDOW`.
    bits: Vec<u64>,
    newest: Option<u64>,
    pub stats: SeqStats,
}

/// Counts over one publisher's stream, as one delivery unit saw it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SeqStats {
    /// Distinct sequence numbers received.
    pub distinct: u64,
    /// Sequence numbers received again.
    pub duplicates: u64,
    /// First receipts of a number below the newest one seen.
    pub out_of_order: u64,
    /// Receipts more than [`SEQ_WINDOW`] behind the newest: neither counted as distinct nor as
    /// duplicates (they cannot be told apart any more).
    pub beyond_window: u64,
}

impl SeqStats {
    pub fn add(&mut self, other: &SeqStats) {
        self.distinct += other.distinct;
        self.duplicates += other.duplicates;
        self.out_of_order += other.out_of_order;
        self.beyond_window += other.beyond_window;
    }
}

impl Default for SeqTracker {
    fn default() -> Self {
        Self {
            base: 0,
            bits: vec![0; (SEQ_WINDOW / 64) as usize],
            newest: None,
            stats: SeqStats::default(),
        }
    }
}

impl SeqTracker {
    pub fn observe(&mut self, seq: u64) {
        if seq < self.base {
            self.stats.beyond_window += 1;
            return;
        }
        if seq >= self.base + SEQ_WINDOW {
            self.slide_to(seq + 1 - SEQ_WINDOW);
        }
        let slot = (seq % SEQ_WINDOW) as usize;
        let (word, bit) = (slot / 64, 1u64 << (slot % 64));
        if self.bits[word] & bit != 0 {
            self.stats.duplicates += 1;
            return;
        }
        self.bits[word] |= bit;
        self.stats.distinct += 1;
        match self.newest {
            Some(newest) if seq < newest => self.stats.out_of_order += 1,
            _ => self.newest = Some(seq),
        }
    }

    /// Moves the window's start to `base`, clearing the bits of the numbers that leave it.
    fn slide_to(&mut self, base: u64) {
        if base - self.base >= SEQ_WINDOW {
            self.bits.fill(0);
        } else {
            for s in self.base..base {
                let slot = (s % SEQ_WINDOW) as usize;
                self.bits[slot / 64] &= !(1u64 << (slot % 64));
            }
        }
        self.base = base;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn track(seqs: impl IntoIterator<Item = u64>) -> SeqStats {
        let mut t = SeqTracker::default();
        for s in seqs {
            t.observe(s);
        }
        t.stats
    }

    #[test]
    fn in_order_stream_counts_each_once() {
        let s = track(0..1000);
        assert_eq!(
            s,
            SeqStats {
                distinct: 1000,
                ..SeqStats::default()
            }
        );
    }

    #[test]
    fn duplicates_and_reordering_are_told_apart() {
        let s = track([0, 1, 3, 2, 2, 4, 1, 5]);
        assert_eq!(s.distinct, 6);
        assert_eq!(s.duplicates, 2);
        assert_eq!(s.out_of_order, 1, "only 2's first receipt came after 3");
    }

    #[test]
    fn the_window_slides_and_forgets_only_what_left_it() {
        let far = 3 * SEQ_WINDOW;
        let s = track([0, 5, far, far - 1, far, 5]);
        assert_eq!(s.distinct, 4, "0, 5, far and far-1");
        assert_eq!(s.distinct + s.duplicates + s.beyond_window, 6);
        assert_eq!(s.duplicates, 1, "far again");
        assert_eq!(s.beyond_window, 1, "5 left the window long ago");
        // A slide shorter than the window clears exactly the numbers that left.
        let s = track((0..SEQ_WINDOW + 10).chain([5, 20, SEQ_WINDOW + 9]));
        assert_eq!(s.beyond_window, 1, "5 < base 10");
        assert_eq!(s.duplicates, 2, "20 and the last one are still inside");
    }

    #[test]
    fn latency_clamps_receipts_before_their_send() {
        assert_eq!(latency_us(1_000_500, 1_000_000), 500);
        assert_eq!(latency_us(999_000, 1_000_000), 0);
        let mut h = latency_histogram();
        h.saturating_record(MAX_LATENCY_US * 10);
        assert!(h.max() >= MAX_LATENCY_US);
    }
}

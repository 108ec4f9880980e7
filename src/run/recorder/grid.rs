//! The recorder's per-second grid: one bucket per (run second, broker), contributions spread
//! over the seconds their interval overlaps, seconds handed out once due, and contributions
//! for seconds already handed out counted as late instead of landing anywhere.

use std::collections::{BTreeMap, HashMap};

use crate::report::Late;

/// One piece of a contribution's interval that falls in one run second.
#[derive(Clone, Copy)]
pub(super) struct Piece {
    /// Share of the contribution's interval.
    pub fraction: f64,
    /// Length of the piece.
    pub ms: f64,
}

#[derive(Default, Clone)]
pub(super) struct Bucket {
    pub cpu_sum: f64,
    pub cpu_weight: f64,
    pub sent: f64,
    pub received_sum: f64,
    pub received_weight: f64,
    /// Publishers connected to this broker during this second → what they sent to it.
    pub publishers: HashMap<String, f64>,
}

pub(super) struct Grid {
    /// Second `k` is `[t0 + k s, t0 + (k+1) s)`; `t0` is a whole second.
    t0_ms: u64,
    brokers: usize,
    /// `seconds[k][broker index]`.
    seconds: BTreeMap<u64, Vec<Bucket>>,
    /// Seconds before this one are handed out (or were due with nothing in them).
    closed_until: u64,
    /// Contributions for closed seconds, not yet taken.
    late: Late,
}

impl Grid {
    pub fn new(t0_ms: u64, brokers: usize) -> Self {
        Self {
            t0_ms,
            brokers,
            seconds: BTreeMap::new(),
            closed_until: 0,
            late: Late::default(),
        }
    }

    /// Spreads `[start_ms, end_ms)` over run seconds, calling `f` for each piece in a second
    /// still open; returns how many pieces fell in closed seconds and their summed fraction
    /// (the caller knows what they carried). Time before `t0` is not part of the run and is
    /// dropped.
    pub fn spread(
        &mut self,
        start_ms: u64,
        end_ms: u64,
        broker: usize,
        mut f: impl FnMut(&mut Bucket, Piece),
    ) -> (u64, f64) {
        let start = start_ms.max(self.t0_ms);
        if end_ms <= start {
            return (0, 0.0);
        }
        let total = (end_ms - start_ms) as f64;
        let mut late = (0, 0.0);
        let mut s = start;
        while s < end_ms {
            let k = (s - self.t0_ms) / 1000;
            let piece_end = (self.t0_ms + (k + 1) * 1000).min(end_ms);
            let ms = (piece_end - s) as f64;
            let piece = Piece {
                fraction: ms / total,
                ms,
            };
            if k >= self.closed_until {
                let n = self.brokers;
                let row = self
                    .seconds
                    .entry(k)
                    .or_insert_with(|| vec![Bucket::default(); n]);
                f(&mut row[broker], piece);
            } else {
                late.0 += 1;
                late.1 += piece.fraction;
            }
            s = piece_end;
        }
        late
    }

    pub fn add_late(&mut self, late: Late) {
        self.late.add(late);
    }

    pub fn take_late(&mut self) -> Late {
        std::mem::take(&mut self.late)
    }

    /// Removes and returns, in order, the seconds before `horizon` (all of them for `None`),
    /// each with a mover counted once; every second before `horizon` is closed from now on,
    /// whether or not anything came for it.
    pub fn take_due(&mut self, horizon: Option<u64>) -> Vec<(u64, Vec<Bucket>)> {
        let keep = match horizon {
            Some(h) => self.seconds.split_off(&h),
            None => BTreeMap::new(),
        };
        let due = std::mem::replace(&mut self.seconds, keep);
        let last = due.keys().next_back().map(|k| k + 1);
        self.closed_until = self.closed_until.max(horizon.or(last).unwrap_or(0));
        due.into_iter()
            .map(|(k, mut buckets)| {
                count_movers_once(&mut buckets);
                (k, buckets)
            })
            .collect()
    }
}

/// A publisher that moved during a second has a partial count on two brokers: it is counted as
/// connected only to the one it sent more to, so the per-second total never exceeds the
/// publishers that exist (which would shrink the full-load window to that one second).
fn count_movers_once(buckets: &mut [Bucket]) {
    let mut best: HashMap<String, (usize, f64)> = HashMap::new();
    for (i, b) in buckets.iter().enumerate() {
        for (name, &sent) in &b.publishers {
            let entry = best.entry(name.clone()).or_insert((i, sent));
            if sent > entry.1 {
                *entry = (i, sent);
            }
        }
    }
    for (i, b) in buckets.iter_mut().enumerate() {
        b.publishers
            .retain(|name, _| best.get(name).is_some_and(|(j, _)| *j == i));
    }
}

//! How late each message was handed to the client, against its schedule deadline
//! `start + i/rate`: a fixed-bucket histogram that merges across publishers.
//!
//! Buckets: 10 µs wide up to 1 ms (where per-message pacing must stay), 1 ms wide up to
//! 100 ms, then one overflow bucket. A percentile is reported as its bucket's upper edge, so
//! it never understates lateness.
//!
//! In a loader's `summary.json` (so shards on other hosts merge exactly as one loader's
//! publishers do) it is `{"count", "max_us", "buckets": [{"le_us", "count"}, ...]}`: the
//! non-empty buckets by upper edge, `le_us: null` for the overflow bucket.

use std::time::Duration;

const FINE_STEP_US: u64 = 10;
const FINE_BUCKETS: usize = 100; // 0–1 ms
const COARSE_STEP_US: u64 = 1_000;
const COARSE_BUCKETS: usize = 99; // 1–100 ms
const BUCKETS: usize = FINE_BUCKETS + COARSE_BUCKETS + 1;

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(into = "LatenessRecord", try_from = "LatenessRecord")]
pub struct Lateness {
    counts: Vec<u64>,
    total: u64,
    max_us: u64,
}

impl Default for Lateness {
    fn default() -> Self {
        Lateness {
            counts: vec![0; BUCKETS],
            total: 0,
            max_us: 0,
        }
    }
}

impl Lateness {
    pub fn record(&mut self, late: Duration) {
        let us = late.as_micros().min(u128::from(u64::MAX)) as u64;
        self.counts[bucket(us)] += 1;
        self.total += 1;
        self.max_us = self.max_us.max(us);
    }

    pub fn merge(&mut self, other: &Lateness) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max_us = self.max_us.max(other.max_us);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> Duration {
        Duration::from_micros(self.max_us)
    }

    /// The upper edge of the bucket holding the `q`-quantile (0 < q ≤ 1); `None` when empty.
    /// The overflow bucket reports the maximum seen.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(Duration::from_micros(upper_edge_us(i).min(self.max_us)));
            }
        }
        Some(self.max())
    }
}

/// [`Lateness`] as written to JSON.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LatenessRecord {
    count: u64,
    max_us: u64,
    buckets: Vec<BucketRecord>,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BucketRecord {
    /// Upper edge in µs (exclusive); `None` for the overflow bucket.
    le_us: Option<u64>,
    count: u64,
}

impl From<Lateness> for LatenessRecord {
    fn from(l: Lateness) -> Self {
        let buckets = l
            .counts
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(i, &count)| BucketRecord {
                le_us: (i + 1 < BUCKETS).then(|| upper_edge_us(i)),
                count,
            })
            .collect();
        LatenessRecord {
            count: l.total,
            max_us: l.max_us,
            buckets,
        }
    }
}

impl TryFrom<LatenessRecord> for Lateness {
    type Error = String;

    fn try_from(r: LatenessRecord) -> Result<Self, String> {
        let mut l = Lateness::default();
        for b in r.buckets {
            let i = match b.le_us {
                None => BUCKETS - 1,
                Some(le) => (0..BUCKETS - 1)
                    .find(|&i| upper_edge_us(i) == le)
                    .ok_or_else(|| format!("lateness: {le} µs is not a bucket's upper edge"))?,
            };
            l.counts[i] += b.count;
            l.total += b.count;
        }
        if l.total != r.count {
            return Err(format!(
                "lateness: buckets hold {} messages, count says {}",
                l.total, r.count
            ));
        }
        l.max_us = r.max_us;
        Ok(l)
    }
}

fn bucket(us: u64) -> usize {
    if us < FINE_STEP_US * FINE_BUCKETS as u64 {
        (us / FINE_STEP_US) as usize
    } else {
        let coarse = ((us - FINE_STEP_US * FINE_BUCKETS as u64) / COARSE_STEP_US) as usize;
        FINE_BUCKETS + coarse.min(COARSE_BUCKETS)
    }
}

fn upper_edge_us(bucket: usize) -> u64 {
    if bucket < FINE_BUCKETS {
        (bucket as u64 + 1) * FINE_STEP_US
    } else if bucket < FINE_BUCKETS + COARSE_BUCKETS {
        FINE_STEP_US * FINE_BUCKETS as u64 + (bucket - FINE_BUCKETS + 1) as u64 * COARSE_STEP_US
    } else {
        u64::MAX
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn quantiles_are_bucket_upper_edges_capped_by_the_max() {
        let mut l = Lateness::default();
        assert_eq!(l.quantile(0.5), None);
        for _ in 0..98 {
            l.record(us(15)); // bucket 10–20 µs
        }
        l.record(us(2_500)); // bucket 2–3 ms
        l.record(us(250_000)); // overflow
        assert_eq!(l.count(), 100);
        assert_eq!(l.quantile(0.5), Some(us(20)));
        assert_eq!(l.quantile(0.98), Some(us(20)));
        assert_eq!(l.quantile(0.99), Some(us(3_000)));
        assert_eq!(l.quantile(1.0), Some(us(250_000)));
        assert_eq!(l.max(), us(250_000));
    }

    #[test]
    fn merge_adds_counts() {
        let (mut a, mut b) = (Lateness::default(), Lateness::default());
        a.record(us(5));
        b.record(us(900));
        b.record(us(1_000));
        a.merge(&b);
        assert_eq!(a.count(), 3);
        assert_eq!(a.quantile(0.34), Some(us(910)));
        assert_eq!(a.quantile(1.0), Some(us(1_000)));
    }

    #[test]
    fn json_round_trips_and_inconsistent_json_is_refused() {
        let mut l = Lateness::default();
        for late in [5, 15, 15, 2_500, 250_000] {
            l.record(us(late));
        }
        let json = serde_json::to_string(&l).unwrap();
        assert_eq!(
            json,
            r#"{"count":5,"max_us":250000,"buckets":[{"le_us":10,"count":1},{"le_us":20,"count":2},{"le_us":3000,"count":1},{"le_us":null,"count":1}]}"#
        );
        assert_eq!(serde_json::from_str::<Lateness>(&json).unwrap(), l);
        let empty = serde_json::to_string(&Lateness::default()).unwrap();
        assert_eq!(
            serde_json::from_str::<Lateness>(&empty).unwrap(),
            Lateness::default()
        );
        for bad in [
            r#"{"count":2,"max_us":9,"buckets":[{"le_us":10,"count":1}]}"#,
            r#"{"count":1,"max_us":9,"buckets":[{"le_us":15,"count":1}]}"#,
        ] {
            assert!(serde_json::from_str::<Lateness>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bucket_edges() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(9), 0);
        assert_eq!(bucket(10), 1);
        assert_eq!(bucket(999), 99);
        assert_eq!(bucket(1_000), 100);
        assert_eq!(bucket(1_999), 100);
        assert_eq!(bucket(99_999), 198);
        assert_eq!(bucket(100_000), 199);
        assert_eq!(upper_edge_us(0), 10);
        assert_eq!(upper_edge_us(99), 1_000);
        assert_eq!(upper_edge_us(100), 2_000);
    }
}

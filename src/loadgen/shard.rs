//! Loader shards (pure, apart from reading the clock): one arrival plan shared out over N
//! loaders, and the agreed instant at which every loader's join offsets begin.
//!
//! Every shard draws the whole plan from the same profiles, arrival spec and seed, then keeps
//! the publishers whose arrival index `i` has `i mod N == K - 1`. A kept publisher is exactly
//! the unsharded one: same index (so dns-rr's `i mod n` broker), name, profile, topic, rate
//! and join offset. With one `--start-at` instant for all shards, N shards make the scenario's
//! arrival order and rates.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use tokio::time::Instant;

use super::arrival::PlannedPublisher;
use super::seconds::Clock;

/// How far in the past an agreed start may be and still be run. A loader started a little late
/// (SSH, process start) keeps the agreed anchor: publishers whose join instant has passed join
/// at once, the others at their instants. Further back, most of the plan would join in one
/// burst, which is not the scenario: refused.
pub const MAX_START_LAG: Duration = Duration::from_secs(3);
/// How far ahead a start may be: a value beyond this is usually microseconds given where
/// milliseconds are meant.
pub const MAX_START_LEAD: Duration = Duration::from_secs(24 * 3600);

/// Shard `k` of `n` (1-based), from `K/N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    k: usize,
    n: usize,
}

impl Shard {
    pub fn new(k: usize, n: usize) -> Result<Shard, String> {
        if n == 0 {
            return Err("shard count N must be at least 1 (K/N, e.g. 1/2)".into());
        }
        if k == 0 || k > n {
            return Err(format!(
                "shard {k}/{n}: K must be 1 to {n} (shard K of N, counted from 1)"
            ));
        }
        Ok(Shard { k, n })
    }

    /// The whole plan (one loader).
    pub fn whole() -> Shard {
        Shard { k: 1, n: 1 }
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn n(&self) -> usize {
        self.n
    }

    /// Whether the publisher at arrival position `index` is this shard's.
    pub fn owns(&self, index: usize) -> bool {
        index % self.n == self.k - 1
    }

    /// This shard's publishers of the whole `plan`, in arrival order, unchanged.
    pub fn select(&self, plan: Vec<PlannedPublisher>) -> Vec<PlannedPublisher> {
        plan.into_iter().filter(|p| self.owns(p.index)).collect()
    }

    /// Command-line form `K/N`.
    pub fn parse_arg(text: &str) -> Result<Shard, String> {
        text.parse()
    }
}

impl FromStr for Shard {
    type Err = String;
    fn from_str(text: &str) -> Result<Shard, String> {
        let bad = || format!("`{text}` is not K/N, e.g. 1/2 (shard 1 of 2)");
        let (k, n) = text.trim().split_once('/').ok_or_else(bad)?;
        let k = k.trim().parse().map_err(|_| bad())?;
        let n = n.trim().parse().map_err(|_| bad())?;
        Shard::new(k, n)
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.k, self.n)
    }
}

/// Whether the agreed start `start_ms` (epoch ms) may be run at `now_ms`: at most
/// [`MAX_START_LAG`] in the past and [`MAX_START_LEAD`] ahead.
pub fn check_start(start_ms: u64, now_ms: u64) -> Result<(), String> {
    let lag = now_ms.saturating_sub(start_ms);
    if lag > MAX_START_LAG.as_millis() as u64 {
        return Err(format!(
            "start {start_ms} (ms since the Unix epoch) is {:.1} s in the past, more than {} s: \
             agree on an instant a few seconds ahead, e.g. $(( $(date +%s%3N) + 5000 ))",
            lag as f64 / 1000.0,
            MAX_START_LAG.as_secs()
        ));
    }
    let lead = start_ms.saturating_sub(now_ms);
    if lead > MAX_START_LEAD.as_millis() as u64 {
        return Err(format!(
            "start {start_ms} is more than {} h ahead: give milliseconds since the Unix epoch \
             (13 digits today), not microseconds",
            MAX_START_LEAD.as_secs() / 3600
        ));
    }
    Ok(())
}

/// The monotonic instant of epoch-ms `start_ms` (past or future), seen from the pair
/// (`now`, `now_ms`) read together. A past instant the monotonic clock cannot represent (just
/// after boot) becomes `now`.
pub fn instant_of(start_ms: u64, now: Instant, now_ms: u64) -> Instant {
    if start_ms >= now_ms {
        now + Duration::from_millis(start_ms - now_ms)
    } else {
        now.checked_sub(Duration::from_millis(now_ms - start_ms))
            .unwrap_or(now)
    }
}

/// The run's start instant and its clock: at `start_ms` when one was agreed, else now.
pub fn anchor(start_ms: Option<u64>) -> (Clock, Instant) {
    let (now, now_ms) = (Instant::now(), crate::now_ms());
    match start_ms {
        None => (Clock::new(now, now_ms), now),
        Some(ms) => {
            let start = instant_of(ms, now, now_ms);
            (Clock::new(start, ms), start)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadgen::arrival::{ArrivalOrder, ArrivalSpec, plan_arrivals};
    use crate::loadgen::placement::{Entry, Placement};
    use crate::loadgen::profile::Profile;

    fn profiles() -> Vec<Profile> {
        vec![
            Profile::parse_spec("name=light,count=9,rate=2000,bytes=600,duration=100s").unwrap(),
            Profile::parse_spec("name=heavy,count=1,rate=10000,bytes=600,duration=100s").unwrap(),
            Profile::parse_spec("name=tiny,count=3,rate=10,bytes=16,duration=10s").unwrap(),
        ]
    }

    fn plan(seed: u64) -> Vec<PlannedPublisher> {
        let spec = ArrivalSpec {
            order: ArrivalOrder::Random,
            interval: Duration::from_secs(5),
            jitter: Duration::from_millis(700),
            burst: Some(2),
        };
        plan_arrivals(&profiles(), &spec, seed).unwrap()
    }

    #[test]
    fn parses_k_of_n_and_refuses_the_rest() {
        assert_eq!("2/3".parse::<Shard>(), Ok(Shard { k: 2, n: 3 }));
        assert_eq!(" 1 / 1 ".parse::<Shard>(), Ok(Shard::whole()));
        assert_eq!(Shard::new(3, 4).unwrap().to_string(), "3/4");
        for (text, says) in [
            ("0/2", "K must be 1 to 2"),
            ("3/2", "K must be 1 to 2"),
            ("1/0", "at least 1"),
            ("0/0", "at least 1"),
            ("2", "not K/N"),
            ("a/2", "not K/N"),
            ("-1/2", "not K/N"),
            ("1/2/3", "not K/N"),
        ] {
            let err = text.parse::<Shard>().unwrap_err();
            assert!(err.contains(says), "{text}: {err}");
        }
    }

    #[test]
    fn every_global_index_is_in_exactly_one_shard() {
        let whole = plan(4);
        for n in 1..=whole.len() + 2 {
            let mut seen = vec![0usize; whole.len()];
            for k in 1..=n {
                let shard = Shard::new(k, n).unwrap();
                let mine = shard.select(whole.clone());
                for p in &mine {
                    assert_eq!(p.index % n, k - 1, "{p:?} in shard {shard}");
                    seen[p.index] += 1;
                }
                // Arrival order is kept within a shard.
                assert!(mine.windows(2).all(|w| w[0].index < w[1].index));
            }
            assert!(seen.iter().all(|&c| c == 1), "n = {n}: {seen:?}");
        }
    }

    #[test]
    fn a_shards_publishers_are_the_unsharded_plans_own() {
        // Each shard draws the whole plan from the same seed: names, profiles and join offsets
        // (jitter and bursts included) equal the unsharded loader's, entry for entry.
        let whole = plan(9);
        let n = 3;
        let mut merged: Vec<PlannedPublisher> = (1..=n)
            .flat_map(|k| Shard::new(k, n).unwrap().select(plan(9)))
            .collect();
        merged.sort_by_key(|p| p.index);
        assert_eq!(merged, whole);
        // A different seed is a different plan: the shards must agree on it.
        assert_ne!(plan(10), whole);
    }

    #[test]
    fn dns_rr_places_a_shards_publishers_by_global_index() {
        let brokers: Vec<String> = (0..3).map(|i| format!("10.0.0.{i}:1883")).collect();
        let placement = Placement::DnsRoundRobin {
            brokers: brokers.clone(),
        };
        let shard = Shard::new(2, 4).unwrap();
        let mine = shard.select(plan(1));
        assert_eq!(mine.iter().map(|p| p.index).collect::<Vec<_>>(), [1, 5, 9]);
        for p in &mine {
            let Entry::Broker { addr, .. } = placement.entry_for(p.index) else {
                panic!("dns-rr gives a broker entry");
            };
            assert_eq!(addr, brokers[p.index % 3], "{}", p.name);
        }
    }

    #[test]
    fn starts_a_little_late_are_run_far_ones_refused() {
        let now = 1_764_900_000_000;
        assert_eq!(check_start(now + 5_000, now), Ok(()));
        assert_eq!(check_start(now, now), Ok(()));
        assert_eq!(check_start(now - 3_000, now), Ok(()));
        let err = check_start(now - 3_001, now).unwrap_err();
        assert!(err.contains("3.0 s in the past"), "{err}");
        // Seconds where milliseconds are meant: 1970.
        assert!(check_start(now / 1000, now).unwrap_err().contains("past"));
        // Microseconds where milliseconds are meant.
        let err = check_start(now * 1000, now).unwrap_err();
        assert!(err.contains("not microseconds"), "{err}");
    }

    #[test]
    fn the_anchor_maps_epoch_ms_to_the_monotonic_clock_both_ways() {
        let now = Instant::now();
        let now_ms = 1_000_000;
        assert_eq!(
            instant_of(now_ms + 2_500, now, now_ms),
            now + Duration::from_millis(2_500)
        );
        if let Some(earlier) = now.checked_sub(Duration::from_millis(700)) {
            assert_eq!(instant_of(now_ms - 700, now, now_ms), earlier);
        }
        let start_ms = crate::now_ms() + 60_000;
        let (clock, start) = anchor(Some(start_ms));
        let ahead = start.saturating_duration_since(Instant::now());
        assert!(ahead > Duration::from_secs(59) && ahead <= Duration::from_secs(60));
        assert_eq!(clock.ms_at(start), start_ms);
        assert_eq!(
            clock.ms_at(start + Duration::from_secs(5)),
            start_ms + 5_000
        );
    }
}

//! The full-load window: one per trial, from the arrival plan, the same for every method.
//!
//! Every method of a trial replays the same arrival plan, so the seconds compared are fixed
//! before any method runs: from the last planned arrival + [`SETTLE_S`] to the first planned
//! departure − 1 s, in whole `t_s` seconds (`brokers.csv`'s axis: seconds since the method's
//! start, floored to a whole second). Planned arrival = `join_at`; planned departure =
//! `join_at` plus the profile's duration. A publisher's real run starts at its first CONNACK, after its
//! planned join, and lasts its duration, so it ends no earlier than planned: the window's end
//! needs no margin beyond the partial last second.
//!
//! When the plan never has every publisher active at once (bursts whose durations do not
//! overlap), the window is the longest span with the most publishers active, trimmed the same
//! way; if trimming leaves nothing, the span is used untrimmed. Both cases are computed on the
//! plan, so they too are the same for every method, and `summary.md` says which rule applied.

use serde::{Deserialize, Serialize};

use super::status::TrialDetail;

/// Seconds between the last planned arrival and the window's first second. A publisher's first
/// CONNACK follows its planned join by a redirect round trip (well under a second here), and
/// `t_s` seconds start up to 1 s before the method's start (the axis is floored to a whole
/// second), so the second that straddles an arrival is partial: 2 s is the first second that is
/// surely whole with every publisher publishing.
pub const SETTLE_S: f64 = 2.0;

/// Which rule produced a trial's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WindowRule {
    /// Last arrival + 2 s to first departure − 1 s: every publisher active.
    AllActive,
    /// The plan never has every publisher active at once: the longest span with the most
    /// publishers active, trimmed the same way.
    MaxActive,
    /// The span was too short to trim: whole seconds it touches, untrimmed.
    Untrimmed,
}

/// A trial's window, as the runner stores it in `manifest.json` (`trials_detail`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanWindow {
    /// Inclusive bounds, in `t_s`.
    pub window_start_s: u64,
    pub window_end_s: u64,
    pub window_rule: WindowRule,
    /// Publishers planned to be active throughout the window, of `publishers_planned`.
    pub publishers_active: usize,
    pub publishers_planned: usize,
}

/// The window for publishers planned as `(arrival_s, departure_s)` offsets from the method's
/// start; `None` without a publisher.
pub fn plan_window(spans: &[(f64, f64)]) -> Option<PlanWindow> {
    let (from, to, active) = longest_max_active(spans)?;
    let start = (from + SETTLE_S).ceil();
    let end = to.floor() - 1.0;
    let (start, end, trimmed) = if start <= end {
        (start, end, true)
    } else {
        let a = from.floor();
        (a, (to.ceil() - 1.0).max(a), false)
    };
    let rule = match (trimmed, active == spans.len()) {
        (false, _) => WindowRule::Untrimmed,
        (true, true) => WindowRule::AllActive,
        (true, false) => WindowRule::MaxActive,
    };
    Some(PlanWindow {
        window_start_s: start.max(0.0) as u64,
        window_end_s: end.max(0.0) as u64,
        window_rule: rule,
        publishers_active: active,
        publishers_planned: spans.len(),
    })
}

/// The window statement of results folders written before windows were stored.
pub const FROM_ROWS: &str = "full-load window: from brokers.csv, per method (this results folder \
     predates the arrival-plan windows in manifest.json): the seconds in which the publishers \
     counted connected equal their maximum, one second trimmed at each edge; methods of one \
     trial may be compared over different seconds";

/// `summary.md`'s statement of a trial's window.
pub fn describe(trial: &TrialDetail) -> String {
    let k = trial.trial;
    let Some(w) = trial.window else {
        return format!("trial {k}: the arrival plan has no publisher, so no full-load window");
    };
    let head = format!(
        "full-load window: t = {}–{} s for every method of trial {k}, from the arrival plan",
        w.window_start_s, w.window_end_s
    );
    let settle = SETTLE_S;
    match w.window_rule {
        WindowRule::AllActive => {
            format!("{head}: last arrival + {settle} s to first departure − 1 s")
        }
        WindowRule::MaxActive => format!(
            "{head}: the plan never has all {} publishers active at once, so this is the longest \
             span with the most ({}) active, its start + {settle} s to its end − 1 s",
            w.publishers_planned, w.publishers_active
        ),
        WindowRule::Untrimmed => format!(
            "{head}: the longest span with the most publishers active ({} of {}) is too short to \
             trim ({settle} s after its start, 1 s before its end), so its whole seconds are used",
            w.publishers_active, w.publishers_planned
        ),
    }
}

/// The longest `[from, to)` during which the most publishers are active (the earliest of equal
/// spans), and that number. Spans are half-open: one leaving at t and one arriving at t are
/// never active together.
fn longest_max_active(spans: &[(f64, f64)]) -> Option<(f64, f64, usize)> {
    let mut times: Vec<f64> = spans.iter().flat_map(|&(a, d)| [a, d]).collect();
    times.sort_by(f64::total_cmp);
    times.dedup();
    // Active count on each piece between consecutive distinct times.
    let pieces: Vec<(f64, f64, usize)> = times
        .windows(2)
        .map(|w| {
            let n = spans
                .iter()
                .filter(|&&(a, d)| a <= w[0] && w[0] < d)
                .count();
            (w[0], w[1], n)
        })
        .collect();
    let most = pieces.iter().map(|p| p.2).max().filter(|&n| n > 0)?;
    // Runs of adjacent pieces with the most publishers active; keep the longest.
    let mut best: Option<(f64, f64)> = None;
    let mut run: Option<(f64, f64)> = None;
    for &(a, b, n) in &pieces {
        run = match (run, n == most) {
            (Some((from, _)), true) => Some((from, b)),
            (None, true) => Some((a, b)),
            (_, false) => None,
        };
        if let Some((from, to)) = run
            && best.is_none_or(|(x, y)| to - from > y - x)
        {
            best = Some((from, to));
        }
    }
    best.map(|(from, to)| (from, to, most))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The paper's shape: ten publishers, one every 5 s, 100 s each.
    fn paper() -> Vec<(f64, f64)> {
        (0..10)
            .map(|i| (5.0 * i as f64, 5.0 * i as f64 + 100.0))
            .collect()
    }

    #[test]
    fn all_active_from_last_arrival_plus_settle_to_first_departure_minus_one() {
        let w = plan_window(&paper()).expect("window");
        assert_eq!((w.window_start_s, w.window_end_s), (47, 99));
        assert_eq!(w.window_rule, WindowRule::AllActive);
        assert_eq!((w.publishers_active, w.publishers_planned), (10, 10));
        // Fractional arrivals (jitter) round the start up, departures round the end down.
        let w = plan_window(&[(0.0, 20.3), (9.4, 30.0)]).expect("window");
        assert_eq!((w.window_start_s, w.window_end_s), (12, 19));
        assert_eq!(plan_window(&[]), None);
    }

    #[test]
    fn bursts_that_never_overlap_use_the_longest_span_of_most_active() {
        // Two waves of two publishers, 10 s each, 20 s apart; the second wave's span is longer.
        let spans = [(0.0, 10.0), (0.0, 10.0), (20.0, 32.0), (20.0, 32.0)];
        let w = plan_window(&spans).expect("window");
        assert_eq!(w.window_rule, WindowRule::MaxActive);
        assert_eq!((w.publishers_active, w.publishers_planned), (2, 4));
        assert_eq!((w.window_start_s, w.window_end_s), (22, 31));
        // Back to back, never together: one active at a time over 0..6 as a whole span.
        let w = plan_window(&[(0.0, 3.0), (3.0, 6.0)]).expect("window");
        assert_eq!(
            (w.publishers_active, w.window_rule),
            (1, WindowRule::MaxActive)
        );
        assert_eq!((w.window_start_s, w.window_end_s), (2, 5));
    }

    #[test]
    fn the_statement_names_the_window_and_its_rule() {
        let trial = TrialDetail {
            trial: 3,
            seed: 4,
            window: plan_window(&paper()),
            methods: Vec::new(),
        };
        assert_eq!(
            describe(&trial),
            "full-load window: t = 47–99 s for every method of trial 3, from the arrival plan: \
             last arrival + 2 s to first departure − 1 s"
        );
    }

    #[test]
    fn a_span_too_short_to_trim_is_kept_whole() {
        let w = plan_window(&[(0.0, 2.0), (1.0, 3.0)]).expect("window");
        assert_eq!(w.window_rule, WindowRule::Untrimmed);
        assert_eq!((w.window_start_s, w.window_end_s), (1, 1));
    }
}

//! Fault runs in `summary.md`: the delivery headline (messages sent against owed, downtime, per
//! trial and method, from `publishers.csv` and `outages.csv`) and the fault section (what was
//! broken when, and the outages it caused, from `faults.csv` and `outages.csv`). Pure: values
//! and strings from rows.

use std::fmt::Write as _;

use super::records::{FaultRow, OutageRow, PublisherRow, first_seen};

/// One (trial, method)'s delivery: what its publishers owed and sent, and their downtime.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub trial: u32,
    pub method: String,
    /// Σ per publisher `target_total` (rate × duration); for rows written before that column,
    /// `sent_total` + its outages' `not_sent` (then [`Delivery::owed_estimated`]).
    pub owed: u64,
    pub owed_estimated: bool,
    /// Σ `sent_total`: written to a connection, publisher-side.
    pub sent: u64,
    /// The longest downtime of one publisher (its outages summed).
    pub max_downtime_s: f64,
    /// Publishers with at least one outage.
    pub cut_off: usize,
    /// Rows of `faults.csv` for this (trial, method).
    pub faults: usize,
}

impl Delivery {
    /// (owed − sent) / owed in percent; `None` when nothing was owed.
    pub fn lost_pct(&self) -> Option<f64> {
        (self.owed > 0)
            .then(|| self.owed.saturating_sub(self.sent) as f64 / self.owed as f64 * 100.0)
    }

    /// A fault was injected or a publisher lost its broker.
    pub fn faulted(&self) -> bool {
        self.faults > 0 || self.cut_off > 0
    }
}

/// Delivery per (trial, method), ordered by trial, then methods in first-appearance order.
pub fn delivery(
    publishers: &[PublisherRow],
    faults: &[FaultRow],
    outages: &[OutageRow],
) -> Vec<Delivery> {
    let methods = first_seen(
        publishers
            .iter()
            .map(|p| p.method.as_str())
            .chain(faults.iter().map(|f| f.method.as_str()))
            .chain(outages.iter().map(|o| o.method.as_str())),
    );
    let mut keys: Vec<(u32, usize)> = publishers
        .iter()
        .map(|p| (p.trial, p.method.as_str()))
        .chain(faults.iter().map(|f| (f.trial, f.method.as_str())))
        .chain(outages.iter().map(|o| (o.trial, o.method.as_str())))
        .map(|(t, m)| (t, methods.iter().position(|x| x == m).unwrap_or(0)))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys.into_iter()
        .map(|(trial, m)| {
            let method = &methods[m];
            let mine = |t: u32, x: &str| t == trial && x == method;
            let outs: Vec<&OutageRow> = outages
                .iter()
                .filter(|o| mine(o.trial, &o.method))
                .collect();
            let pubs: Vec<&PublisherRow> = publishers
                .iter()
                .filter(|p| mine(p.trial, &p.method))
                .collect();
            let down_of = |name: &str| -> f64 {
                outs.iter()
                    .filter(|o| o.publisher == name)
                    .map(|o| o.downtime_s)
                    .sum()
            };
            let not_sent_of = |name: &str| -> u64 {
                outs.iter()
                    .filter(|o| o.publisher == name)
                    .map(|o| o.not_sent)
                    .sum()
            };
            let owed_estimated = pubs.iter().any(|p| p.target_total == 0);
            let cut = first_seen(outs.iter().map(|o| o.publisher.as_str()));
            let max_downtime_s = pubs
                .iter()
                .map(|p| p.downtime_s)
                .chain(cut.iter().map(|p| down_of(p)))
                .fold(0.0, f64::max);
            Delivery {
                trial,
                method: method.clone(),
                owed: pubs
                    .iter()
                    .map(|p| match p.target_total {
                        0 => p.sent_total + not_sent_of(&p.publisher),
                        owed => owed,
                    })
                    .sum(),
                owed_estimated,
                sent: pubs.iter().map(|p| p.sent_total).sum(),
                max_downtime_s,
                cut_off: cut.len(),
                faults: faults.iter().filter(|f| mine(f.trial, &f.method)).count(),
            }
        })
        .collect()
}

/// The delivery headline of a fault run: per (trial, method), and per method over trials when
/// there are several.
pub fn render_delivery(rows: &[Delivery]) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "## Delivery (the headline of a fault run)\n\n\
         Faults were injected or publishers lost their broker in this run, so no method is named \
         winner by gap: the gaps below average seconds in which a broker was down. Per trial and \
         method: messages sent (publisher-side, written to a connection: an upper bound on what \
         brokers received, since a broker that dies may lose what was just written to it) against \
         messages owed (Σ each publisher's rate × duration), lost = (owed − sent) / owed, and the \
         longest downtime of one publisher (its outages summed; see Faults below).\n"
    );
    let _ = writeln!(
        md,
        "| trial | method | sent / owed (msgs) | lost (%) | max downtime (s) | publishers cut off |\n\
         |---:|---|---:|---:|---:|---:|"
    );
    let line = |md: &mut String, trial: &str, d: &Delivery| {
        let _ = writeln!(
            md,
            "| {trial} | {} | {} / {}{} | {} | {:.2} | {} |",
            d.method,
            d.sent,
            d.owed,
            if d.owed_estimated { " (est.)" } else { "" },
            d.lost_pct().map_or("–".into(), |x| format!("{x:.1}")),
            d.max_downtime_s,
            d.cut_off,
        );
    };
    for d in rows {
        line(&mut md, &d.trial.to_string(), d);
    }
    let trials = first_seen_trials(rows);
    if trials > 1 {
        for d in totals(rows) {
            line(&mut md, "all", &d);
        }
    }
    if rows.iter().any(|d| d.owed_estimated) {
        let _ = writeln!(
            md,
            "\n(est.): publishers.csv predates its `target_total` column; owed = sent + the \
             outages' messages not sent."
        );
    }
    md.push('\n');
    md
}

/// Per method over all trials: sums, and the longest downtime.
pub fn totals(rows: &[Delivery]) -> Vec<Delivery> {
    first_seen(rows.iter().map(|d| d.method.as_str()))
        .into_iter()
        .map(|method| {
            let mine: Vec<&Delivery> = rows.iter().filter(|d| d.method == method).collect();
            Delivery {
                trial: 0,
                owed: mine.iter().map(|d| d.owed).sum(),
                owed_estimated: mine.iter().any(|d| d.owed_estimated),
                sent: mine.iter().map(|d| d.sent).sum(),
                max_downtime_s: mine.iter().map(|d| d.max_downtime_s).fold(0.0, f64::max),
                cut_off: mine.iter().map(|d| d.cut_off).sum(),
                faults: mine.iter().map(|d| d.faults).sum(),
                method,
            }
        })
        .collect()
}

fn first_seen_trials(rows: &[Delivery]) -> usize {
    let mut t: Vec<u32> = rows.iter().map(|d| d.trial).collect();
    t.sort_unstable();
    t.dedup();
    t.len()
}

/// Per (trial, method): the faults injected, the publishers they cut off, how many came back,
/// the longest and mean downtime, and the messages not sent; then every outage. Empty when the
/// run injected no fault and no publisher lost its broker.
pub fn render_markdown(faults: &[FaultRow], outages: &[OutageRow]) -> String {
    if faults.is_empty() && outages.is_empty() {
        return String::new();
    }
    let mut md = String::new();
    let _ = writeln!(
        md,
        "## Faults\n\nAn outage runs from a publisher's connection drop to its next CONNACK, or, \
         if it never reconnected, to its scheduled end (first CONNACK + duration) or the interrupt \
         of a run cut short; a publisher that never reached a broker (in a run not cut short) has one \
         outage over its whole duration. Reconnected: publishers cut off whose last outage ended in a CONNACK. \
         Max and mean downtime: over the publishers cut off, each one's outages summed. Messages \
         not sent: rate × downtime, summed (what the fixed-rate schedule owed meanwhile; the \
         load generator skips it rather than sending it late).\n"
    );
    let _ = writeln!(
        md,
        "| trial | method | faults | publishers cut off | reconnected | still down at end \
         | max downtime (s) | mean downtime (s) | messages not sent |\n\
         |---:|---|---|---:|---:|---:|---:|---:|---:|"
    );
    let methods = first_seen(
        faults
            .iter()
            .map(|f| f.method.as_str())
            .chain(outages.iter().map(|o| o.method.as_str())),
    );
    let mut trials: Vec<u32> = faults
        .iter()
        .map(|f| f.trial)
        .chain(outages.iter().map(|o| o.trial))
        .collect();
    trials.sort_unstable();
    trials.dedup();
    for &trial in &trials {
        for method in &methods {
            let injected: Vec<String> = faults
                .iter()
                .filter(|f| f.trial == trial && f.method == *method)
                .map(|f| format!("{} {} at {:.1} s", f.kind, f.target, f.t_s))
                .collect();
            let mine: Vec<&OutageRow> = outages
                .iter()
                .filter(|o| o.trial == trial && o.method == *method)
                .collect();
            if injected.is_empty() && mine.is_empty() {
                continue;
            }
            let cut = first_seen(mine.iter().map(|o| o.publisher.as_str()));
            // A publisher is back if its last outage ended in a reconnect.
            let still_down = cut
                .iter()
                .filter(|p| {
                    mine.iter()
                        .rfind(|o| o.publisher == **p)
                        .is_some_and(|o| o.up_s.is_none())
                })
                .count();
            let per_publisher: Vec<f64> = cut
                .iter()
                .map(|p| {
                    mine.iter()
                        .filter(|o| o.publisher == *p)
                        .map(|o| o.downtime_s)
                        .sum()
                })
                .collect();
            let max = per_publisher.iter().copied().fold(0.0, f64::max);
            let mean = if per_publisher.is_empty() {
                0.0
            } else {
                per_publisher.iter().sum::<f64>() / per_publisher.len() as f64
            };
            let not_sent: u64 = mine.iter().map(|o| o.not_sent).sum();
            let _ = writeln!(
                md,
                "| {trial} | {method} | {} | {} | {} | {still_down} | {max:.2} | {mean:.2} | {not_sent} |",
                if injected.is_empty() {
                    "–".to_owned()
                } else {
                    injected.join(", ")
                },
                cut.len(),
                cut.len() - still_down,
            );
        }
    }
    if !outages.is_empty() {
        let _ = writeln!(
            md,
            "\n| trial | method | publisher | lost | down at (s) | back at (s) | reconnected to \
             | downtime (s) | not sent |\n|---:|---|---|---|---:|---:|---|---:|---:|"
        );
        for o in outages {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {:.2} | {} | {} | {:.2} | {} |",
                o.trial,
                o.method,
                o.publisher,
                if o.broker.is_empty() {
                    "(never connected)"
                } else {
                    &o.broker
                },
                o.down_s,
                o.up_s.map_or("never".to_owned(), |u| format!("{u:.2}")),
                o.to_broker.as_deref().unwrap_or("–"),
                o.downtime_s,
                o.not_sent,
            );
        }
    }
    md.push('\n');
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outage(method: &str, publisher: &str, up: Option<f64>, downtime: f64) -> OutageRow {
        OutageRow {
            trial: 1,
            method: method.into(),
            publisher: publisher.into(),
            broker: "b2".into(),
            down_s: 5.0,
            up_s: up,
            to_broker: up.map(|_| "b1".into()),
            downtime_s: downtime,
            not_sent: (downtime * 500.0) as u64,
        }
    }

    fn kill_b2(method: &str) -> FaultRow {
        FaultRow {
            trial: 1,
            method: method.into(),
            t_s: 5.0,
            kind: "kill".into(),
            target: "b2".into(),
        }
    }

    fn publisher(method: &str, name: &str, sent: u64, owed: u64, downtime: f64) -> PublisherRow {
        PublisherRow {
            trial: 1,
            method: method.into(),
            publisher: name.into(),
            profile: "light".into(),
            join_s: 0.0,
            broker: "b2".into(),
            redirect_ms: None,
            target_msgs_per_s: 500.0,
            achieved_msgs_per_s: 0.0,
            sent_total: sent,
            downtime_s: downtime,
            target_total: owed,
        }
    }

    #[test]
    fn delivery_sums_sent_and_owed_and_keeps_the_longest_downtime() {
        let publishers = [
            publisher("dns-rr", "p1", 1500, 5000, 7.0),
            publisher("dns-rr", "p3", 500, 5000, 9.0),
            publisher("dns-rr", "p5", 5000, 5000, 0.0),
            publisher("proposed", "p0", 4600, 5000, 0.8),
            // Written before target_total existed: owed = sent + not sent.
            publisher("proposed", "p2", 4400, 0, 1.2),
        ];
        let faults = [kill_b2("dns-rr")];
        let outages = [
            outage("dns-rr", "p1", None, 7.0),
            outage("dns-rr", "p3", None, 9.0),
            outage("proposed", "p2", Some(6.2), 1.2),
        ];
        let d = delivery(&publishers, &faults, &outages);
        assert_eq!(d.len(), 2);
        assert_eq!(
            (d[0].sent, d[0].owed, d[0].cut_off, d[0].faults),
            (7000, 15000, 2, 1)
        );
        assert_eq!(d[0].max_downtime_s, 9.0);
        assert!((d[0].lost_pct().expect("owed") - 800.0 / 15.0).abs() < 1e-9);
        assert!(d[0].faulted() && !d[0].owed_estimated);
        assert_eq!((d[1].sent, d[1].owed, d[1].cut_off), (9000, 10000, 1));
        assert!(d[1].owed_estimated && d[1].faulted());
        let md = render_delivery(&d);
        assert!(
            md.contains("| 1 | dns-rr | 7000 / 15000 | 53.3 | 9.00 | 2 |"),
            "{md}"
        );
        assert!(
            md.contains("| 1 | proposed | 9000 / 10000 (est.) | 10.0 | 1.20 | 1 |"),
            "{md}"
        );
        assert!(!md.contains("| all |"), "one trial: no totals: {md}");
    }

    #[test]
    fn no_fault_no_section() {
        assert_eq!(render_markdown(&[], &[]), "");
    }

    #[test]
    fn section_counts_cut_off_back_and_still_down_per_method() {
        let faults = ["dns-rr", "proposed"].map(kill_b2);
        let outages = [
            outage("dns-rr", "p1", None, 7.0),
            outage("dns-rr", "p3", None, 9.0),
            outage("proposed", "p0", Some(5.8), 0.8),
            outage("proposed", "p2", Some(6.2), 1.2),
        ];
        let md = render_markdown(&faults, &outages);
        assert!(
            md.contains("| 1 | dns-rr | kill b2 at 5.0 s | 2 | 0 | 2 | 9.00 | 8.00 | 8000 |"),
            "{md}"
        );
        assert!(
            md.contains("| 1 | proposed | kill b2 at 5.0 s | 2 | 2 | 0 | 1.20 | 1.00 | 1000 |"),
            "{md}"
        );
        assert!(md.contains("| 1 | dns-rr | p1 | b2 | 5.00 | never | – | 7.00 | 3500 |"));
        assert!(md.contains("| 1 | proposed | p0 | b2 | 5.00 | 5.80 | b1 | 0.80 | 400 |"));
    }
}

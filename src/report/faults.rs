//! The fault section of `summary.md`: what was broken when, and what it cost the publishers
//! (from `faults.csv` and `outages.csv`). Pure: a string from rows.

use std::fmt::Write as _;

use super::records::{FaultRow, OutageRow, first_seen};

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
        "## Faults\n\nDowntime: from a publisher's connection drop to its next CONNACK, or to its \
         scheduled end if it never reconnected. Messages not sent: what its fixed-rate schedule \
         owed meanwhile (skipped, never sent late).\n"
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

    #[test]
    fn no_fault_no_section() {
        assert_eq!(render_markdown(&[], &[]), "");
    }

    #[test]
    fn section_counts_cut_off_back_and_still_down_per_method() {
        let faults = ["dns-rr", "proposed"].map(|m| FaultRow {
            trial: 1,
            method: m.into(),
            t_s: 5.0,
            kind: "kill".into(),
            target: "b2".into(),
        });
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

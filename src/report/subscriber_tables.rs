//! The subscribers' tables: the Subscribers section of `summary.md` and the same tables under
//! each published run's generated table.

use std::collections::BTreeMap;

use super::subscribers::{Quantiles, SubscriberFigures};

/// The Subscribers section of `summary.md`: per method across trials (mean ± 95 % CI), per
/// broker, and each method's p99 against the first method's, paired by trial.
/// `methods` in the scenario's order (the first is the baseline); methods without figures are
/// left out.
pub fn render_markdown(
    figures: &BTreeMap<(u32, String), SubscriberFigures>,
    methods: &[String],
) -> String {
    use std::fmt::Write as _;

    if figures.is_empty() {
        return String::new();
    }
    let methods: Vec<&String> = methods
        .iter()
        .filter(|m| figures.keys().any(|(_, x)| x == *m))
        .collect();
    let mut md = String::new();
    let _ = writeln!(
        md,
        "## Subscribers\n\nExpected = messages the publishers wrote to the brokers a delivery \
         unit hears from (a shared group: every broker; a plain subscriber: its own); delivered \
         = distinct sequence numbers received; lost = expected − delivered. Latency = receipt \
         time − the send time in the payload's first 8 bytes, every message of the method run \
         (receipts.csv, latency-<method>-t<k>.hlog). Across trials: mean ± 95 % CI.\n"
    );
    md.push_str(&render_tables(figures, &methods));
    md
}

/// The tables of [`render_markdown`] without its heading: per method, per broker, and the
/// paired p99 differences (also under each published run's generated table).
pub fn render_tables(
    figures: &BTreeMap<(u32, String), SubscriberFigures>,
    methods: &[&String],
) -> String {
    use std::fmt::Write as _;

    use super::stats::Estimate;
    let of = |m: &str| -> Vec<(u32, &SubscriberFigures)> {
        figures
            .iter()
            .filter(|((_, method), _)| method == m)
            .map(|((t, _), f)| (*t, f))
            .collect()
    };
    let cell = |xs: Vec<f64>, decimals: usize| {
        Estimate::of(&xs).map_or("-".to_owned(), |e| e.display(decimals))
    };
    let mut md = String::new();
    let _ = writeln!(
        md,
        "| method | trials | delivered of expected | lost | duplicates | latency p50 (ms) | p99 \
         (ms) | p99.9 (ms) | max (ms) |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let q = |rs: &[(u32, &SubscriberFigures)], f: fn(&Quantiles) -> f64| {
        rs.iter()
            .filter_map(|(_, x)| x.latency.as_ref().map(f))
            .collect::<Vec<f64>>()
    };
    for m in methods {
        let rs = of(m);
        let (delivered, expected) = rs
            .iter()
            .fold((0, 0), |(d, e), (_, f)| (d + f.delivered, e + f.expected));
        let _ = writeln!(
            md,
            "| {m} | {} | {delivered} of {expected} | {} | {} | {} | {} | {} | {} |",
            rs.len(),
            cell(rs.iter().map(|(_, f)| f.lost as f64).collect(), 0),
            cell(rs.iter().map(|(_, f)| f.duplicates as f64).collect(), 0),
            cell(q(&rs, |q| q.p50_ms), 2),
            cell(q(&rs, |q| q.p99_ms), 2),
            cell(q(&rs, |q| q.p999_ms), 2),
            cell(q(&rs, |q| q.max_ms), 1),
        );
    }
    let _ = writeln!(
        md,
        "\nPer broker (by id; which broker carries the heavy publisher varies by trial):\n\n\
         | method | broker | latency p50 (ms) | p99 (ms) | p99.9 (ms) | max (ms) |\n\
         |---|---|---:|---:|---:|---:|"
    );
    for m in methods {
        let rs = of(m);
        let brokers = super::records::first_seen(
            rs.iter()
                .flat_map(|(_, f)| f.per_broker.iter().map(|(b, _)| b.as_str())),
        );
        for b in brokers {
            let per = |f: fn(&Quantiles) -> f64| -> Vec<f64> {
                rs.iter()
                    .filter_map(|(_, x)| {
                        x.per_broker
                            .iter()
                            .find(|(id, _)| id == &b)
                            .and_then(|(_, q)| q.as_ref().map(f))
                    })
                    .collect()
            };
            let _ = writeln!(
                md,
                "| {m} | {b} | {} | {} | {} | {} |",
                cell(per(|q| q.p50_ms), 2),
                cell(per(|q| q.p99_ms), 2),
                cell(per(|q| q.p999_ms), 2),
                cell(per(|q| q.max_ms), 1),
            );
        }
    }
    if let Some((base, others)) = methods.split_first()
        && !others.is_empty()
    {
        let _ = writeln!(
            md,
            "\nLatency p99, each method − {base}, paired by trial (mean ± 95 % CI; a CI that \
             excludes 0 is a difference):\n"
        );
        let base_p99: BTreeMap<u32, f64> = of(base)
            .into_iter()
            .filter_map(|(t, f)| f.latency.map(|q| (t, q.p99_ms)))
            .collect();
        for m in others {
            let diffs: Vec<f64> = of(m)
                .into_iter()
                .filter_map(|(t, f)| Some(f.latency?.p99_ms - base_p99.get(&t)?))
                .collect();
            let _ = writeln!(
                md,
                "- {m}: {} ms ({} trials)",
                cell(diffs.clone(), 2),
                diffs.len()
            );
        }
    }
    md.push('\n');
    md
}

/// The per-member table of `summary.md`'s Subscribers section: per method and shared group,
/// across trials (mean ± 95 % CI). Empty without shared groups.
pub fn render_members(
    members: &super::members::MemberFiguresByRun,
    figures: &BTreeMap<(u32, String), SubscriberFigures>,
    methods: &[String],
) -> String {
    use std::fmt::Write as _;

    use super::stats::Estimate;
    let groups = super::members::groups(members);
    if groups.is_empty() {
        return String::new();
    }
    let cell = |xs: Vec<f64>, decimals: usize| {
        Estimate::of(&xs).map_or("-".to_owned(), |e| e.display(decimals))
    };
    let mut md = String::from(
        "Per member, each shared group over the full-load window: a member's receive rate; \
         Jain's index and highest / mean over the members' rates; a member's offered load = \
         each second, its broker's inflow (brokers.csv `sent_msgs_per_s`) over the group's \
         members there, the highest member's window mean, against the best integer split of \
         the members over the window's mean inflows (ratio 1 = the best split; shown only when \
         the group's filter matches every publisher); messages published to a broker in a \
         second when the group had no member reporting there (the whole method run); member \
         moves.\n\n\
         | method | group | trials | member msg/s | Jain | highest / mean | highest per-member \
         load (msg/s) | best split (msg/s) | ratio | to member-less brokers | moves | latency \
         p99 (ms) |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for m in methods {
        for g in &groups {
            let rs: Vec<(u32, &super::members::GroupFigures)> = members
                .iter()
                .filter(|((_, method), _)| method == m)
                .filter_map(|((t, _), fs)| Some((*t, fs.iter().find(|f| &f.group == g)?)))
                .collect();
            if rs.is_empty() {
                continue;
            }
            let of = |f: fn(&super::members::GroupFigures) -> Option<f64>| -> Vec<f64> {
                rs.iter().filter_map(|(_, x)| f(x)).collect()
            };
            let p99: Vec<f64> = rs
                .iter()
                .filter_map(|(t, _)| figures.get(&(*t, m.clone()))?.latency.map(|q| q.p99_ms))
                .collect();
            let _ = writeln!(
                md,
                "| {m} | {g} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                rs.len(),
                cell(of(|f| Some(f.rate_mean)), 0),
                cell(of(|f| f.jain), 3),
                cell(of(|f| f.max_over_mean), 2),
                cell(of(|f| f.load_max), 0),
                cell(of(|f| f.best_split), 0),
                cell(of(|f| f.ratio), 2),
                cell(of(|f| f.memberless_msgs), 0),
                cell(of(|f| Some(f.moves as f64)), 1),
                cell(p99, 2),
            );
        }
    }
    md.push('\n');
    md
}

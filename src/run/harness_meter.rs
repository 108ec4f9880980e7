//! Measures one method run from the harness's side: where each wave of CONNECTs went,
//! how long redirects and joins took, and what the harness process itself cost in memory and
//! CPU per connected publisher.

use std::collections::HashMap;
use std::time::Duration;

use crate::loadgen::{LoadEvent, PlannedPublisher};
use crate::report::harness::{HarnessMeasures, quantile};

/// Follows the `Joined` events of one method run.
pub struct HarnessMeter {
    /// Publisher → (wave index, planned join in ms after t0).
    planned: HashMap<String, (usize, u64)>,
    wave_sizes: Vec<u64>,
    /// Joins per wave and broker.
    joins: Vec<HashMap<String, u64>>,
    t0_ms: u64,
    redirect_ms: Vec<f64>,
    connect_ms: Vec<f64>,
    rss0_kib: Option<u64>,
    rss_max_kib: Option<u64>,
    cpu0: Duration,
    began: std::time::Instant,
}

impl HarnessMeter {
    /// Starts measuring now, just before the load starts at `t0_ms`. Publishers that join at
    /// the same planned instant form one wave.
    pub fn start(plan: &[PlannedPublisher], t0_ms: u64) -> Self {
        let mut planned = HashMap::with_capacity(plan.len());
        let mut wave_sizes: Vec<u64> = Vec::new();
        let mut last = None;
        for p in plan {
            if last != Some(p.join_at) {
                wave_sizes.push(0);
                last = Some(p.join_at);
            }
            let wave = wave_sizes.len() - 1;
            wave_sizes[wave] += 1;
            planned.insert(p.name.clone(), (wave, p.join_at.as_millis() as u64));
        }
        let rss0 = rss_kib();
        Self {
            planned,
            joins: vec![HashMap::new(); wave_sizes.len()],
            wave_sizes,
            t0_ms,
            redirect_ms: Vec::new(),
            connect_ms: Vec::new(),
            rss0_kib: rss0,
            rss_max_kib: rss0,
            cpu0: crate::agent::cpu::own_process_cpu(),
            began: std::time::Instant::now(),
        }
    }

    pub fn event(&mut self, event: &LoadEvent) {
        let LoadEvent::Joined {
            publisher,
            broker,
            t_ms,
            redirect_ms,
        } = event
        else {
            return;
        };
        if let Some(ms) = redirect_ms {
            self.redirect_ms.push(*ms);
        }
        if let Some(&(wave, join_ms)) = self.planned.get(publisher) {
            *self.joins[wave].entry(broker.clone()).or_default() += 1;
            let planned_at = self.t0_ms + join_ms;
            self.connect_ms.push(t_ms.saturating_sub(planned_at) as f64);
        }
    }

    /// Called about once a second: the highest resident memory seen.
    pub fn sample_memory(&mut self) {
        if let Some(now) = rss_kib() {
            self.rss_max_kib = Some(self.rss_max_kib.map_or(now, |m| m.max(now)));
        }
    }

    /// The figures, with `wall` the whole method run's wall time, `length` the scenario's and
    /// `dispatcher_cpu` the CPU time of the in-process dispatcher's thread, if there was one.
    pub fn finish(
        mut self,
        wall: Duration,
        length: Duration,
        dispatcher_cpu: Option<Duration>,
    ) -> HarnessMeasures {
        self.sample_memory();
        let joined = self.connect_ms.len() as u64;
        let publishing = self.began.elapsed().as_secs_f64();
        let cpu = (crate::agent::cpu::own_process_cpu().saturating_sub(self.cpu0)).as_secs_f64();
        let largest_wave_share = self
            .joins
            .iter()
            .zip(&self.wave_sizes)
            .filter(|(_, size)| **size > 1)
            .filter_map(|(brokers, &size)| {
                let top = brokers.values().copied().max()?;
                Some(top as f64 / size as f64)
            })
            .max_by(f64::total_cmp);
        HarnessMeasures {
            wall_s: wall.as_secs_f64(),
            overhead_s: wall.saturating_sub(length).as_secs_f64(),
            publishers_joined: joined,
            loader_rss_kib_per_publisher: match (self.rss0_kib, self.rss_max_kib) {
                (Some(a), Some(b)) if joined > 0 => {
                    Some(b.saturating_sub(a) as f64 / joined as f64)
                }
                _ => None,
            },
            loader_cpu_pct: (publishing > 0.0).then(|| 100.0 * cpu / publishing),
            dispatcher_cpu_pct: dispatcher_cpu
                .filter(|_| publishing > 0.0)
                .map(|d| 100.0 * d.as_secs_f64() / publishing),
            dispatcher_host: None,
            redirect_p50_ms: quantile(&mut self.redirect_ms, 0.5),
            redirect_p99_ms: quantile(&mut self.redirect_ms, 0.99),
            connect_p50_ms: quantile(&mut self.connect_ms, 0.5),
            connect_p99_ms: quantile(&mut self.connect_ms, 0.99),
            waves: self.wave_sizes.iter().filter(|&&s| s > 1).count() as u64,
            largest_wave_share,
        }
    }
}

/// Resident memory of this process (`VmRSS`), in KiB.
fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planned(name: &str, join_s: u64) -> PlannedPublisher {
        PlannedPublisher {
            index: 0,
            name: name.into(),
            profile: 0,
            join_at: Duration::from_secs(join_s),
        }
    }

    fn joined(publisher: &str, broker: &str, t_ms: u64, redirect_ms: f64) -> LoadEvent {
        LoadEvent::Joined {
            publisher: publisher.into(),
            broker: broker.into(),
            t_ms,
            redirect_ms: Some(redirect_ms),
        }
    }

    #[test]
    fn wave_shares_and_latencies_come_from_the_joins() {
        let plan = [
            planned("a", 0),
            planned("b", 0),
            planned("c", 0),
            planned("d", 0),
            planned("e", 1),
            planned("f", 1),
            planned("solo", 2),
        ];
        let mut m = HarnessMeter::start(&plan, 10_000);
        for (p, b, t) in [
            ("a", "b1", 10_004),
            ("b", "b1", 10_010),
            ("c", "b1", 10_020),
            ("d", "b2", 10_030),
            ("e", "b1", 11_002),
            ("f", "b2", 11_003),
            ("solo", "b3", 12_001),
        ] {
            m.event(&joined(p, b, t, 1.5));
        }
        let h = m.finish(Duration::from_secs(25), Duration::from_secs(22), None);
        assert_eq!(h.waves, 2, "the lone arrival is no wave");
        assert_eq!(h.largest_wave_share, Some(0.75));
        assert_eq!(h.publishers_joined, 7);
        assert_eq!(h.connect_p50_ms, Some(4.0));
        assert_eq!(h.connect_p99_ms, Some(30.0));
        assert_eq!(h.redirect_p99_ms, Some(1.5));
        assert!((h.overhead_s - 3.0).abs() < 1e-9);
    }
}

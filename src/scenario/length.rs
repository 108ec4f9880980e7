//! How long one method run of a scenario lasts: `mqdispatch validate` prints it, the runner's
//! progress bar counts towards it. It lives with the scenario (not the runner) because it is a
//! property of the scenario's arrival plan.

use std::time::Duration;

use super::Scenario;
use crate::loadgen::plan_arrivals;

impl Scenario {
    /// The last publisher's end (join time + duration) in the arrival order of the scenario's
    /// own seed; zero if no plan can be made from it (validation has already refused those).
    pub fn method_length(&self) -> Duration {
        plan_arrivals(&self.profiles, &self.arrival, self.seed)
            .map(|plan| {
                plan.iter()
                    .map(|p| p.join_at + self.profiles[p.profile].duration)
                    .max()
                    .unwrap_or_default()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_method_run_ends_with_its_last_publisher() {
        // Arrivals at 0, 5 and 10 s; the 30 s publisher joining first ends last (30 s), not the
        // 10 s one joining last (20 s).
        let yaml = "name: t\nseed: 1\ntrials: 1\n\
            brokers: { kind: embedded, count: 2 }\n\
            sampler: { interval: 1s, window: 5s }\n\
            publishers:\n\
              - { name: long, count: 1, rate: 10, payload_bytes: 16, duration: 30s }\n\
              - { name: short, count: 2, rate: 10, payload_bytes: 16, duration: 10s }\n\
            arrival: { order: [long, short, short], interval: 5s }\n\
            methods:\n  - { name: dns-rr, assign: dns-rr }\n";
        let scenario = super::super::parse(yaml, "t.yaml").unwrap();
        assert_eq!(scenario.method_length(), Duration::from_secs(30));
        let yaml = yaml.replace("[long, short, short]", "[short, short, long]");
        let scenario = super::super::parse(&yaml, "t.yaml").unwrap();
        assert_eq!(scenario.method_length(), Duration::from_secs(40));
    }
}

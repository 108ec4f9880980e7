//! Clock offsets between hosts, for loaders whose clocks differ: a tiny TCP time service
//! ([`serve`]) and a prober ([`probe`]) that estimates another host's offset the NTP way.
//!
//! Wire: the client sends the byte [`REQUEST`]; the server answers with its CLOCK_REALTIME in
//! microseconds since the Unix epoch, 8 bytes big-endian. Any other byte closes the connection.
//!
//! Estimate ([`estimate`], pure): for each sample, the client's send time `t0`, the server's
//! time `t_remote` and the client's receive time `t3`; from the sample with the smallest round
//! trip `rtt = t3 - t0`, `offset = t_remote - (t0 + t3) / 2` (positive: the remote clock is
//! ahead) within `± rtt / 2`, whatever the split of the round trip between the two ways.
//! An instant `T` on this host's clock is `T + offset` on the remote's.

use std::time::Duration;

pub mod probe;
pub mod serve;

pub use probe::{ProbeError, probe};
pub use serve::serve;

/// The one request byte (`t`, so `printf t | nc HOST PORT | xxd` reads a clock by hand).
pub const REQUEST: u8 = b't';

/// CLOCK_REALTIME in microseconds since the Unix epoch (negative before 1970).
pub fn realtime_us() -> i64 {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_micros() as i64,
        Err(before) => -(before.duration().as_micros() as i64),
    }
}

/// One exchange, all in microseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    /// Local clock when the request was sent.
    pub t0_us: i64,
    /// The remote clock's answer.
    pub remote_us: i64,
    /// Local clock when the answer arrived.
    pub t3_us: i64,
}

/// What `mqdispatch clock probe` prints, as one JSON line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Estimate {
    /// Remote clock minus local clock.
    pub offset_us: i64,
    /// Half the best round trip (rounded up): the true offset is within `offset_us ± this`.
    pub uncertainty_us: i64,
    /// The smallest round trip seen.
    pub rtt_us: i64,
}

/// The NTP estimate from the sample with the smallest round trip. Samples whose local clock
/// went backwards during the exchange (`t3 < t0`, a clock step) are ignored; `None` if none is
/// left.
pub fn estimate(samples: &[Sample]) -> Option<Estimate> {
    let best = samples
        .iter()
        .filter(|s| s.t3_us >= s.t0_us)
        .min_by_key(|s| s.t3_us - s.t0_us)?;
    let rtt = best.t3_us - best.t0_us;
    let midpoint = (i128::from(best.t0_us) + i128::from(best.t3_us)).div_euclid(2);
    Some(Estimate {
        offset_us: (i128::from(best.remote_us) - midpoint) as i64,
        uncertainty_us: rtt.div_euclid(2) + rtt.rem_euclid(2),
        rtt_us: rtt,
    })
}

/// `mqdispatch clock`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Answer each `t` byte with this host's clock (µs since the Unix epoch, 8 bytes
    /// big-endian) until SIGINT/SIGTERM/SIGHUP or `--for` has passed.
    Serve(serve::ServeArgs),
    /// Measure a `clock serve`'s offset from this host's clock; prints
    /// `{"offset_us":..,"uncertainty_us":..,"rtt_us":..}`.
    Probe(probe::ProbeArgs),
}

pub async fn cli_main(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::Serve(args) => serve::cli_main(args).await,
        Command::Probe(args) => probe::cli_main(args).await,
    }
}

/// Bound on connecting and on each answer.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t0_us: i64, remote_us: i64, t3_us: i64) -> Sample {
        Sample {
            t0_us,
            remote_us,
            t3_us,
        }
    }

    #[test]
    fn the_smallest_round_trip_gives_the_estimate() {
        // Remote 1000 µs ahead. A slow sample (rtt 400, asymmetric) would say 1150; the best
        // (rtt 40, symmetric) says 1000 ± 20.
        let samples = [
            sample(10_000, 11_350, 10_400),
            sample(20_000, 21_020, 20_040),
            sample(30_000, 31_100, 30_200),
        ];
        assert_eq!(
            estimate(&samples),
            Some(Estimate {
                offset_us: 1_000,
                uncertainty_us: 20,
                rtt_us: 40
            })
        );
        // Order does not matter.
        let mut reversed = samples;
        reversed.reverse();
        assert_eq!(estimate(&reversed), estimate(&samples));
    }

    #[test]
    fn the_true_offset_lies_within_the_uncertainty_however_the_trip_splits() {
        let true_offset = -2_345_678i64;
        for (out_us, back_us) in [(0, 50), (50, 0), (25, 25), (1, 998), (333, 1)] {
            let t0 = 1_764_900_000_000_000i64;
            let remote = t0 + out_us + true_offset;
            let t3 = t0 + out_us + back_us;
            let e = estimate(&[sample(t0, remote, t3)]).unwrap();
            assert!(
                (e.offset_us - true_offset).abs() <= e.uncertainty_us,
                "{out_us}/{back_us}: {e:?}"
            );
            assert_eq!(e.rtt_us, out_us + back_us);
        }
    }

    #[test]
    fn odd_round_trips_round_the_uncertainty_up_and_steps_are_skipped() {
        let e = estimate(&[sample(0, 100, 3)]).unwrap();
        assert_eq!((e.offset_us, e.uncertainty_us, e.rtt_us), (99, 2, 3));
        // t3 < t0: the local clock stepped back mid-exchange.
        assert_eq!(estimate(&[sample(100, 5, 50)]), None);
        assert_eq!(
            estimate(&[sample(100, 5, 50), sample(0, 7, 4)])
                .unwrap()
                .rtt_us,
            4
        );
        assert_eq!(estimate(&[]), None);
        // Before 1970 and far apart still work (no overflow in the midpoint).
        let e = estimate(&[sample(i64::MAX - 10, 0, i64::MAX - 8)]).unwrap();
        assert_eq!(e.rtt_us, 2);
        assert_eq!(e.offset_us, -(i64::MAX - 9));
    }

    #[test]
    fn the_estimate_prints_as_the_documented_json() {
        let json = serde_json::to_string(&Estimate {
            offset_us: -5,
            uncertainty_us: 30,
            rtt_us: 60,
        })
        .unwrap();
        assert_eq!(json, r#"{"offset_us":-5,"uncertainty_us":30,"rtt_us":60}"#);
    }
}

//! CPU sources: one process (per-thread schedstat, reconciled with /proc/PID/stat), a cgroup
//! (cpuacct.usage / cpu.stat), or the whole host (/proc/stat).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::proc_stat::{self, HostTicks, ParseError};

/// What the agent measures.
#[derive(Debug, Clone, PartialEq)]
pub enum CpuSource {
    /// One process and all its threads.
    Pid(u32),
    /// The whole machine: 100 % = every core busy (as the paper's /proc/stat sampler).
    Host,
    /// Every task of a cgroup, past and present: a v1 `cpuacct` group directory (with
    /// `cpuacct.usage`) or a v2 group directory (with `cpu.stat`).
    Cgroup { path: PathBuf },
}

#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    #[error("process {0} is gone")]
    ProcessGone(u32),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Parse(#[from] ParseError),
}

fn read(path: &Path) -> Result<String, SampleError> {
    std::fs::read_to_string(path).map_err(|source| SampleError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Clock ticks per second of /proc/PID/stat (USER_HZ, 100 on Linux).
fn clock_ticks_per_s() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as u64 } else { 100 }
}

/// Cumulative on-CPU time of a process at nanosecond resolution despite exiting threads.
///
/// Per-thread schedstat is precise but forgets a thread's run time after its last sample when it
/// exits; utime+stime from /proc/PID/stat includes exited threads but only in 10 ms ticks (and
/// never exceeds the true total). So: sum live threads + last known values of vanished ones,
/// and whenever the tick total shows more, add the difference once as a permanent offset.
#[derive(Debug, Default)]
pub struct ProcessAccount {
    per_tid: HashMap<u32, u64>,
    dead_ns: u64,
    offset_ns: u64,
    last_total_ns: u64,
}

impl ProcessAccount {
    /// Feeds one reading (live threads' run times, whole-process tick total in ns); returns the
    /// cumulative total, never decreasing.
    pub fn update(&mut self, threads: HashMap<u32, u64>, ticks_ns: u64) -> u64 {
        for (tid, ns) in &self.per_tid {
            if !threads.contains_key(tid) {
                self.dead_ns += ns;
            }
        }
        self.per_tid = threads;
        let seen = self.per_tid.values().sum::<u64>() + self.dead_ns;
        if ticks_ns > seen + self.offset_ns {
            self.offset_ns = ticks_ns - seen;
        }
        self.last_total_ns = self.last_total_ns.max(seen + self.offset_ns);
        self.last_total_ns
    }
}

fn read_process(pid: u32, hz: u64) -> Result<(HashMap<u32, u64>, u64), SampleError> {
    let stat_path = PathBuf::from(format!("/proc/{pid}/stat"));
    let stat = std::fs::read_to_string(&stat_path).map_err(|_| SampleError::ProcessGone(pid))?;
    let ticks = proc_stat::pid_stat_ticks(&stat)?;
    let mut threads = HashMap::new();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map_err(|_| SampleError::ProcessGone(pid))?;
    for entry in tasks.flatten() {
        let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        // A thread may exit between listing and reading: it then counts as vanished.
        if let Ok(text) = std::fs::read_to_string(entry.path().join("schedstat")) {
            threads.insert(tid, proc_stat::schedstat_ns(&text)?);
        }
    }
    Ok((threads, ticks * 1_000_000_000 / hz))
}

fn read_cgroup_ns(dir: &Path) -> Result<u64, SampleError> {
    let v1 = dir.join("cpuacct.usage");
    if v1.exists() {
        return Ok(proc_stat::cpuacct_usage_ns(&read(&v1)?)?);
    }
    Ok(proc_stat::cpu_stat_usage_ns(&read(&dir.join("cpu.stat"))?)?)
}

fn read_host() -> Result<HostTicks, SampleError> {
    Ok(proc_stat::host_ticks(&read(Path::new("/proc/stat"))?)?)
}

#[derive(Debug, Clone, Copy)]
enum Counter {
    Ns(u64),
    Host(HostTicks),
}

/// Turns successive readings of a [`CpuSource`] into CPU percentages.
#[derive(Debug)]
pub struct CpuSampler {
    source: CpuSource,
    capacity_cores: f64,
    hz: u64,
    account: ProcessAccount,
    last: Option<(Instant, Counter)>,
}

impl CpuSampler {
    /// `capacity_cores`: what 100 % means for a process or cgroup (1 core unless capped).
    /// Ignored for the host, where 100 % is every core busy.
    pub fn new(source: CpuSource, capacity_cores: Option<f64>) -> Self {
        CpuSampler {
            source,
            capacity_cores: capacity_cores.unwrap_or(1.0),
            hz: clock_ticks_per_s(),
            account: ProcessAccount::default(),
            last: None,
        }
    }

    pub fn source(&self) -> &CpuSource {
        &self.source
    }

    fn read(&mut self) -> Result<Counter, SampleError> {
        Ok(match &self.source {
            CpuSource::Pid(pid) => {
                let (threads, ticks_ns) = read_process(*pid, self.hz)?;
                Counter::Ns(self.account.update(threads, ticks_ns))
            }
            CpuSource::Cgroup { path } => Counter::Ns(read_cgroup_ns(path)?),
            CpuSource::Host => Counter::Host(read_host()?),
        })
    }

    /// Reads the source; returns the CPU percentage since the previous call (`None` on the first
    /// call, which only sets the baseline).
    pub fn sample(&mut self) -> Result<Option<f64>, SampleError> {
        let now = Instant::now();
        let counter = self.read()?;
        let pct = match (self.last, counter) {
            (Some((then, Counter::Ns(a))), Counter::Ns(b)) => {
                let wall_ns = now.duration_since(then).as_nanos() as f64;
                (wall_ns > 0.0)
                    .then(|| 100.0 * b.saturating_sub(a) as f64 / wall_ns / self.capacity_cores)
            }
            (Some((_, Counter::Host(a))), Counter::Host(b)) => {
                let total = b.total.saturating_sub(a.total);
                (total > 0).then(|| 100.0 * b.busy.saturating_sub(a.busy) as f64 / total as f64)
            }
            _ => None,
        };
        self.last = Some((now, counter));
        Ok(pct)
    }
}

/// User + system CPU time of this whole process (every thread, including exited ones), from
/// `getrusage`: what the harness and benchmarks charge to themselves.
pub fn own_process_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct we hand it.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// CPU time (user + system) of the calling thread.
pub fn own_thread_cpu() -> Duration {
    // SAFETY: clock_gettime only writes the struct we hand it.
    let ts = unsafe {
        let mut ts = std::mem::zeroed::<libc::timespec>();
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts);
        ts
    };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn threads(list: &[(u32, u64)]) -> HashMap<u32, u64> {
        list.iter().copied().collect()
    }

    #[test]
    fn account_sums_live_threads_at_ns_resolution() {
        let mut a = ProcessAccount::default();
        assert_eq!(a.update(threads(&[(1, 1_000), (2, 2_000)]), 0), 3_000);
        assert_eq!(a.update(threads(&[(1, 1_500), (2, 2_700)]), 0), 4_200);
    }

    #[test]
    fn account_keeps_exited_threads_and_catches_up_with_ticks() {
        let mut a = ProcessAccount::default();
        a.update(threads(&[(1, 5_000_000), (2, 5_000_000)]), 0);
        // Thread 2 ran 30 ms more, then exited: schedstat forgets that, the tick total has it.
        let total = a.update(threads(&[(1, 6_000_000)]), 40_000_000);
        assert_eq!(total, 40_000_000);
        // Afterwards precision returns: +1 µs on thread 1 shows as +1 µs.
        assert_eq!(a.update(threads(&[(1, 6_001_000)]), 40_000_000), 40_001_000);
    }

    #[test]
    fn account_ignores_a_lagging_tick_total() {
        let mut a = ProcessAccount::default();
        // Ticks truncate to 10 ms, so they usually lag the schedstat sum: no offset then.
        assert_eq!(
            a.update(threads(&[(1, 19_000_000)]), 10_000_000),
            19_000_000
        );
        assert_eq!(
            a.update(threads(&[(1, 19_500_000)]), 10_000_000),
            19_500_000
        );
    }

    #[test]
    fn samples_own_process_and_host() {
        let mut own = CpuSampler::new(CpuSource::Pid(std::process::id()), None);
        assert_eq!(own.sample().unwrap(), None);
        let spin_until = Instant::now() + std::time::Duration::from_millis(50);
        while Instant::now() < spin_until {
            std::hint::black_box(0u64);
        }
        let pct = own.sample().unwrap().unwrap();
        assert!(pct > 10.0, "a 50 ms busy loop measured {pct} %");

        let mut host = CpuSampler::new(CpuSource::Host, None);
        host.sample().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(30));
        let pct = host.sample().unwrap().unwrap_or(0.0);
        assert!((0.0..=100.0).contains(&pct));
    }

    #[test]
    fn gone_process_is_an_error() {
        // pid_max is at most 2^22, so this pid cannot exist.
        let mut s = CpuSampler::new(CpuSource::Pid(u32::MAX - 1), None);
        assert!(matches!(s.sample(), Err(SampleError::ProcessGone(_))));
    }
}

//! CPU pinning of child processes (`brokers.cpus`): a set of CPUs in `taskset -c` syntax
//! (`2`, `0-1`, `0,2-3`), applied to a child between fork and exec so that every thread it
//! ever starts inherits it.
//!
//! Why: on one host the brokers' per-process CPU is not the broker's alone. An event-driven
//! broker that shares a core with busy neighbours is woken later, reads several messages per
//! wake-up and so spends less CPU on the same load (README: the neighbour benchmark under the
//! heavy-2nd Mosquitto results; "Pinning" under CPU caps).
//! A broker on a core of its own measures what its load costs, as on the paper's separate hosts.

use std::fmt;
use std::str::FromStr;

/// A non-empty set of CPU numbers, sorted, without duplicates.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(into = "String")]
pub struct CpuSet(Vec<usize>);

/// Highest CPU number accepted in a set (the kernel's `cpu_set_t` holds 1024).
const MAX_CPU: usize = 1023;

impl CpuSet {
    /// The set of these CPU numbers; `None` if empty or a number is above the highest CPU.
    pub fn from_cpus(cpus: impl IntoIterator<Item = usize>) -> Option<CpuSet> {
        let mut cpus: Vec<usize> = cpus.into_iter().collect();
        if cpus.is_empty() || cpus.iter().any(|&c| c > MAX_CPU) {
            return None;
        }
        cpus.sort_unstable();
        cpus.dedup();
        Some(CpuSet(cpus))
    }

    pub fn cpus(&self) -> &[usize] {
        &self.0
    }

    /// Checks that every CPU of the set is online on this host.
    pub fn check_online(&self) -> Result<(), String> {
        let online = online_cpus()?;
        match self.0.iter().find(|c| !online.0.contains(c)) {
            None => Ok(()),
            Some(missing) => Err(format!(
                "CPU {missing} is not online on this host (online: {online})"
            )),
        }
    }

    /// Makes `cmd`'s child run only on these CPUs, from before its first instruction.
    pub fn apply_to(&self, cmd: &mut tokio::process::Command) {
        let mask = self.mask();
        // SAFETY: the closure runs in the forked child before exec; it only calls
        // sched_setaffinity, a plain syscall (async-signal-safe), on a mask built beforehand.
        unsafe {
            cmd.pre_exec(move || {
                if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mask) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }

    fn mask(&self) -> libc::cpu_set_t {
        // SAFETY: cpu_set_t is a plain bit array; all zeroes is the empty set.
        let mut mask: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        for &cpu in &self.0 {
            // SAFETY: cpu ≤ MAX_CPU < CPU_SETSIZE, checked when the set was parsed.
            unsafe { libc::CPU_SET(cpu, &mut mask) };
        }
        mask
    }
}

/// The CPUs the kernel lists as online (`/sys/devices/system/cpu/online`).
pub fn online_cpus() -> Result<CpuSet, String> {
    let path = "/sys/devices/system/cpu/online";
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    text.trim().parse().map_err(|e| format!("{path}: {e}"))
}

/// The CPUs process `pid` may run on (`Cpus_allowed_list` of its `/proc` status).
pub fn allowed_cpus(pid: u32) -> Result<CpuSet, String> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .ok_or_else(|| format!("{path}: no Cpus_allowed_list"))?
        .trim()
        .parse()
        .map_err(|e| format!("{path}: {e}"))
}

impl FromStr for CpuSet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| format!("`{s}` is not a CPU list like `2`, `0-1` or `0,2-3`: {why}");
        let number = |n: &str| {
            let n: usize = n.trim().parse().map_err(|_| bad("not a CPU number"))?;
            if n > MAX_CPU {
                return Err(bad(&format!("CPU numbers go up to {MAX_CPU}")));
            }
            Ok(n)
        };
        let mut cpus = Vec::new();
        for part in s.split(',') {
            match part.split_once('-') {
                Some((from, to)) => {
                    let (from, to) = (number(from)?, number(to)?);
                    if from > to {
                        return Err(bad("a range goes from low to high"));
                    }
                    cpus.extend(from..=to);
                }
                None => cpus.push(number(part)?),
            }
        }
        Ok(CpuSet::from_cpus(cpus).expect("invariant: at least one part, each checked"))
    }
}

impl fmt::Display for CpuSet {
    /// Ranges collapsed, as the kernel prints them: `0-2,5`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        let mut cpus = self.0.iter().copied().peekable();
        while let Some(from) = cpus.next() {
            let mut to = from;
            while cpus.peek() == Some(&(to + 1)) {
                to = cpus.next().unwrap_or(to);
            }
            parts.push(if from == to {
                from.to_string()
            } else {
                format!("{from}-{to}")
            });
        }
        f.write_str(&parts.join(","))
    }
}

impl From<CpuSet> for String {
    fn from(set: CpuSet) -> String {
        set.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_as_taskset_writes_them_and_print_as_the_kernel_does() {
        let set: CpuSet = "3,0-1,1".parse().unwrap();
        assert_eq!(set.cpus(), &[0, 1, 3]);
        assert_eq!(set.to_string(), "0-1,3");
        assert_eq!("7".parse::<CpuSet>().unwrap().to_string(), "7");
        assert_eq!("0-3".parse::<CpuSet>().unwrap().to_string(), "0-3");
        assert_eq!(CpuSet::from_cpus([3, 1, 0, 1]), Some(set.clone()));
        assert_eq!(CpuSet::from_cpus([]), None);
        assert_eq!(CpuSet::from_cpus([1024]), None);
        for bad in ["", "a", "2-1", "1,,2", "-1", "1024", "0-"] {
            let err = bad.parse::<CpuSet>().unwrap_err();
            assert!(err.contains("not a CPU list"), "{bad}: {err}");
        }
    }

    #[test]
    fn this_host_has_online_cpus_and_cpu_0_among_them() {
        let online = online_cpus().unwrap();
        assert!(online.cpus().contains(&0));
        assert!("0".parse::<CpuSet>().unwrap().check_online().is_ok());
        let err = "1023"
            .parse::<CpuSet>()
            .unwrap()
            .check_online()
            .unwrap_err();
        assert!(err.contains("CPU 1023 is not online"), "{err}");
    }

    #[tokio::test]
    async fn a_pinned_child_and_its_threads_run_only_on_the_set() {
        let set: CpuSet = "0".parse().unwrap();
        let mut cmd = tokio::process::Command::new("sleep");
        cmd.arg("5").kill_on_drop(true);
        set.apply_to(&mut cmd);
        let mut child = cmd.spawn().unwrap();
        let pid = child.id().unwrap();
        assert_eq!(allowed_cpus(pid).unwrap(), set);
        child.kill().await.unwrap();
    }
}

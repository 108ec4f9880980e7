//! Pure parsers for the /proc and cgroup files the CPU sampler reads (tested on captured text).

/// Error for text that does not look like the file it should be.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("unexpected format of {file}: {why}")]
pub struct ParseError {
    pub file: &'static str,
    pub why: String,
}

fn bad(file: &'static str, why: impl Into<String>) -> ParseError {
    ParseError {
        file,
        why: why.into(),
    }
}

/// `/proc/PID/stat`: utime + stime in clock ticks (fields 14 and 15), summed over all threads of
/// the process including exited ones. The command name (field 2) may contain spaces and
/// parentheses, so fields are counted from the *last* `)`.
pub fn pid_stat_ticks(text: &str) -> Result<u64, ParseError> {
    const FILE: &str = "/proc/PID/stat";
    let close = text
        .rfind(')')
        .ok_or_else(|| bad(FILE, "no `)` after comm"))?;
    // After ")": field 3 (state) is index 0, so utime (field 14) is index 11, stime index 12.
    let mut fields = text[close + 1..].split_ascii_whitespace();
    let mut field = |n: usize, name: &str| -> Result<u64, ParseError> {
        fields
            .nth(n)
            .ok_or_else(|| bad(FILE, format!("missing {name}")))?
            .parse::<u64>()
            .map_err(|e| bad(FILE, format!("{name}: {e}")))
    };
    let utime = field(11, "utime")?;
    let stime = field(0, "stime")?;
    Ok(utime + stime)
}

/// `/proc/PID/task/TID/schedstat`: the first field is nanoseconds spent on a CPU.
pub fn schedstat_ns(text: &str) -> Result<u64, ParseError> {
    const FILE: &str = "schedstat";
    text.split_ascii_whitespace()
        .next()
        .ok_or_else(|| bad(FILE, "empty"))?
        .parse()
        .map_err(|e| bad(FILE, format!("run time: {e}")))
}

/// Busy and total jiffies of the whole host from `/proc/stat`'s aggregate `cpu` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostTicks {
    pub busy: u64,
    pub total: u64,
}

/// `/proc/stat`: the `cpu ` line is user nice system idle iowait irq softirq steal guest
/// guest_nice. Idle time is idle + iowait; guest time is already included in user/nice, so it
/// is not added again.
pub fn host_ticks(text: &str) -> Result<HostTicks, ParseError> {
    const FILE: &str = "/proc/stat";
    let line = text
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or_else(|| bad(FILE, "no aggregate `cpu` line"))?;
    let values: Vec<u64> = line
        .split_ascii_whitespace()
        .skip(1)
        .map(|v| v.parse::<u64>().map_err(|e| bad(FILE, format!("{v}: {e}"))))
        .collect::<Result<_, _>>()?;
    if values.len() < 4 {
        return Err(bad(FILE, "fewer than 4 counters on the cpu line"));
    }
    let total: u64 = values.iter().take(8).sum();
    let idle = values[3] + values.get(4).copied().unwrap_or(0);
    Ok(HostTicks {
        busy: total - idle,
        total,
    })
}

/// cgroup v1 `cpuacct.usage`: nanoseconds used by all tasks of the group, past and present.
pub fn cpuacct_usage_ns(text: &str) -> Result<u64, ParseError> {
    text.trim()
        .parse()
        .map_err(|e| bad("cpuacct.usage", format!("{e}")))
}

/// cgroup v2 `cpu.stat`: the `usage_usec` line, in nanoseconds.
pub fn cpu_stat_usage_ns(text: &str) -> Result<u64, ParseError> {
    const FILE: &str = "cpu.stat";
    let value = text
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .ok_or_else(|| bad(FILE, "no usage_usec line"))?;
    let usec: u64 = value
        .trim()
        .parse()
        .map_err(|e| bad(FILE, format!("usage_usec: {e}")))?;
    Ok(usec * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from this machine (`cat /proc/$$/stat`), utime 3 + stime 37.
    const BASH_STAT: &str = "13119 (bash) S 13117 13119 13119 0 -1 4194560 3684 49857 2 39 3 37 \
        37 11 20 0 1 0 102603 5124096 926 18446744073709551615 94371327578112 94371328367517 \
        140735823600496 0 0 0 65536 4 1132560123 1 0 0 17 1 0 0 0 0 0 94371328600816 \
        94371328649060 94371481456640 140735823604602 140735823604617 140735823604617 \
        140735823605738 0\n";

    #[test]
    fn stat_ticks_are_utime_plus_stime() {
        assert_eq!(pid_stat_ticks(BASH_STAT), Ok(40));
    }

    #[test]
    fn stat_comm_with_spaces_and_parens() {
        // A process may call itself anything, including ") S 1 2 3 (".
        let evil = BASH_STAT.replace("(bash)", "(my ) S 1 2 (x) proc)");
        assert_eq!(pid_stat_ticks(&evil), Ok(40));
    }

    #[test]
    fn stat_truncated_is_an_error() {
        assert!(pid_stat_ticks("1 (a) S 1 2 3").is_err());
        assert!(pid_stat_ticks("garbage").is_err());
    }

    #[test]
    fn schedstat_first_field() {
        assert_eq!(schedstat_ns("38831325 14700349 115\n"), Ok(38_831_325));
        assert!(schedstat_ns("").is_err());
        assert!(schedstat_ns("x 1 2").is_err());
    }

    #[test]
    fn host_ticks_from_proc_stat() {
        let text = "cpu  83886 0 6709 148668 373 0 60 19 0 0\n\
                    cpu0 41557 0 2968 75276 73 0 9 7 0 0\n\
                    cpu1 42329 0 3740 73391 299 0 50 11 0 0\nintr 1 2 3\n";
        let t = host_ticks(text).unwrap();
        assert_eq!(t.total, 83886 + 6709 + 148668 + 373 + 60 + 19);
        assert_eq!(t.busy, 83886 + 6709 + 60 + 19);
    }

    #[test]
    fn host_ticks_requires_the_aggregate_line() {
        assert!(host_ticks("cpu0 1 2 3 4\n").is_err());
        assert!(host_ticks("cpu  1 2\n").is_err());
    }

    #[test]
    fn cgroup_usage_files() {
        assert_eq!(cpuacct_usage_ns("123456789\n"), Ok(123_456_789));
        let v2 = "usage_usec 2500\nuser_usec 2000\nsystem_usec 500\nnr_periods 0\n";
        assert_eq!(cpu_stat_usage_ns(v2), Ok(2_500_000));
        assert!(cpu_stat_usage_ns("user_usec 1\n").is_err());
    }
}

//! Weak-host emulation: a CPU quota for one broker with a cgroup, v1 (`cpu.cfs_quota_us`, usage
//! from `cpuacct.usage`) or v2 (`cpu.max`, usage from `cpu.stat`). Groups are named
//! `mqdispatch-<our pid>-<broker>-<n>`, removed on `remove()` and on drop; groups left behind by
//! a killed harness are swept when the next one is created.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tracing::{debug, warn};

/// CFS period used for quotas: 100 ms, the kernel default.
const PERIOD_US: u64 = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "no cgroup CPU controller found (need a cgroup v1 `cpu` hierarchy or cgroup v2 with the \
         `cpu` controller): CPU limits cannot be applied on this host"
    )]
    NoController,
    #[error(
        "cannot write {path}: {source}; CPU limits need root and a writable cgroup mount \
         (run as root, or drop cpu_limit from the scenario)"
    )]
    NotWritable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cpu limit {0} cores is not a positive number")]
    BadLimit(f64),
    #[error("`{0}` is not a cgroup name (one path component)")]
    BadName(String),
}

/// Where the CPU controller lives on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// Mount points of the v1 `cpu` and `cpuacct` hierarchies (the same when co-mounted).
    V1 { cpu: PathBuf, cpuacct: PathBuf },
    /// The cgroup2 mount point.
    V2 { root: PathBuf },
}

/// Finds the CPU controller in `/proc/self/mountinfo` text. A v1 `cpu` hierarchy wins over a
/// controller-less cgroup2 mount (the hybrid layout of this machine); `has_cpu_v2` tells
/// whether a cgroup2 mount point offers the `cpu` controller.
pub fn parse_layout(mountinfo: &str, has_cpu_v2: impl Fn(&Path) -> bool) -> Option<Layout> {
    let mut cpu = None;
    let mut cpuacct = None;
    let mut v2 = None;
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mount_point) = left.split_ascii_whitespace().nth(4) else {
            continue;
        };
        let mut right = right.split_ascii_whitespace();
        let (fstype, super_opts) = (right.next(), right.nth(1).unwrap_or(""));
        match fstype {
            Some("cgroup") => {
                let opts: Vec<&str> = super_opts.split(',').collect();
                if opts.contains(&"cpu") {
                    cpu = Some(PathBuf::from(mount_point));
                }
                if opts.contains(&"cpuacct") {
                    cpuacct = Some(PathBuf::from(mount_point));
                }
            }
            Some("cgroup2") if v2.is_none() && has_cpu_v2(Path::new(mount_point)) => {
                v2 = Some(PathBuf::from(mount_point));
            }
            _ => {}
        }
    }
    match (cpu, cpuacct, v2) {
        (Some(cpu), Some(cpuacct), _) => Some(Layout::V1 { cpu, cpuacct }),
        (_, _, Some(root)) => Some(Layout::V2 { root }),
        _ => None,
    }
}

/// The layout of this host.
pub fn detect() -> Result<Layout, CgroupError> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    parse_layout(&mountinfo, |root| {
        std::fs::read_to_string(root.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_ascii_whitespace().any(|c| c == "cpu"))
    })
    .ok_or(CgroupError::NoController)
}

static NEXT: AtomicU64 = AtomicU64::new(0);

/// One capped group; its directories are removed on drop.
#[derive(Debug)]
pub struct CpuCgroup {
    /// Group directories to remove (one per hierarchy), with their parent's procs file.
    dirs: Vec<(PathBuf, PathBuf)>,
    /// Where usage is read: the cpuacct directory (v1) or the group (v2).
    usage_dir: PathBuf,
    /// `cgroup.procs` files a new process must join.
    procs_files: Vec<PathBuf>,
    cores: f64,
    removed: bool,
}

fn write(path: &Path, text: &str) -> Result<(), CgroupError> {
    std::fs::write(path, text).map_err(|source| CgroupError::NotWritable {
        path: path.to_owned(),
        source,
    })
}

fn mkdir(path: &Path) -> Result<(), CgroupError> {
    std::fs::create_dir(path).map_err(|source| CgroupError::NotWritable {
        path: path.to_owned(),
        source,
    })
}

impl CpuCgroup {
    /// Creates a group limited to `cores` (e.g. 0.25) for broker `broker_id`.
    pub fn create(broker_id: &str, cores: f64) -> Result<Self, CgroupError> {
        let safe_id: String = broker_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let name = format!(
            "mqdispatch-{}-{safe_id}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        Self::create_named(&name, cores)
    }

    /// Creates the group `name` (one path component) limited to `cores`. Call [`Self::keep`]
    /// for a group that outlives this process, and [`remove_named`] to remove it later.
    pub fn create_named(name: &str, cores: f64) -> Result<Self, CgroupError> {
        if !(cores.is_finite() && cores > 0.0) {
            return Err(CgroupError::BadLimit(cores));
        }
        check_name(name)?;
        let layout = detect()?;
        let quota_us = ((cores * PERIOD_US as f64).round() as u64).max(1000);
        let mut group = CpuCgroup {
            dirs: Vec::new(),
            usage_dir: PathBuf::new(),
            procs_files: Vec::new(),
            cores,
            removed: false,
        };
        // On error `group` drops here and removes whatever was already created.
        match layout {
            Layout::V1 { cpu, cpuacct } => {
                sweep_stale(&cpu);
                let cpu_dir = cpu.join(name);
                mkdir(&cpu_dir)?;
                group.add_dir(&cpu, &cpu_dir);
                write(&cpu_dir.join("cpu.cfs_period_us"), &PERIOD_US.to_string())?;
                write(&cpu_dir.join("cpu.cfs_quota_us"), &quota_us.to_string())?;
                group.usage_dir = cpu_dir;
                if cpuacct != cpu {
                    sweep_stale(&cpuacct);
                    let acct_dir = cpuacct.join(name);
                    mkdir(&acct_dir)?;
                    group.add_dir(&cpuacct, &acct_dir);
                    group.usage_dir = acct_dir;
                }
            }
            Layout::V2 { root } => {
                sweep_stale(&root);
                let control = std::fs::read_to_string(root.join("cgroup.subtree_control"))
                    .unwrap_or_default();
                if !control.split_ascii_whitespace().any(|c| c == "cpu") {
                    write(&root.join("cgroup.subtree_control"), "+cpu")?;
                }
                let dir = root.join(name);
                mkdir(&dir)?;
                group.add_dir(&root, &dir);
                write(&dir.join("cpu.max"), &format!("{quota_us} {PERIOD_US}"))?;
                group.usage_dir = dir;
            }
        }
        debug!(group = %name, cores, quota_us, "cgroup created");
        Ok(group)
    }

    fn add_dir(&mut self, parent: &Path, dir: &Path) {
        self.dirs
            .push((dir.to_owned(), parent.join("cgroup.procs")));
        self.procs_files.push(dir.join("cgroup.procs"));
    }

    pub fn cores(&self) -> f64 {
        self.cores
    }

    /// The directory an agent samples ([`crate::agent::CpuSource::Cgroup`]).
    pub fn usage_dir(&self) -> &Path {
        &self.usage_dir
    }

    /// Main group directory (for logs and tests).
    pub fn dir(&self) -> &Path {
        &self.dirs[0].0
    }

    /// Moves a running process (with all its threads) into the group.
    pub fn add_pid(&self, pid: u32) -> Result<(), CgroupError> {
        self.procs_files
            .iter()
            .try_for_each(|f| write(f, &pid.to_string()))
    }

    /// Leaves the group in place when this handle drops (for groups that outlive the process
    /// that made them, e.g. a test bed's hosts).
    pub fn keep(mut self) {
        self.removed = true;
    }

    /// Makes `cmd`'s process join the group between fork and exec, so the broker never runs a
    /// single instruction (or starts a thread) outside its cap.
    pub fn apply_to(&self, cmd: &mut tokio::process::Command) -> Result<(), CgroupError> {
        self.apply_to_std(cmd.as_std_mut())
    }

    /// [`Self::apply_to`] for a blocking [`std::process::Command`].
    pub fn apply_to_std(&self, cmd: &mut std::process::Command) -> Result<(), CgroupError> {
        let paths: Vec<CString> = self
            .procs_files
            .iter()
            .map(|p| CString::new(p.as_os_str().as_bytes()))
            .collect::<Result<_, _>>()
            .map_err(|e| CgroupError::NotWritable {
                path: self.dir().to_owned(),
                source: std::io::Error::other(e),
            })?;
        // SAFETY: the hook only calls async-signal-safe functions (open, write, close) on
        // buffers allocated before fork.
        unsafe {
            cmd.pre_exec(move || {
                for path in &paths {
                    let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    // "0" means the writing process itself.
                    let n = libc::write(fd, b"0\n".as_ptr().cast(), 2);
                    let err = std::io::Error::last_os_error();
                    libc::close(fd);
                    if n < 0 {
                        return Err(err);
                    }
                }
                Ok(())
            });
        }
        Ok(())
    }

    /// Moves any remaining tasks to the parent group and removes the directories.
    pub fn remove(&mut self) -> std::io::Result<()> {
        if self.removed {
            return Ok(());
        }
        self.removed = true;
        let mut result = Ok(());
        for (dir, parent_procs) in self.dirs.iter().rev() {
            if let Err(e) = remove_dir(dir, parent_procs) {
                warn!(dir = %dir.display(), error = %e, "cannot remove cgroup");
                result = Err(e);
            }
        }
        result
    }
}

impl Drop for CpuCgroup {
    fn drop(&mut self) {
        let _ = self.remove();
    }
}

/// The directories groups are made in on this host (one per hierarchy).
pub fn hierarchies() -> Result<Vec<PathBuf>, CgroupError> {
    Ok(match detect()? {
        Layout::V1 { cpu, cpuacct } if cpu == cpuacct => vec![cpu],
        Layout::V1 { cpu, cpuacct } => vec![cpu, cpuacct],
        Layout::V2 { root } => vec![root],
    })
}

fn check_name(name: &str) -> Result<(), CgroupError> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(CgroupError::BadName(name.to_owned()));
    }
    Ok(())
}

/// The directories group `name` has or would have on this host (one per hierarchy).
pub fn dirs_named(name: &str) -> Result<Vec<PathBuf>, CgroupError> {
    check_name(name)?;
    Ok(hierarchies()?.iter().map(|h| h.join(name)).collect())
}

/// Removes group `name` made by [`CpuCgroup::create_named`], moving any task still in it to
/// the parent group. Nothing to do when it does not exist.
pub fn remove_named(name: &str) -> Result<(), CgroupError> {
    for dir in dirs_named(name)?.iter().rev() {
        let parent_procs = dir
            .parent()
            .map(|p| p.join("cgroup.procs"))
            .unwrap_or_default();
        remove_dir(dir, &parent_procs).map_err(|source| CgroupError::NotWritable {
            path: dir.clone(),
            source,
        })?;
    }
    Ok(())
}

fn remove_dir(dir: &Path, parent_procs: &Path) -> std::io::Result<()> {
    // A killed task may linger in the group for a moment: retry briefly.
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.split_ascii_whitespace() {
                let _ = std::fs::write(parent_procs, pid);
            }
        }
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Removes empty groups of earlier harness processes that no longer exist.
fn sweep_stale(mount: &Path) {
    let Ok(entries) = std::fs::read_dir(mount) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("mqdispatch-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            // Only empty groups can be removed; anything still running keeps its group.
            if std::fs::remove_dir(entry.path()).is_ok() {
                debug!(group = ?name, "removed stale cgroup");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from this machine (separate cpu and cpuacct v1 hierarchies + empty cgroup2).
    const HYBRID: &str = "\
35 25 0:30 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
36 35 0:31 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
37 35 0:32 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
38 35 0:33 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
44 35 0:39 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn v1_separate_hierarchies() {
        assert_eq!(
            parse_layout(HYBRID, |_| false),
            Some(Layout::V1 {
                cpu: "/sys/fs/cgroup/cpu".into(),
                cpuacct: "/sys/fs/cgroup/cpuacct".into()
            })
        );
    }

    #[test]
    fn v1_comounted() {
        let text = "36 35 0:31 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n";
        let both = PathBuf::from("/sys/fs/cgroup/cpu,cpuacct");
        assert_eq!(
            parse_layout(text, |_| false),
            Some(Layout::V1 {
                cpu: both.clone(),
                cpuacct: both
            })
        );
    }

    #[test]
    fn v2_only_with_cpu_controller() {
        let text = "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            parse_layout(text, |_| true),
            Some(Layout::V2 {
                root: "/sys/fs/cgroup".into()
            })
        );
        assert_eq!(parse_layout(text, |_| false), None);
    }

    #[test]
    fn names_are_one_path_component() {
        for bad in ["", ".", "..", "a/b", "../x"] {
            assert!(matches!(
                CpuCgroup::create_named(bad, 0.5),
                Err(CgroupError::BadName(_))
            ));
            assert!(matches!(dirs_named(bad), Err(CgroupError::BadName(_))));
        }
    }

    #[test]
    fn bad_limits_are_refused() {
        assert!(matches!(
            CpuCgroup::create("b", 0.0),
            Err(CgroupError::BadLimit(_))
        ));
        assert!(matches!(
            CpuCgroup::create("b", f64::NAN),
            Err(CgroupError::BadLimit(_))
        ));
    }
}

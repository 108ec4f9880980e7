//! A host's CPU cap: a cgroup per host, named like its namespace, that the host's sshd (and so
//! everything started over ssh there) runs in. Made with [`crate::broker::cgroup`], kept after
//! `up` exits, removed by name on `down`.

use std::path::PathBuf;

use crate::broker::cgroup::{self, CgroupError, CpuCgroup};

/// Creates the group `name` capped at `cores`; it stays when the returned handle drops.
pub fn create(name: &str, cores: f64) -> Result<CpuCgroup, CgroupError> {
    CpuCgroup::create_named(name, cores)
}

/// Test bed groups present on this host whose names `is_ours` accepts.
pub fn existing(is_ours: impl Fn(&str) -> bool) -> Result<Vec<String>, CgroupError> {
    let mut names = Vec::new();
    for hierarchy in cgroup::hierarchies()? {
        let Ok(entries) = std::fs::read_dir(&hierarchy) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.path().is_dir() && is_ours(&name) && !names.contains(&name) {
                names.push(name);
            }
        }
    }
    Ok(names)
}

/// Processes in group `name`, in any hierarchy.
pub fn pids(name: &str) -> Vec<u32> {
    let Ok(dirs) = cgroup::dirs_named(name) else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = dirs
        .iter()
        .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|t| {
            t.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Removes group `name` (tasks still in it move to the parent group).
pub fn remove(name: &str) -> Result<(), CgroupError> {
    cgroup::remove_named(name)
}

/// The group directories `name` has or would have (for checks that it is gone).
pub fn dirs(name: &str) -> Result<Vec<PathBuf>, CgroupError> {
    cgroup::dirs_named(name)
}

/// True when `/proc/PID/cgroup` text puts the process in group `name` of the CPU controller
/// (v1 line `N:cpu,...:/name`, v2 line `0::/name`).
pub fn cgroup_file_names(text: &str, name: &str) -> bool {
    text.lines().any(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next(), parts.next());
        let cpu = controllers.is_some_and(|c| c.is_empty() || c.split(',').any(|c| c == "cpu"));
        cpu && path.is_some_and(|p| p.trim_end() == format!("/{name}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn membership_from_proc_cgroup() {
        let v1 = "12:memory:/\n5:cpu:/mqdtb-h1\n4:cpuacct:/mqdtb-h1\n0::/\n";
        assert!(cgroup_file_names(v1, "mqdtb-h1"));
        assert!(!cgroup_file_names(v1, "mqdtb-h2"));
        assert!(!cgroup_file_names("5:cpu:/mqdtb-h10\n", "mqdtb-h1"));
        assert!(cgroup_file_names("0::/mqdtb-h2\n", "mqdtb-h2"));
        assert!(!cgroup_file_names("3:memory:/mqdtb-h1\n", "mqdtb-h1"));
    }
}

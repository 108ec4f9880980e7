//! The results folder of one run and its manifest (docs/src/outputs.md).
//!
//! `results/<scenario>/<run-id>/` is created with `create_dir` (never `create_dir_all` on the
//! last component), so two runs can never share, or overwrite, a folder.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::report::RunStatus;
use crate::scenario::Scenario;

/// Creates `root/<scenario>/<run-id>` where run-id is the UTC start time, with a suffix when
/// a run started within the same second.
pub fn create(root: &Path, scenario: &str) -> std::io::Result<PathBuf> {
    let parent = root.join(scenario);
    std::fs::create_dir_all(&parent)?;
    let stamp = utc_stamp(crate::now_ms() / 1000);
    for attempt in 0..1000 {
        let id = if attempt == 0 {
            stamp.clone()
        } else {
            format!("{stamp}-{attempt}")
        };
        let dir = parent.join(&id);
        match std::fs::create_dir(&dir) {
            Ok(()) => {
                update_latest_link(&parent, &id);
                return Ok(dir);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other(
        "1000 runs started in the same second",
    ))
}

/// `results/<scenario>/latest` → the newest run, for scripts and the Makefile.
fn update_latest_link(parent: &Path, id: &str) {
    let link = parent.join("latest");
    let _ = std::fs::remove_file(&link);
    let _ = std::os::unix::fs::symlink(id, &link);
}

/// `YYYYMMDD-HHMMSS` in UTC from Unix seconds (civil-from-days, no time-zone database needed).
pub fn utc_stamp(unix_s: u64) -> String {
    let days = (unix_s / 86_400) as i64;
    let secs = unix_s % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[derive(Debug, Serialize)]
pub struct Manifest {
    pub scenario: Scenario,
    pub scenario_file: String,
    pub scenario_text: String,
    pub seeds: Vec<u64>,
    pub trials: u32,
    pub methods: Vec<String>,
    pub crate_version: &'static str,
    pub git_commit: Option<String>,
    pub host: Host,
    pub broker_kind: String,
    pub broker_versions: Vec<String>,
    pub start_ms: u64,
    pub end_ms: Option<u64>,
    /// The hosts roles ran on (`hosts:` in the scenario): each one's roles, clock offsets at
    /// start and end, the test bed's round trips; absent when everything ran here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hosts: Option<super::hosts::HostsRecord>,
    /// `completed`, `incomplete_reason`, `errors`, `trials_detail` (each trial's seed, full-load
    /// window and method runs), `late_contributions`, `late_msgs`: the keys
    /// `mqdispatch plot` reads back ([`crate::report::status`]).
    #[serde(flatten)]
    pub status: RunStatus,
}

#[derive(Debug, Serialize)]
pub struct Host {
    pub cores: usize,
    pub cpu_model: String,
    pub kernel: String,
}

impl Host {
    pub fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, m)| m.trim().to_owned())
            .unwrap_or_else(|| "unknown".into());
        Self {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|k| k.trim().to_owned())
                .unwrap_or_else(|_| "unknown".into()),
        }
    }
}

/// The commit of the working tree the harness runs from, if it is a git checkout.
pub fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

impl Manifest {
    /// Written at the start (completed: false) and rewritten at the end: a run killed in
    /// between still says what it was and that it did not finish.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        let tmp = dir.join("manifest.json.tmp");
        std::fs::write(&tmp, json)?;
        std::fs::rename(tmp, dir.join("manifest.json"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_stamp_matches_known_dates() {
        assert_eq!(utc_stamp(0), "19700101-000000");
        assert_eq!(utc_stamp(1_732_550_000), "20241125-155320");
        assert_eq!(utc_stamp(951_825_600), "20000229-120000");
    }

    #[test]
    fn runs_never_share_a_folder() {
        let root = tempfile::tempdir().unwrap();
        let a = create(root.path(), "s").unwrap();
        let b = create(root.path(), "s").unwrap();
        assert_ne!(a, b);
        assert!(a.is_dir() && b.is_dir());
        let latest = std::fs::read_link(root.path().join("s/latest")).unwrap();
        assert_eq!(latest, PathBuf::from(b.file_name().unwrap()));
    }
}

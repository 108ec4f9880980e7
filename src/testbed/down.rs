//! Taking a bed down: every process in its namespaces and cgroups, then the links,
//! namespaces, cgroups and its directory, all found by prefix, so a half-made bed goes too.

use std::path::Path;

use tracing::warn;

use super::{Testbed, TestbedError, TestbedState, cgroup, check_prefix, is_ours, net, state};

/// Removes the bed with `prefix` (the prefix in `dir/testbed.json` wins when there is one):
/// every process in its namespaces and cgroups, the namespaces, links, cgroups, and `dir`.
/// Idempotent; cleans whatever exists, reporting the first error after trying everything.
pub fn down(dir: &Path, prefix: &str) -> Result<(), TestbedError> {
    let prefix = TestbedState::read(dir)
        .map(|s| s.prefix)
        .unwrap_or_else(|_| prefix.to_owned());
    check_prefix(&prefix)?;
    let ours = |n: &str| is_ours(&prefix, n);
    let mut first_error = None;
    let mut note = |r: Result<(), TestbedError>| {
        if let Err(e) = r {
            warn!(error = %e, "testbed down");
            first_error.get_or_insert(e);
        }
    };
    let groups = cgroup::existing(ours).unwrap_or_default();
    let namespaces: Vec<String> = net::netns_list()?.into_iter().filter(|n| ours(n)).collect();
    for ns in &namespaces {
        let group = groups.iter().find(|g| *g == ns).cloned();
        note(net::kill_all(Some(ns), || {
            group.as_deref().map(cgroup::pids).unwrap_or_default()
        }));
    }
    // Groups without a namespace (a half-failed up): their processes go too.
    for group in groups.iter().filter(|g| !namespaces.contains(g)) {
        note(net::kill_all(None, || cgroup::pids(group)));
    }
    // Links before namespaces: deleting a veth end removes the pair at once, while a deleted
    // namespace's veths linger until the kernel's asynchronous cleanup.
    for link in net::link_list()?.into_iter().filter(|n| ours(n)) {
        note(net::delete_link(&link));
    }
    for ns in &namespaces {
        note(net::ip(&["netns", "delete", ns]).map(|_| ()));
    }
    for group in &groups {
        note(cgroup::remove(group).map_err(TestbedError::from));
    }
    note(remove_dir(dir));
    first_error.map_or(Ok(()), Err)
}

/// Removes the bed's directory, and only if it is one (or empty).
fn remove_dir(dir: &Path) -> Result<(), TestbedError> {
    match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(TestbedError::io(dir, e)),
        Ok(mut entries) => {
            if entries.next().is_some() && !dir.join(state::STATE_FILE).exists() {
                return Err(TestbedError::NotOurs(dir.to_owned()));
            }
            std::fs::remove_dir_all(dir).map_err(|e| TestbedError::io(dir, e))
        }
    }
}

/// Runs `down` on drop; derefs to the bed.
#[derive(Debug)]
pub struct DownOnDrop(pub(super) Option<Testbed>);

impl std::ops::Deref for DownOnDrop {
    type Target = Testbed;

    fn deref(&self) -> &Testbed {
        self.0
            .as_ref()
            .expect("invariant: taken only by down or drop")
    }
}

impl DownOnDrop {
    pub fn down(mut self) -> Result<(), TestbedError> {
        self.0.take().map_or(Ok(()), Testbed::down)
    }
}

impl Drop for DownOnDrop {
    fn drop(&mut self) {
        if let Some(bed) = self.0.take()
            && let Err(e) = bed.down()
        {
            warn!(error = %e, "testbed down on drop");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_leaves_a_directory_that_is_not_a_bed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("precious"), "x").unwrap();
        assert!(matches!(
            remove_dir(dir.path()),
            Err(TestbedError::NotOurs(_))
        ));
        assert!(dir.path().join("precious").exists());
        std::fs::remove_file(dir.path().join("precious")).unwrap();
        remove_dir(dir.path()).unwrap();
        assert!(!dir.path().exists());
        remove_dir(dir.path()).unwrap();
    }
}

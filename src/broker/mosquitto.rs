//! Mosquitto as a broker kind: a generated config per instance, run as a plain child process,
//! optionally with the project's broker plugin (`mosquitto-plugin/`, see README "Mosquitto
//! plugin") loaded for live moves and per-client publish counts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::BrokerError;
use crate::tls::ThrowawayCa;

/// Where Debian puts the binary (`/usr/sbin` is not on every user's PATH).
const CANDIDATES: &[&str] = &["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"];

/// The mosquitto binary, from PATH or the usual sbin directories.
pub fn find_binary() -> Option<PathBuf> {
    let from_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("mosquitto"))
            .find(|p| p.is_file())
    });
    from_path.or_else(|| CANDIDATES.iter().map(PathBuf::from).find(|p| p.is_file()))
}

pub fn check_available() -> Result<PathBuf, BrokerError> {
    find_binary().ok_or(BrokerError::NotInstalled {
        what: "mosquitto",
        how: "apt-get install -y mosquitto",
    })
}

/// The plugin's file name, as cargo names the cdylib of `mqdispatch-mosquitto-plugin`.
pub const PLUGIN_FILE: &str = "libmqdispatch_mosquitto_plugin.so";
/// Overrides where the plugin is looked for.
pub const PLUGIN_ENV: &str = "MQDISPATCH_MOSQUITTO_PLUGIN";

/// The plugin `.so`: `$MQDISPATCH_MOSQUITTO_PLUGIN`, else next to the running `mqdispatch`
/// binary (`target/release/`, `target/debug/`, whichever holds it, the binary's own first).
pub fn find_plugin() -> Result<PathBuf, BrokerError> {
    if let Some(path) = std::env::var_os(PLUGIN_ENV) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            return Err(BrokerError::PluginNotBuilt {
                looked: format!("{} (from {PLUGIN_ENV})", path.display()),
            });
        }
        return check_plugin_readable(absolute(path));
    }
    let candidates = plugin_candidates(&crate::process::self_exe());
    match candidates.iter().find(|p| p.is_file()) {
        Some(found) => check_plugin_readable(absolute(found.clone())),
        None => Err(BrokerError::PluginNotBuilt {
            looked: candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

fn absolute(path: PathBuf) -> PathBuf {
    std::path::absolute(&path).unwrap_or(path)
}

/// Where a plugin built in the same cargo target directory as `exe` would be: the binary's
/// directory and its parent (test binaries live in `target/<profile>/deps/`), then both profiles
/// of the enclosing `target/` directory.
fn plugin_candidates(exe: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    let mut push = |p: PathBuf| {
        if !out.contains(&p) {
            out.push(p);
        }
    };
    let dir = exe.parent().unwrap_or(Path::new("."));
    push(dir.join(PLUGIN_FILE));
    if let Some(parent) = dir.parent() {
        push(parent.join(PLUGIN_FILE));
    }
    if let Some(target) = dir
        .ancestors()
        .find(|a| a.file_name() == Some("target".as_ref()))
    {
        push(target.join("release").join(PLUGIN_FILE));
        push(target.join("debug").join(PLUGIN_FILE));
    }
    out
}

/// Mosquitto started as root drops to user `mosquitto` *before* it loads plugins: the file must
/// be readable by others and every directory above it searchable.
fn check_plugin_readable(path: PathBuf) -> Result<PathBuf, BrokerError> {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(path);
    }
    let mode = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode());
    let file_ok = mode(&path).is_ok_and(|m| m & 0o004 != 0);
    let dirs_ok = path
        .ancestors()
        .skip(1)
        .filter(|a| !a.as_os_str().is_empty())
        .all(|a| mode(a).is_ok_and(|m| m & 0o001 != 0));
    if file_ok && dirs_ok {
        Ok(path)
    } else {
        Err(BrokerError::PluginUnreadable(path))
    }
}

/// The config for one instance, listening on 127.0.0.1. Mosquitto started as root drops to
/// user `mosquitto` after reading it; with no persistence, no pid file and logs to stderr it
/// writes no files, so no permissions need changing and no `user root` is needed. `tls`: a
/// second, TLS listener on that port with the run's throwaway CA; `plugin`: the plugin `.so`
/// to load (last, so that `plugin_opt_*` lines appended after it apply to it).
pub fn config_text(port: u16, tls: Option<(u16, &ThrowawayCa)>, plugin: Option<&Path>) -> String {
    config_text_on([127, 0, 0, 1].into(), port, tls, plugin)
}

/// [`config_text`] listening on `ip` (a broker on a scenario's host: its address there).
pub fn config_text_on(
    ip: std::net::IpAddr,
    port: u16,
    tls: Option<(u16, &ThrowawayCa)>,
    plugin: Option<&Path>,
) -> String {
    let mut text = format!(
        "# generated by mqdispatch\n\
         listener {port} {ip}\n\
         allow_anonymous true\n\
         persistence false\n\
         log_dest stderr\n\
         log_type error\n\
         log_type warning\n\
         # $SYS counters for the agent (updates arrive every ~2 s even with 1)\n\
         sys_interval 1\n"
    );
    if let Some((tls_port, ca)) = tls {
        text.push_str(&format!(
            "# TLS listener, throwaway CA of this run\n\
             listener {tls_port} {ip}\n\
             cafile {}\n\
             certfile {}\n\
             keyfile {}\n",
            ca.ca_cert.display(),
            ca.server_cert.display(),
            ca.server_key.display()
        ));
    }
    if let Some(plugin) = plugin {
        text.push_str(&format!("plugin {}\n", plugin.display()));
    }
    text
}

/// Writes `<workdir>/<id>-mosquitto.conf` and returns its path.
pub fn write_config(
    workdir: &Path,
    id: &str,
    port: u16,
    tls: Option<(u16, &ThrowawayCa)>,
    plugin: Option<&Path>,
) -> Result<PathBuf, BrokerError> {
    std::fs::create_dir_all(workdir).map_err(|e| BrokerError::io(workdir, e))?;
    let path = workdir.join(format!("{id}-mosquitto.conf"));
    std::fs::write(&path, config_text(port, tls, plugin)).map_err(|e| BrokerError::io(&path, e))?;
    Ok(path)
}

/// `mosquitto version 2.0.11` → `mosquitto 2.0.11`, from `mosquitto -h` (which exits non-zero).
pub async fn version(binary: &Path) -> String {
    let output = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::process::Command::new(binary)
            .arg("-h")
            .kill_on_drop(true)
            .output(),
    )
    .await;
    let text = match output {
        Ok(Ok(o)) => String::from_utf8_lossy(&o.stdout).into_owned(),
        _ => String::new(),
    };
    parse_version(&text).unwrap_or_else(|| "mosquitto (unknown version)".to_owned())
}

pub(crate) fn parse_version(help: &str) -> Option<String> {
    let v = help.lines().next()?.strip_prefix("mosquitto version ")?;
    Some(format!("mosquitto {}", v.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_loopback_anonymous_ephemeral_with_sys() {
        let c = config_text(40123, None, None);
        for line in [
            "listener 40123 127.0.0.1",
            "allow_anonymous true",
            "persistence false",
            "log_dest stderr",
            "sys_interval 1",
        ] {
            assert!(c.lines().any(|l| l == line), "missing `{line}` in\n{c}");
        }
        assert!(!c.contains("plugin"), "{c}");
        let on = config_text_on([198, 18, 0, 11].into(), 1883, None, None);
        assert!(on.lines().any(|l| l == "listener 1883 198.18.0.11"), "{on}");
        let with = config_text(1, None, Some(Path::new("/opt/p/libx.so")));
        assert_eq!(with.lines().last(), Some("plugin /opt/p/libx.so"), "{with}");
    }

    #[test]
    fn plugin_is_looked_for_next_to_the_binary_then_in_both_profiles() {
        let found = plugin_candidates(Path::new("/w/target/debug/deps/it-123"));
        let expect: Vec<PathBuf> = [
            "/w/target/debug/deps",
            "/w/target/debug",
            "/w/target/release",
        ]
        .iter()
        .map(|d| Path::new(d).join(PLUGIN_FILE))
        .collect();
        assert_eq!(found, expect);
        let found = plugin_candidates(Path::new("/usr/bin/mqdispatch"));
        assert_eq!(
            found,
            vec![
                Path::new("/usr/bin").join(PLUGIN_FILE),
                Path::new("/usr").join(PLUGIN_FILE)
            ]
        );
    }

    #[test]
    fn parses_the_help_banner() {
        let help = "mosquitto version 2.0.11\n\nmosquitto is an MQTT v5.0/v3.1.1/v3.1 broker.\n";
        assert_eq!(parse_version(help).as_deref(), Some("mosquitto 2.0.11"));
        assert_eq!(parse_version("garbage"), None);
    }
}

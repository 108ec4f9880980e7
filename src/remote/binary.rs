//! This build's `mqdispatch` on a remote host: kept under `<cache>/<sha256>/` (by default
//! `~/.cache/mqdispatch`, [`DEFAULT_CACHE`]) so a host that already has the same build (same checksum) gets nothing copied, and two builds never
//! overwrite each other. The copy streams over the existing master connection and is checked
//! against the checksum on arrival, then renamed into place (no half-copied binary is ever run).

use std::path::Path;
use std::time::Duration;

use super::ssh::{Connection, SshError, shell_quote};

const CHECK_TIMEOUT: Duration = Duration::from_secs(30);
const COPY_TIMEOUT: Duration = Duration::from_secs(300);

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Where builds are kept on a host, relative to the login's home.
pub const DEFAULT_CACHE: &str = ".cache/mqdispatch";

/// Where a build with checksum `sha` lives on a host, under `cache`.
pub fn remote_path(cache: &str, sha: &str) -> String {
    format!("{cache}/{sha}/mqdispatch")
}

/// Whether the binary was already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placed {
    AlreadyThere,
    Copied,
}

/// Makes sure the host has `local` (this build) under `cache` (e.g. [`DEFAULT_CACHE`]); returns
/// its path on the host and whether it had to be copied.
pub async fn ensure_binary(
    conn: &Connection,
    local: &Path,
    cache: &str,
) -> Result<(String, Placed), SshError> {
    let host = conn.target().name.clone();
    let bytes = tokio::fs::read(local)
        .await
        .map_err(|e| SshError::Io(e, host.clone()))?;
    let sha = sha256_hex(&bytes);
    let path = remote_path(cache, &sha);
    let quoted = shell_quote(&path);
    let present = conn
        .run(
            &format!("test -x {quoted} && sha256sum {quoted} || true"),
            CHECK_TIMEOUT,
        )
        .await?;
    if present.split_whitespace().next() == Some(sha.as_str()) {
        return Ok((path, Placed::AlreadyThere));
    }
    // mktemp: two copies to one host at once never write the same file.
    let script = format!(
        "set -e; mkdir -p -- {dir}; part=$(mktemp {dir}/.partial.XXXXXX); cat > \"$part\"; \
         test \"$(sha256sum < \"$part\" | cut -d' ' -f1)\" = {sha} || {{ rm -f \"$part\"; echo checksum mismatch >&2; exit 1; }}; \
         chmod 755 \"$part\"; mv -f \"$part\" {quoted}",
        dir = shell_quote(path.rsplit_once('/').map_or(".", |(d, _)| d)),
    );
    conn.run_with_input(&script, &bytes, "copy mqdispatch", COPY_TIMEOUT)
        .await?;
    Ok((path, Placed::Copied))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_name_the_build() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            remote_path(DEFAULT_CACHE, "ab12"),
            ".cache/mqdispatch/ab12/mqdispatch"
        );
    }
}

//! Roles on other hosts, over the system's OpenSSH client: one multiplexed connection per host
//! ([`ssh::Connection`]), this build's `mqdispatch` put on a host that lacks it
//! ([`binary::ensure_binary`]), each role started under a [`lifeline`] that stops it when its
//! ssh session ends for any reason ([`role::RemoteRole`]), and a role's files brought back
//! ([`files::fetch_dir`]).
//!
//! Why the system `ssh`: every lab that has hosts has it, configured (keys, jump hosts, known
//! hosts, `~/.ssh/config`); a Rust SSH library would have to re-learn all of that.

pub mod binary;
pub mod files;
pub mod lifeline;
pub mod role;
pub mod ssh;

pub use lifeline::LifelineArgs;
pub use role::RemoteRole;
pub use ssh::{Connection, SshTarget};

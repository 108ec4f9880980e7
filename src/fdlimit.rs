//! The open-file limit (`RLIMIT_NOFILE`): every publisher holds a socket in the loader and one in
//! its broker, so a fleet of thousands needs more than the usual soft limit of 1024. At start-up
//! the soft limit is raised to the hard limit (no privilege needed); children (brokers, agents)
//! inherit it. When even the hard limit is below what the run needs, the error names both.

/// Descriptors a process needs besides its connections (listeners, log and CSV files, /proc reads,
/// the dispatcher's short-lived redirect connections beyond one wave).
pub const BASE_FDS: u64 = 256;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FdLimitError {
    #[error(
        "open-file limit too low: {what} needs about {needed} file descriptors but the hard limit \
         (RLIMIT_NOFILE) is {hard}: raise it (`ulimit -Hn {needed}` as root, LimitNOFILE= in a \
         systemd unit, nofile in /etc/security/limits.conf, `--ulimit nofile={needed}` for docker)"
    )]
    TooLow {
        what: String,
        needed: u64,
        hard: u64,
    },
    #[error("cannot read or set the open-file limit (RLIMIT_NOFILE): {0}")]
    Os(String),
}

/// The limits of this process, `(soft, hard)`.
pub fn current() -> Result<(u64, u64), FdLimitError> {
    // SAFETY: getrlimit only writes the struct we hand it.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(FdLimitError::Os(
            std::io::Error::last_os_error().to_string(),
        ));
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// Raises the soft limit to the hard limit and checks that it covers `needed` descriptors for
/// `what` (e.g. "10000 publishers"). Returns the soft limit now in force.
pub fn raise(needed: u64, what: &str) -> Result<u64, FdLimitError> {
    let (soft, hard) = current()?;
    check(needed, hard, what)?;
    if soft < hard {
        let lim = libc::rlimit {
            rlim_cur: hard,
            rlim_max: hard,
        };
        // SAFETY: setrlimit only reads the struct we hand it.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(FdLimitError::Os(
                std::io::Error::last_os_error().to_string(),
            ));
        }
        tracing::debug!(from = soft, to = hard, "raised the open-file soft limit");
    }
    Ok(hard)
}

/// `Ok` when a hard limit of `hard` covers `needed` (pure: the decision [`raise`] makes).
pub fn check(needed: u64, hard: u64, what: &str) -> Result<(), FdLimitError> {
    if hard < needed {
        return Err(FdLimitError::TooLow {
            what: what.to_owned(),
            needed,
            hard,
        });
    }
    Ok(())
}

/// Descriptors one process needs for `connections` sockets held at once.
pub fn needed_for(connections: u64) -> u64 {
    connections + BASE_FDS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hard_limit_below_the_need_is_an_error_naming_both() {
        assert!(check(needed_for(1000), 20_000, "1000 publishers").is_ok());
        let e = check(needed_for(30_000), 20_000, "30000 publishers").unwrap_err();
        let text = e.to_string();
        assert!(text.contains("30000 publishers"), "{text}");
        assert!(text.contains("30256"), "{text}");
        assert!(
            text.contains("hard limit (RLIMIT_NOFILE) is 20000"),
            "{text}"
        );
    }

    #[test]
    fn raising_leaves_soft_equal_to_hard() {
        let (_, hard) = current().expect("getrlimit");
        assert_eq!(raise(1, "a test").expect("raise"), hard);
        assert_eq!(current().expect("getrlimit"), (hard, hard));
        if hard == u64::MAX {
            return; // unlimited: nothing can exceed it
        }
        assert!(matches!(
            raise(hard + 1, "a test"),
            Err(FdLimitError::TooLow { .. })
        ));
    }
}

//! `HOST:PORT`, the one parser for every address a user or a peer gives us: `--dispatcher`,
//! `--broker`, `--counters`, scenario `addresses`, and the Server Reference a dispatcher sends.
//!
//! Accepted: `127.0.0.1:1883`, `broker-a:1883`, `[::1]:1883`. An IPv6 address needs its
//! brackets (`::1:1883` is ambiguous and rejected). [`HostPort`]'s `Display` writes the same
//! form back, so a parsed address can be sent on as a Server Reference.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

/// A validated `HOST:PORT`. `host` is a name or an IP address, without brackets.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    host: String,
    port: u16,
}

/// Why a text is not `HOST:PORT`; each message names the text and the expected form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    #[error("`{0}` is not HOST:PORT, e.g. 127.0.0.1:1883 or [::1]:1883")]
    NoPort(String),
    #[error("`{0}` has no host before the port, e.g. 127.0.0.1:1883")]
    NoHost(String),
    #[error("`{addr}`: port `{port}` is not a number 0-65535")]
    BadPort { addr: String, port: String },
    #[error("`{0}`: an IPv6 address needs brackets, e.g. [::1]:1883")]
    Unbracketed(String),
    #[error("`{0}`: only an IPv6 address goes in brackets, e.g. [::1]:1883")]
    BadBracket(String),
    #[error("`{0}`: a host name has no spaces")]
    Space(String),
}

impl HostPort {
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        HostPort {
            host: host.into(),
            port,
        }
    }

    /// The host name or IP address, without brackets (what a socket API or rumqttc wants).
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl FromStr for HostPort {
    type Err = AddrError;

    fn from_str(text: &str) -> Result<Self, AddrError> {
        let (host, port) = match text.strip_prefix('[') {
            Some(rest) => {
                let (v6, after) = rest
                    .split_once(']')
                    .ok_or_else(|| AddrError::BadBracket(text.to_owned()))?;
                if v6.parse::<Ipv6Addr>().is_err() {
                    return Err(AddrError::BadBracket(text.to_owned()));
                }
                let port = after
                    .strip_prefix(':')
                    .ok_or_else(|| AddrError::NoPort(text.to_owned()))?;
                (v6, port)
            }
            None => {
                let (host, port) = text
                    .rsplit_once(':')
                    .ok_or_else(|| AddrError::NoPort(text.to_owned()))?;
                if host.contains(':') {
                    return Err(AddrError::Unbracketed(text.to_owned()));
                }
                if host.contains(['[', ']']) {
                    return Err(AddrError::BadBracket(text.to_owned()));
                }
                (host, port)
            }
        };
        if host.is_empty() {
            return Err(AddrError::NoHost(text.to_owned()));
        }
        if host.contains(char::is_whitespace) {
            return Err(AddrError::Space(text.to_owned()));
        }
        let port = port.parse().map_err(|_| AddrError::BadPort {
            addr: text.to_owned(),
            port: port.to_owned(),
        })?;
        Ok(HostPort::new(host, port))
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<HostPort, AddrError> {
        text.parse()
    }

    #[test]
    fn names_v4_and_v6_parse_and_print_back() {
        for (text, host, port) in [
            ("127.0.0.1:1883", "127.0.0.1", 1883),
            ("broker-a:1", "broker-a", 1),
            ("[::1]:1883", "::1", 1883),
            ("[fe80::1:2]:65535", "fe80::1:2", 65535),
            ("localhost:0", "localhost", 0),
        ] {
            let a = parse(text).unwrap();
            assert_eq!((a.host(), a.port()), (host, port), "{text}");
            assert_eq!(a.to_string(), text);
            assert_eq!(parse(&a.to_string()), Ok(a));
        }
    }

    #[test]
    fn errors_say_what_is_wrong() {
        use AddrError::*;
        let port = |addr: &str, port: &str| BadPort {
            addr: addr.into(),
            port: port.into(),
        };
        for (text, expected) in [
            ("nohost", NoPort("nohost".into())),
            ("", NoPort("".into())),
            ("[::1]", NoPort("[::1]".into())),
            (":1883", NoHost(":1883".into())),
            ("h:99999", port("h:99999", "99999")),
            ("h:", port("h:", "")),
            ("h:x1", port("h:x1", "x1")),
            ("::1:1883", Unbracketed("::1:1883".into())),
            ("[::1:1883", BadBracket("[::1:1883".into())),
            ("[broker]:1883", BadBracket("[broker]:1883".into())),
            (" h:1883", Space(" h:1883".into())),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e, expected, "{text:?}");
            let msg = e.to_string();
            assert!(
                msg.starts_with(&format!("`{text}`")),
                "names the input: {msg}"
            );
        }
        assert_eq!(
            parse("h:99999").unwrap_err().to_string(),
            "`h:99999`: port `99999` is not a number 0-65535"
        );
    }
}

//! Broker addresses: `mqtt://host:port` URLs as written in configuration files and on the
//! command line.

use std::fmt;

/// The port when a URL names none.
pub const DEFAULT_PORT: u16 = 1883;

/// Where a broker listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerUrl {
    pub host: String,
    pub port: u16,
}

/// Why a broker URL was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("{0:?} is not a broker URL; write mqtt://HOST[:PORT], e.g. mqtt://192.168.1.10:1883")]
    Scheme(String),
    #[error("{0:?}: TLS (mqtts://) is not supported by this build yet; use mqtt:// on a trusted network")]
    TlsUnsupported(String),
    #[error("{0:?} names no host")]
    NoHost(String),
    #[error("{0:?} has an invalid port (1-65535)")]
    Port(String),
    #[error("{0:?}: paths, users and queries do not belong in a broker URL")]
    Extra(String),
}

impl BrokerUrl {
    /// Parses `mqtt://host[:port]`; IPv6 hosts go in brackets.
    ///
    /// ```
    /// use respawn_common::mqtt::BrokerUrl;
    /// let url = BrokerUrl::parse("mqtt://door-pi.local").unwrap();
    /// assert_eq!((url.host.as_str(), url.port), ("door-pi.local", 1883));
    /// let url = BrokerUrl::parse("mqtt://[::1]:18830").unwrap();
    /// assert_eq!((url.host.as_str(), url.port), ("::1", 18830));
    /// assert!(BrokerUrl::parse("http://x").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<Self, UrlError> {
        let rest = if let Some(rest) = text.strip_prefix("mqtt://") {
            rest
        } else if text.starts_with("mqtts://") {
            return Err(UrlError::TlsUnsupported(text.to_owned()));
        } else {
            return Err(UrlError::Scheme(text.to_owned()));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(UrlError::Extra(text.to_owned()));
        }
        let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| UrlError::NoHost(text.to_owned()))?;
            match after {
                "" => (host, None),
                _ => (
                    host,
                    Some(
                        after
                            .strip_prefix(':')
                            .ok_or_else(|| UrlError::Port(text.to_owned()))?,
                    ),
                ),
            }
        } else {
            match rest.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (rest, None),
            }
        };
        if host.is_empty() {
            return Err(UrlError::NoHost(text.to_owned()));
        }
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| UrlError::Port(text.to_owned()))?,
        };
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "mqtt://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "mqtt://{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_print_back() {
        for (text, host, port) in [
            ("mqtt://broker", "broker", 1883),
            ("mqtt://10.0.0.2:1884/", "10.0.0.2", 1884),
            ("mqtt://[fe80::1]", "fe80::1", 1883),
        ] {
            let url = BrokerUrl::parse(text).unwrap();
            assert_eq!((url.host.as_str(), url.port), (host, port), "{text}");
            assert_eq!(BrokerUrl::parse(&url.to_string()).unwrap(), url);
        }
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        assert!(matches!(
            BrokerUrl::parse("broker:1883"),
            Err(UrlError::Scheme(_))
        ));
        assert!(matches!(
            BrokerUrl::parse("mqtts://b"),
            Err(UrlError::TlsUnsupported(_))
        ));
        assert!(matches!(
            BrokerUrl::parse("mqtt://"),
            Err(UrlError::NoHost(_))
        ));
        assert!(matches!(
            BrokerUrl::parse("mqtt://b:0"),
            Err(UrlError::Port(_))
        ));
        assert!(matches!(
            BrokerUrl::parse("mqtt://b:99999"),
            Err(UrlError::Port(_))
        ));
        assert!(matches!(
            BrokerUrl::parse("mqtt://b:x"),
            Err(UrlError::Port(_))
        ));
        assert!(matches!(
            BrokerUrl::parse("mqtt://u@b"),
            Err(UrlError::Extra(_))
        ));
        assert!(matches!(
            BrokerUrl::parse("mqtt://b/topic"),
            Err(UrlError::Extra(_))
        ));
    }
}

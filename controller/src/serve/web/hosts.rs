//! Which names a request may address the hub by (its `Host` header), against DNS rebinding:
//! a web page elsewhere whose own name is made to resolve to the hub's address would
//! otherwise talk to the hub from its visitors' browsers, as if it were the hub's own page.
//! Rebinding needs a name the attacker controls, which an IP address, a loopback name or
//! this machine's own name never is.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, Uri};

/// The names the hub answers to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostNames {
    /// Without users, only loopback names: whoever reaches the hub acts as `local`.
    loopback_only: bool,
    /// `hosts` in serve.toml, lower-cased; `*` answers to any name.
    configured: Vec<String>,
    /// This machine's name, as `NAME` and `NAME.local` (mDNS, as a Pi is often reached).
    machine: Option<String>,
}

/// Why a request's `Host` was refused, for its answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The hub has no users and answers to loopback names only.
    NotLoopback,
    /// A name that is not the hub's: `hosts` in serve.toml can add it.
    UnknownName(String),
    /// More than one `Host` header, which no browser sends.
    TwoNames,
}

impl Refusal {
    pub fn message(&self) -> String {
        match self {
            Self::NotLoopback => {
                "without users the hub answers only to 127.0.0.1, [::1] or localhost".to_owned()
            }
            Self::TwoNames => "a request names one host, not several".to_owned(),
            Self::UnknownName(name) => format!(
                "the hub does not answer to the name {name:?}: add it to `hosts` in serve.toml"
            ),
        }
    }
}

impl HostNames {
    /// The names of a hub with (or without) users, `hosts` from its file, on a machine named
    /// `machine`.
    pub fn new(has_users: bool, hosts: &[String], machine: Option<&str>) -> Self {
        Self {
            loopback_only: !has_users,
            configured: hosts.iter().map(|h| normal(h)).collect(),
            machine: machine.map(|m| normal(m.trim())).filter(|m| !m.is_empty()),
        }
    }

    /// The names of a hub on this machine (named by the kernel, where it says).
    pub fn of_this_machine(has_users: bool, hosts: &[String]) -> Self {
        let machine = std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
        Self::new(has_users, hosts, machine.as_deref())
    }

    /// Whether a request is answered, by the name its target gives (`GET http://NAME/…`),
    /// else its `Host` header.
    pub fn check_request(&self, uri: &Uri, headers: &HeaderMap) -> Result<(), Refusal> {
        if let Some(authority) = uri.authority() {
            return self.check(Some(authority.as_str()));
        }
        let mut hosts = headers.get_all(header::HOST).iter();
        let host = hosts.next().map(|h| h.to_str().unwrap_or_default());
        match hosts.next() {
            Some(_) => Err(Refusal::TwoNames),
            None => self.check(host),
        }
    }

    /// Whether a request whose `Host` header is `host` (`None`: it has none) is answered.
    pub fn check(&self, host: Option<&str>) -> Result<(), Refusal> {
        // A browser always sends one: a request without it comes from no web page.
        let Some(host) = host else {
            return match self.loopback_only {
                true => Err(Refusal::NotLoopback),
                false => Ok(()),
            };
        };
        let name = normal(name_of(host));
        let ip = name.parse::<std::net::IpAddr>().ok();
        if name == "localhost" || ip.is_some_and(|ip| ip.is_loopback()) {
            return Ok(());
        }
        if self.loopback_only {
            return Err(Refusal::NotLoopback);
        }
        let machine = |m: &String| name == *m || name.strip_suffix(".local") == Some(m);
        let known = ip.is_some()
            || self.machine.as_ref().is_some_and(machine)
            || self.configured.iter().any(|h| h == "*" || *h == name);
        match known {
            true => Ok(()),
            false => Err(Refusal::UnknownName(name)),
        }
    }

    /// Whether a request whose `Origin` header is `origin` and whose `Host` is `host` comes
    /// from the hub's own page: the page's origin names the host it asked (a reverse proxy
    /// may pass another `Host`: then the origin's name must be listed in `hosts`). A browser
    /// sends `Sec-Fetch-Site` to HTTPS and loopback pages only; `Origin` it sends with every
    /// form it posts, `null` from a page of no site.
    pub fn is_own_origin(&self, origin: &str, host: Option<&str>) -> bool {
        let Some((_, authority)) = origin.split_once("://") else {
            return false;
        };
        let authority = authority.trim_end_matches('/');
        let asked = host.is_some_and(|host| normal(host) == normal(authority));
        let name = normal(name_of(authority));
        asked || self.configured.contains(&name)
    }
}

/// A name as compared: lower-case, without the root's dot (`hub.lan.` is `hub.lan`).
fn normal(name: &str) -> String {
    let name = name.strip_suffix('.').unwrap_or(name);
    name.to_ascii_lowercase()
}

/// Which refused names the hub's log names, so that a name the hub should answer to is found
/// in it, while a flood of made-up names cannot flood the log: each name once, and at most
/// [`NAMES_A_MINUTE`] a minute; the others are counted in the next line.
#[derive(Debug, Default)]
pub struct RefusalLog {
    said: BTreeSet<String>,
    minute: Option<Instant>,
    said_this_minute: usize,
    unsaid: u64,
}

const NAMES_A_MINUTE: usize = 5;
/// Names kept to say each once; beyond, the set starts afresh.
const NAMES_KEPT: usize = 1024;

impl RefusalLog {
    /// The line to log for a request refused by `refusal` at `now`, if any.
    pub fn line(&mut self, refusal: &Refusal, now: Instant) -> Option<String> {
        let Refusal::UnknownName(name) = refusal else {
            return None;
        };
        if self.said.contains(name) {
            return None;
        }
        if self
            .minute
            .is_none_or(|start| now >= start + Duration::from_secs(60))
        {
            (self.minute, self.said_this_minute) = (Some(now), 0);
        }
        if self.said_this_minute == NAMES_A_MINUTE {
            self.unsaid += 1;
            return None;
        }
        self.said_this_minute += 1;
        if self.said.len() == NAMES_KEPT {
            self.said.clear();
        }
        self.said.insert(name.clone());
        let others = match std::mem::take(&mut self.unsaid) {
            0 => String::new(),
            n => format!(" ({n} more names were refused and not named)"),
        };
        let name = respawn_common::text::cut(name, 253);
        Some(format!("refused a request for the name {name:?}; if it is the hub's, add it to `hosts` in serve.toml{others}"))
    }
}

/// The name in a `Host` header, without its port or an IPv6 address's brackets. A bracketed
/// address followed by anything but a port is no address: the whole header is the name, which
/// no list holds (`[::1]evil.example` is not loopback).
fn name_of(host: &str) -> &str {
    // RFC 3986's port: digits, perhaps none.
    let port = |rest: &str| rest.bytes().all(|b| b.is_ascii_digit());
    match host.strip_prefix('[').and_then(|b| b.split_once(']')) {
        Some((address, "")) => address,
        Some((address, rest)) if rest.strip_prefix(':').is_some_and(port) => address,
        Some(_) => host,
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_users_only_loopback_names_are_answered() {
        let names = HostNames::new(false, &["*".to_owned()], Some("door-pi"));
        for host in [
            "127.0.0.1",
            "localhost:8080",
            "LOCALHOST",
            "[::1]:8080",
            "127.0.0.2",
        ] {
            assert_eq!(names.check(Some(host)), Ok(()), "{host}");
        }
        for host in [
            "evil.example",
            "localhost.evil.example",
            "192.168.1.5:8080",
            "door-pi",
            "[::2]:8080",
            "[fe80::1]:8080",
            "[::1]evil.example",
            "[::1]:80x",
            "",
        ] {
            assert_eq!(names.check(Some(host)), Err(Refusal::NotLoopback), "{host}");
        }
        assert_eq!(names.check(None), Err(Refusal::NotLoopback));
    }

    #[test]
    fn with_users_addresses_the_machine_and_the_configured_names_are_answered() {
        let names = HostNames::new(true, &["Hub.Example.lan".to_owned()], Some("Door-Pi\n"));
        for host in [
            "127.0.0.1:8080",
            "192.168.1.5:8080",
            "[fe80::1]:8080",
            "door-pi:8080",
            "DOOR-PI.local",
            "door-pi.",
            "hub.example.lan:443",
            "HUB.EXAMPLE.LAN.",
        ] {
            assert_eq!(names.check(Some(host)), Ok(()), "{host}");
        }
        for (host, name) in [
            ("evil.example:8080", "evil.example"),
            ("door-pi.evil.example", "door-pi.evil.example"),
            ("example.lan", "example.lan"),
            ("", ""),
        ] {
            assert_eq!(
                names.check(Some(host)),
                Err(Refusal::UnknownName(name.to_owned())),
                "{host}"
            );
        }
        assert_eq!(names.check(None), Ok(()), "no Host: no browser");
    }

    #[test]
    fn the_root_dot_and_case_do_not_make_another_name() {
        let names = HostNames::new(true, &["Hub.Lan.".to_owned()], None);
        for host in [
            "localhost.",
            "LOCALHOST.:8080",
            "hub.lan",
            "hub.lan.:8080",
            "HUB.LAN",
        ] {
            assert_eq!(names.check(Some(host)), Ok(()), "{host}");
        }
        assert_eq!(
            names.check(Some("hub.lan..")),
            Err(Refusal::UnknownName("hub.lan.".to_owned()))
        );
    }

    #[test]
    fn the_name_of_an_absolute_target_wins_and_two_host_headers_are_refused() {
        let names = HostNames::new(true, &[], Some("door-pi"));
        let headers = |hosts: &[&str]| {
            let mut headers = HeaderMap::new();
            for host in hosts {
                headers.append(header::HOST, host.parse().unwrap());
            }
            headers
        };
        let origin: Uri = "/login".parse().unwrap();
        let absolute: Uri = "http://evil.example/login".parse().unwrap();
        assert_eq!(names.check_request(&origin, &headers(&["door-pi"])), Ok(()));
        assert_eq!(
            names.check_request(&absolute, &headers(&["door-pi"])),
            Err(Refusal::UnknownName("evil.example".to_owned()))
        );
        let to_door_pi: Uri = "http://door-pi:8080/login".parse().unwrap();
        assert_eq!(
            names.check_request(&to_door_pi, &headers(&["evil.example"])),
            Ok(())
        );
        assert_eq!(
            names.check_request(&origin, &headers(&["door-pi", "evil.example"])),
            Err(Refusal::TwoNames)
        );
        assert_eq!(names.check_request(&origin, &headers(&[])), Ok(()));
    }

    #[test]
    fn the_log_names_each_refused_name_once_and_five_a_minute() {
        let mut log = RefusalLog::default();
        let start = Instant::now();
        let refused = |name: &str| Refusal::UnknownName(name.to_owned());
        let line = log.line(&refused("hub.lan"), start).unwrap();
        assert!(
            line.starts_with("refused a request for the name \"hub.lan\";"),
            "{line}"
        );
        assert_eq!(log.line(&refused("hub.lan"), start), None, "once");
        assert_eq!(log.line(&Refusal::NotLoopback, start), None);
        let names: Vec<String> = (0..10).map(|i| format!("made-up-{i}")).collect();
        let said = names
            .iter()
            .filter_map(|n| log.line(&refused(n), start))
            .count();
        assert_eq!(said, 4, "five names in the first minute");
        let later = start + Duration::from_secs(60);
        let line = log.line(&refused("prometheus.lan"), later).unwrap();
        assert!(
            line.ends_with("(6 more names were refused and not named)"),
            "{line}"
        );
        let quoted = log.line(&refused("x\" forged \"y"), later).unwrap();
        assert!(quoted.contains(r#""x\" forged \"y""#), "{quoted}");
    }

    #[test]
    fn a_login_comes_from_a_page_of_the_name_it_asked_or_of_a_listed_name() {
        let names = HostNames::new(true, &["hub.example.lan".to_owned()], Some("door-pi"));
        let own = |origin: &str, host: &str| names.is_own_origin(origin, Some(host));
        assert!(own("http://door-pi:8080", "door-pi:8080"));
        assert!(own("http://Door-Pi:8080", "door-pi:8080"));
        assert!(
            own("https://hub.example.lan", "127.0.0.1:8080"),
            "behind a proxy"
        );
        assert!(own("http://192.168.1.5:8080", "192.168.1.5:8080"));
        assert!(!own("http://evil.test:24490", "door-pi:8080"));
        assert!(!own("http://203.0.113.5", "door-pi:8080"));
        assert!(!own("http://door-pi:9999", "door-pi:8080"), "another port");
        assert!(!own("null", "door-pi:8080"));
        assert!(!names.is_own_origin("http://door-pi:8080", None));
    }

    #[test]
    fn a_star_answers_to_any_name_and_no_machine_name_adds_none() {
        let any = HostNames::new(true, &["*".to_owned()], None);
        assert_eq!(any.check(Some("whatever.example")), Ok(()));
        let unnamed = HostNames::new(true, &[], Some("  "));
        assert_eq!(
            unnamed.check(Some("local")),
            Err(Refusal::UnknownName("local".to_owned()))
        );
        assert_eq!(
            unnamed.check(Some(".local")),
            Err(Refusal::UnknownName(".local".to_owned()))
        );
    }
}

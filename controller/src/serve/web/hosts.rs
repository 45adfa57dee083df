//! Which names a request may address the hub by (its `Host` header), against DNS rebinding:
//! a web page elsewhere whose own name is made to resolve to the hub's address would
//! otherwise talk to the hub from its visitors' browsers, as if it were the hub's own page.
//! Rebinding needs a name the attacker controls, which an IP address, a loopback name or
//! this machine's own name never is.

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
}

impl Refusal {
    pub fn message(&self) -> String {
        match self {
            Self::NotLoopback => {
                "without users the hub answers only to 127.0.0.1, [::1] or localhost".to_owned()
            }
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
            configured: hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
            machine: machine
                .map(|m| m.trim().trim_end_matches('.').to_ascii_lowercase())
                .filter(|m| !m.is_empty()),
        }
    }

    /// The names of a hub on this machine (named by the kernel, where it says).
    pub fn of_this_machine(has_users: bool, hosts: &[String]) -> Self {
        let machine = std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
        Self::new(has_users, hosts, machine.as_deref())
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
        let name = name_of(host);
        let ip = name.parse::<std::net::IpAddr>().ok();
        if name.eq_ignore_ascii_case("localhost") || ip.is_some_and(|ip| ip.is_loopback()) {
            return Ok(());
        }
        if self.loopback_only {
            return Err(Refusal::NotLoopback);
        }
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let machine = |m: &String| name == *m || name.strip_suffix(".local") == Some(m);
        let known = ip.is_some()
            || self.machine.as_ref().is_some_and(machine)
            || self.configured.iter().any(|h| h == "*" || *h == name);
        match known {
            true => Ok(()),
            false => Err(Refusal::UnknownName(name)),
        }
    }
}

/// The name in a `Host` header, without its port or an IPv6 address's brackets.
fn name_of(host: &str) -> &str {
    match host.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
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

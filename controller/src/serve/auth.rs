//! Who is on the other end of a page: argon2 passwords, sessions behind an HttpOnly,
//! SameSite=Strict cookie, a CSRF token per session for every change, and a limit on failed
//! logins. Pure but for the hashing and the random tokens.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use ring::rand::{SecureRandom, SystemRandom};

/// How long a session lasts without use.
const IDLE: Duration = Duration::from_secs(12 * 3600);
/// Failed logins from one address within [`FAILURE_WINDOW`] before it must wait.
const MAX_FAILURES: u32 = 5;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// The most sessions kept: a flood of logins must not grow memory without end.
const MAX_SESSIONS: usize = 10_000;
/// The most addresses whose failed logins are remembered.
const MAX_FAILING_ADDRESSES: usize = 10_000;

/// The name of the session cookie of the hub that listens on `port`: a browser sends a
/// host's cookies to every port of it, and two hubs on one machine (or a hub beside any other
/// service of the machine) must not take each other's cookie.
pub fn cookie_name(port: u16) -> String {
    format!("respawn_session_{port}")
}

/// The argon2id hash of `password`, in PHC form.
pub fn hash_password(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| "no randomness for a salt".to_owned())?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// The most an accepted hash may ask of argon2: every login attempt, by anyone who reaches
/// `/login`, runs the costs of the hash it is checked against, so a hash made elsewhere with
/// huge ones would let them exhaust the hub's memory or its one login check at a time.
const MAX_MEMORY_KIB: u32 = 256 * 1024;
const MAX_PASSES: u32 = 10;
const MAX_LANES: u32 = 16;

/// Why `text`, the password of user `name`, is not a hash this hub checks at a bounded cost:
/// the end of a sentence that starts with the user.
pub fn password_hash_problem(text: &str, name: &str) -> Option<String> {
    let hash = PasswordHash::new(text)
        .ok()
        .filter(|h| h.algorithm.as_str().starts_with("argon2"));
    let Some(hash) = hash else {
        return Some(format!("password must be the hash `respawnctl serve passwd {name}` prints, not the password itself"));
    };
    let (m, t, p) = match argon2::Params::try_from(&hash) {
        Ok(params) => (params.m_cost(), params.t_cost(), params.p_cost()),
        Err(e) => {
            return Some(format!(
                "password: the hash's argon2 parameters are not valid ({e})"
            ))
        }
    };
    (m > MAX_MEMORY_KIB || t > MAX_PASSES || p > MAX_LANES).then(|| {
        format!("password: the hash asks argon2 for m={m}, t={t}, p={p}, more than the hub spends on a login (at most m={MAX_MEMORY_KIB}, that is 256 MiB, t={MAX_PASSES}, p={MAX_LANES}); make one with `respawnctl serve passwd {name}`")
    })
}

fn verify(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// The user of `users` that `name` and `password` name, if any. Slow on purpose (argon2),
/// and as slow for an unknown name: the answer's time says nothing about which names exist.
/// Call it without holding any lock.
pub fn check_password<'u>(
    users: &'u [super::config::User],
    name: &str,
    password: &str,
) -> Option<&'u super::config::User> {
    let user = users.iter().find(|u| u.name == name);
    let hash = user.map_or(DUMMY_HASH, |u| u.password.as_str());
    let ok = verify(hash, password);
    user.filter(|_| ok)
}

/// The key failed logins (and connections) are counted under: an IPv4 address, or an IPv6
/// /64 (what one household or one attacker gets).
pub fn address_key(from: IpAddr) -> IpAddr {
    match from.to_canonical() {
        IpAddr::V6(v6) => {
            let mut segments = v6.segments();
            segments[4..].fill(0);
            IpAddr::V6(segments.into())
        }
        v4 => v4,
    }
}

/// A random token, hex.
pub fn token() -> String {
    let mut bytes = [0u8; 32];
    // Without randomness no session can be safe: an empty token matches nothing.
    if SystemRandom::new().fill(&mut bytes).is_err() {
        return String::new();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A logged-in user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub user: String,
    pub may_act: bool,
    /// Must come back with every change, in the `X-CSRF-Token` header.
    pub csrf: String,
    last_used: Instant,
}

/// The sessions, and the failed logins by address.
#[derive(Debug, Default)]
pub struct Sessions {
    sessions: HashMap<String, Session>,
    /// By [`address_key`]: since when, how many.
    failures: HashMap<IpAddr, (Instant, u32)>,
}

/// What a login came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Login {
    /// The session's token, for the cookie.
    Welcome(String),
    Refused,
    /// Too many failures from this address: try again later.
    Wait,
}

impl Sessions {
    /// Whether `from` may try to log in now (too many failures make it wait).
    pub fn may_try(&mut self, from: IpAddr, now: Instant) -> bool {
        let key = address_key(from);
        match self.failures.get(&key) {
            Some((since, count)) if now.saturating_duration_since(*since) < FAILURE_WINDOW => {
                *count < MAX_FAILURES
            }
            _ => true,
        }
    }

    /// What a checked login comes to: a session for `user`, or one more failure of `from`.
    pub fn settle(
        &mut self,
        user: Option<&super::config::User>,
        from: IpAddr,
        now: Instant,
    ) -> Login {
        let key = address_key(from);
        match user {
            // Failures stay counted until their window ends: a guesser who also has an
            // account of their own must not wipe them by logging in as themselves.
            Some(user) => Login::Welcome(self.open(&user.name, user.may_act, now)),
            None => {
                self.failures
                    .retain(|_, (since, _)| now.saturating_duration_since(*since) < FAILURE_WINDOW);
                if self.failures.len() >= MAX_FAILING_ADDRESSES && !self.failures.contains_key(&key)
                {
                    // Under a flood from many addresses: the newest are not remembered, and
                    // the hash checks themselves are what is rationed (one at a time).
                    return Login::Refused;
                }
                let entry = self.failures.entry(key).or_insert((now, 0));
                entry.1 += 1;
                tracing::warn!(%from, "failed login");
                Login::Refused
            }
        }
    }

    /// A new session for `user`; its token.
    pub fn open(&mut self, user: &str, may_act: bool, now: Instant) -> String {
        self.sessions
            .retain(|_, s| now.saturating_duration_since(s.last_used) < IDLE);
        if self.sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = self
                .sessions
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(t, _)| t.clone())
            {
                self.sessions.remove(&oldest);
            }
        }
        let token = token();
        self.sessions.insert(
            token.clone(),
            Session {
                user: user.to_owned(),
                may_act,
                csrf: self::token(),
                last_used: now,
            },
        );
        token
    }

    /// The session of `token`, if it is one and has not expired; this use renews it (an open
    /// page's live updates too: a wall display stays logged in).
    pub fn get(&mut self, token: &str, now: Instant) -> Option<Session> {
        let session = self.sessions.get_mut(token)?;
        if now.saturating_duration_since(session.last_used) >= IDLE || token.is_empty() {
            self.sessions.remove(token);
            return None;
        }
        session.last_used = now;
        Some(session.clone())
    }

    pub fn close(&mut self, token: &str) {
        self.sessions.remove(token);
    }
}

/// Checked when a name is unknown, so that it takes as long as a known one.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$3ohmI0kJq0mlZgUhB1TfkAm1Pkz8eXrxlZOcWfh3D4k";

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'h>(header: &'h str, name: &str) -> Option<&'h str> {
    header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

#[cfg(test)]
mod tests {
    use super::super::config::User;
    use super::*;

    fn users() -> Vec<User> {
        vec![User {
            name: "alice".into(),
            password: hash_password("correct horse").unwrap(),
            may_act: true,
        }]
    }

    /// A whole login, as the web side makes it.
    fn login(
        sessions: &mut Sessions,
        name: &str,
        password: &str,
        from: IpAddr,
        now: Instant,
    ) -> Login {
        if !sessions.may_try(from, now) {
            return Login::Wait;
        }
        let users = users();
        let user = check_password(&users, name, password);
        sessions.settle(user, from, now)
    }

    #[test]
    fn the_right_password_opens_a_session_and_the_wrong_one_is_refused() {
        let (mut sessions, now) = (Sessions::default(), Instant::now());
        let from = IpAddr::from([10, 0, 0, 1]);
        assert_eq!(
            login(&mut sessions, "alice", "wrong", from, now),
            Login::Refused
        );
        assert_eq!(
            login(&mut sessions, "mallory", "correct horse", from, now),
            Login::Refused
        );
        let Login::Welcome(token) = login(&mut sessions, "alice", "correct horse", from, now)
        else {
            panic!("alice logs in")
        };
        let session = sessions.get(&token, now).expect("a session");
        assert_eq!((session.user.as_str(), session.may_act), ("alice", true));
        assert_ne!(session.csrf, token);
        assert_eq!(sessions.get("forged", now), None);
        assert_eq!(sessions.get(&token, now + IDLE), None, "expired");
        assert_eq!(sessions.get("", now), None);
    }

    #[test]
    fn too_many_failures_make_an_address_wait_a_minute() {
        let (mut sessions, now) = (Sessions::default(), Instant::now());
        let from = IpAddr::from([10, 0, 0, 2]);
        for _ in 0..MAX_FAILURES {
            assert_eq!(
                login(&mut sessions, "alice", "guess", from, now),
                Login::Refused
            );
        }
        let right = |s: &mut Sessions, at| login(s, "alice", "correct horse", from, at);
        assert_eq!(
            right(&mut sessions, now),
            Login::Wait,
            "even the right one waits"
        );
        let other = IpAddr::from([10, 0, 0, 3]);
        // A right password between wrong ones does not start the count afresh.
        for _ in 1..MAX_FAILURES {
            login(&mut sessions, "alice", "guess", other, now);
        }
        assert!(matches!(
            login(&mut sessions, "alice", "correct horse", other, now),
            Login::Welcome(_)
        ));
        assert_eq!(
            login(&mut sessions, "alice", "guess", other, now),
            Login::Refused
        );
        assert_eq!(
            login(&mut sessions, "alice", "correct horse", other, now),
            Login::Wait
        );
        let other = IpAddr::from([10, 0, 0, 4]);
        assert!(matches!(
            login(&mut sessions, "alice", "correct horse", other, now),
            Login::Welcome(_)
        ));
        assert!(matches!(
            right(&mut sessions, now + FAILURE_WINDOW),
            Login::Welcome(_)
        ));
        // An IPv6 /64 counts as one address.
        let six = |last: u16| IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, last]);
        for last in 0..MAX_FAILURES as u16 {
            assert_eq!(
                login(&mut sessions, "alice", "guess", six(last), now),
                Login::Refused
            );
        }
        assert_eq!(
            login(&mut sessions, "alice", "correct horse", six(999), now),
            Login::Wait
        );
    }

    #[test]
    fn cookies_are_found_by_name() {
        let header = "a=1; respawn_session_8080=abc; respawn_session_8081=def; b=2";
        assert_eq!(cookie(header, &cookie_name(8080)), Some("abc"));
        assert_eq!(cookie(header, &cookie_name(8081)), Some("def"));
        assert_eq!(cookie(header, "c"), None);
    }

    #[test]
    fn the_dummy_hash_is_a_hash() {
        assert_eq!(password_hash_problem(DUMMY_HASH, "a"), None);
        assert!(password_hash_problem("hunter2", "a")
            .is_some_and(|p| p.contains("not the password itself")));
        let hash = hash_password("pw").unwrap();
        assert_eq!(password_hash_problem(&hash, "a"), None);
        for costly in [
            "m=4294967295,t=1,p=1",
            "m=19456,t=1000000,p=1",
            "m=19456,t=2,p=255",
        ] {
            let hash = DUMMY_HASH.replace("m=19456,t=2,p=1", costly);
            let problem = password_hash_problem(&hash, "a");
            assert!(
                problem
                    .as_ref()
                    .is_some_and(|p| p.contains("more than the hub spends")),
                "{costly}: {problem:?}"
            );
        }
    }
}

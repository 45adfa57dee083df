//! Agent ids and process names: both appear in MQTT topics and file names, so both are
//! restricted to characters that are safe in either.

use std::fmt;

/// The longest agent id or process name accepted.
pub const MAX_ID_LEN: usize = 64;

/// What an agent id may be, as messages say it.
pub const AGENT_ID_PATTERN: &str = "[a-z0-9][a-z0-9_-]{0,63}";

/// What a process name may be, as messages say it.
pub const PROCESS_NAME_PATTERN: &str = "[A-Za-z0-9][A-Za-z0-9_.-]{0,63}";

/// Why an agent id or process name was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("must not be empty")]
    Empty,
    #[error("is {0} characters long; the limit is {MAX_ID_LEN}")]
    TooLong(usize),
    #[error("must start with {0}")]
    BadStart(&'static str),
    #[error("contains {0:?}; allowed are {1}")]
    BadChar(char, &'static str),
}

/// Checks an agent id against `[a-z0-9][a-z0-9_-]{0,63}`.
///
/// ```
/// use respawn_common::ids::validate_agent_id;
/// assert!(validate_agent_id("door-pi").is_ok());
/// assert!(validate_agent_id("Door-Pi").is_err());
/// assert!(validate_agent_id("-pi").is_err());
/// ```
pub fn validate_agent_id(id: &str) -> Result<(), IdError> {
    validate(
        id,
        |c| c.is_ascii_lowercase() || c.is_ascii_digit(),
        "a lower-case letter or a digit",
        |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-',
        "a-z, 0-9, '_' and '-'",
    )
}

/// Checks a process name against `[A-Za-z0-9][A-Za-z0-9_.-]{0,63}`.
///
/// ```
/// use respawn_common::ids::validate_process_name;
/// assert!(validate_process_name("doorbot").is_ok());
/// assert!(validate_process_name("web.v2").is_ok());
/// assert!(validate_process_name("a/b").is_err());
/// assert!(validate_process_name(".hidden").is_err());
/// ```
pub fn validate_process_name(name: &str) -> Result<(), IdError> {
    validate(
        name,
        |c| c.is_ascii_alphanumeric(),
        "a letter or a digit",
        |c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.',
        "letters, digits, '_', '-' and '.'",
    )
}

fn validate(
    s: &str,
    is_start: impl Fn(char) -> bool,
    start_desc: &'static str,
    is_allowed: impl Fn(char) -> bool,
    allowed_desc: &'static str,
) -> Result<(), IdError> {
    let mut chars = s.chars();
    let first = chars.next().ok_or(IdError::Empty)?;
    let len = s.chars().count();
    if len > MAX_ID_LEN {
        return Err(IdError::TooLong(len));
    }
    if !is_start(first) {
        return Err(IdError::BadStart(start_desc));
    }
    match chars.find(|&c| !is_allowed(c)) {
        Some(bad) => Err(IdError::BadChar(bad, allowed_desc)),
        None => Ok(()),
    }
}

/// Turns a hostname into a valid agent id: lower-cased, the domain dropped, every other
/// character replaced by `-`, leading separators removed and the result cut to 64 characters.
/// Falls back to `"respawn"` when nothing usable is left.
///
/// ```
/// use respawn_common::ids::agent_id_from_hostname;
/// assert_eq!(agent_id_from_hostname("Door-Pi.local"), "door-pi");
/// assert_eq!(agent_id_from_hostname("my pi_3"), "my-pi_3");
/// assert_eq!(agent_id_from_hostname("---"), "respawn");
/// ```
pub fn agent_id_from_hostname(hostname: &str) -> String {
    let host = hostname.split('.').next().unwrap_or_default();
    let mapped: String = host
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let trimmed: String = mapped
        .trim_start_matches(['-', '_'])
        .chars()
        .take(MAX_ID_LEN)
        .collect();
    if trimmed.is_empty() {
        "respawn".to_owned()
    } else {
        trimmed
    }
}

/// A process name that has passed [`validate_process_name`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProcessName(String);

impl ProcessName {
    pub fn new(name: &str) -> Result<Self, IdError> {
        validate_process_name(name)?;
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProcessName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::borrow::Borrow<str> for ProcessName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_ids_follow_the_topic_rules() {
        assert_eq!(validate_agent_id(""), Err(IdError::Empty));
        assert_eq!(validate_agent_id(&"a".repeat(64)), Ok(()));
        assert_eq!(
            validate_agent_id(&"a".repeat(65)),
            Err(IdError::TooLong(65))
        );
        assert!(matches!(validate_agent_id("_x"), Err(IdError::BadStart(_))));
        assert!(matches!(
            validate_agent_id("door/pi"),
            Err(IdError::BadChar('/', _))
        ));
        assert!(matches!(
            validate_agent_id("door+"),
            Err(IdError::BadChar('+', _))
        ));
        assert_eq!(validate_agent_id("9pi_a-b"), Ok(()));
    }

    #[test]
    fn process_names_exclude_topic_wildcards_and_paths() {
        for bad in ["", "a b", "a/b", "a#", "a+", "..", "-x"] {
            assert!(validate_process_name(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["A", "door-bot", "web_2", "api.v1"] {
            assert!(validate_process_name(good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn hostnames_always_sanitise_to_valid_ids() {
        for host in [
            "",
            "ÄÖÜ",
            "raspberrypi",
            "UPPER.example.org",
            &"x".repeat(200),
            "_a",
        ] {
            let id = agent_id_from_hostname(host);
            assert_eq!(validate_agent_id(&id), Ok(()), "{host:?} -> {id:?}");
        }
        assert_eq!(agent_id_from_hostname("_a"), "a");
    }
}

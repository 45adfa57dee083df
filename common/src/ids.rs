//! Agent ids and process names: both appear in MQTT topics and file names, so both are
//! restricted to characters that are safe in either.

use std::fmt;

use crate::text::listed;

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
    /// Every character out of place at once, so that one correction makes it valid.
    #[error("{}", invalid_text(.start, .unallowed, .allowed))]
    Invalid {
        /// What the first character must be, when it is allowed only further on.
        start: Option<&'static str>,
        /// The characters allowed nowhere, each once, in the order they come.
        unallowed: Vec<char>,
        allowed: &'static str,
    },
}

fn invalid_text(start: &Option<&str>, unallowed: &[char], allowed: &str) -> String {
    let start = start.map(|start| format!("must start with {start}"));
    let quoted: Vec<String> = unallowed.iter().map(|c| format!("{c:?}")).collect();
    let chars = (!quoted.is_empty())
        .then(|| format!("contains {}; allowed are {allowed}", listed(&quoted, "and")));
    match (start, chars) {
        (Some(start), Some(chars)) => format!("{start}, and {chars}"),
        (start, chars) => start.or(chars).unwrap_or_default(),
    }
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
    let first = s.chars().next().ok_or(IdError::Empty)?;
    let len = s.chars().count();
    if len > MAX_ID_LEN {
        return Err(IdError::TooLong(len));
    }
    let start = (is_allowed(first) && !is_start(first)).then_some(start_desc);
    let mut unallowed: Vec<char> = Vec::new();
    for c in s.chars().filter(|&c| !is_allowed(c)) {
        if !unallowed.contains(&c) {
            unallowed.push(c);
        }
    }
    match start.is_none() && unallowed.is_empty() {
        true => Ok(()),
        false => Err(IdError::Invalid {
            start,
            unallowed,
            allowed: allowed_desc,
        }),
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
        let told = |id: &str| validate_agent_id(id).unwrap_err().to_string();
        assert_eq!(told("_x"), "must start with a lower-case letter or a digit");
        assert_eq!(
            told("door/pi"),
            "contains '/'; allowed are a-z, 0-9, '_' and '-'"
        );
        // Every mistake at once, each character once: one correction makes it valid.
        assert_eq!(
            told("Bad Pi Box"),
            "contains 'B', ' ' and 'P'; allowed are a-z, 0-9, '_' and '-'"
        );
        assert_eq!(
            told("-Pi"),
            "must start with a lower-case letter or a digit, and contains 'P'; allowed are a-z, 0-9, '_' and '-'"
        );
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

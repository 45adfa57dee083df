//! Topic names and filters as MQTT 5 defines them, and which filters match which names.

/// A subscription's filter: its pattern, and the group of a shared subscription
/// (`$share/{group}/{pattern}`), whose messages go to one member of the group each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    pub group: Option<String>,
    pub pattern: String,
    /// No wildcard: it matches one name, compared whole rather than level by level.
    exact: bool,
}

/// The most levels a filter may have. Each publish is matched against every subscription:
/// thousands of filters of hundreds of levels made one publish take seconds.
pub const MAX_FILTER_LEVELS: usize = 64;

impl Filter {
    /// Parses a filter as sent in a SUBSCRIBE; `None` when MQTT 5 does not allow it.
    pub fn parse(text: &str) -> Option<Self> {
        let (group, pattern) = match text.strip_prefix("$share/") {
            Some(rest) => {
                let (group, pattern) = rest.split_once('/')?;
                if group.is_empty() || group.contains(['+', '#']) {
                    return None;
                }
                (Some(group.to_owned()), pattern)
            }
            None => (None, text),
        };
        valid_pattern(pattern).then(|| Self {
            group,
            pattern: pattern.to_owned(),
            exact: !pattern.contains(['+', '#']),
        })
    }

    pub fn matches(&self, topic: &str) -> bool {
        match self.exact {
            true => self.pattern == topic,
            false => matches(&self.pattern, topic),
        }
    }
}

/// Whether `topic` may be published to: not empty, no wildcards, no NUL.
pub fn valid_name(topic: &str) -> bool {
    !topic.is_empty() && !topic.contains(['+', '#', '\0'])
}

/// Whether `pattern` is a valid filter: `#` only as the whole last level, `+` only as a whole
/// level.
fn valid_pattern(pattern: &str) -> bool {
    if pattern.is_empty() || pattern.contains('\0') {
        return false;
    }
    let mut levels = pattern.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        if level.contains('#') && (level != "#" || !last) {
            return false;
        }
        if level.contains('+') && level != "+" {
            return false;
        }
    }
    true
}

/// Whether the filter `pattern` matches the topic name `topic`. Topics that start with `$`
/// are matched only by filters that name that first level.
pub fn matches(pattern: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (pattern.starts_with('+') || pattern.starts_with('#')) {
        return false;
    }
    let mut wanted = pattern.split('/');
    let mut levels = topic.split('/');
    loop {
        match (wanted.next(), levels.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(want), Some(level)) if want == level => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_levels_as_the_standard_says() {
        let cases = [
            ("sport/tennis/player1/#", "sport/tennis/player1", true),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/ranking",
                true,
            ),
            ("sport/#", "sport", true),
            ("#", "sport/tennis", true),
            ("+", "sport", true),
            ("+", "sport/tennis", false),
            ("+/+", "/finance", true),
            ("/+", "/finance", true),
            ("sport/+/player1", "sport/tennis/player1", true),
            ("sport/+/player1", "sport/tennis/player2", false),
            (
                "respawn/v1/+/proc/+",
                "respawn/v1/door-pi/proc/doorbot",
                true,
            ),
            ("respawn/v1/+/proc/+", "respawn/v1/door-pi/state", false),
            ("a/b", "a/b/c", false),
            ("a/b/c", "a/b", false),
            ("#", "$SYS/broker/load", false),
            ("+/broker/load", "$SYS/broker/load", false),
            ("$SYS/#", "$SYS/broker/load", true),
        ];
        for (pattern, topic, expected) in cases {
            assert_eq!(matches(pattern, topic), expected, "{pattern} vs {topic}");
        }
    }

    #[test]
    fn only_well_formed_filters_are_accepted() {
        for good in ["#", "+", "a/#", "a/+/b", "+/+", "/", "$share/g/a/#"] {
            assert!(Filter::parse(good).is_some(), "{good}");
        }
        for bad in [
            "",
            "a#",
            "a/#/b",
            "a/b+",
            "+a",
            "$share/g",
            "$share//a",
            "$share/g+/a",
            "$share/g/",
            "a\0b",
        ] {
            assert!(Filter::parse(bad).is_none(), "{bad:?}");
        }
        let exact = Filter::parse("respawn/v1/a/state").unwrap();
        assert!(exact.matches("respawn/v1/a/state") && !exact.matches("respawn/v1/a"));
        assert!(Filter::parse("$SYS/x").unwrap().matches("$SYS/x"));
        let shared = Filter::parse("$share/alerts/respawn/v1/+/event").unwrap();
        assert_eq!(shared.group.as_deref(), Some("alerts"));
        assert!(shared.matches("respawn/v1/door-pi/event"));
    }

    #[test]
    fn names_never_hold_wildcards() {
        assert!(valid_name("respawn/v1/a/state"));
        assert!(valid_name("/"));
        for bad in ["", "a/+", "a/#", "a\0"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }
}

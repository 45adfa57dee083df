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

/// Filters gathered to match many names against: a name's levels are walked once down the
/// tree of the filters' levels, whatever their number. A SUBSCRIBE of 256 wildcard filters
/// matched one by one against 90,000 retained messages took seconds of the broker's loop.
#[derive(Debug)]
pub struct FilterTree<T> {
    root: Level<T>,
}

/// The filters that go on past one level: by the next level's text, or `+`; and the values of
/// those that end here, or with `#` here.
#[derive(Debug)]
struct Level<T> {
    next: std::collections::HashMap<String, Level<T>>,
    any: Option<Box<Level<T>>>,
    end: Option<T>,
    rest: Option<T>,
}

impl<T> Default for Level<T> {
    fn default() -> Self {
        Self {
            next: std::collections::HashMap::new(),
            any: None,
            end: None,
            rest: None,
        }
    }
}

impl<T> Default for FilterTree<T> {
    fn default() -> Self {
        Self {
            root: Level::default(),
        }
    }
}

impl<T: Copy + Ord> FilterTree<T> {
    /// Adds the filter `pattern` (valid, not shared) with `value`; a filter added again keeps
    /// the higher value.
    pub fn insert(&mut self, pattern: &str, value: T) {
        let mut level = &mut self.root;
        let mut parts = pattern.split('/').peekable();
        while let Some(part) = parts.next() {
            if part == "#" {
                level.rest = level.rest.max(Some(value));
                return;
            }
            level = match part {
                "+" => level.any.get_or_insert_with(Box::default),
                text => level.next.entry(text.to_owned()).or_default(),
            };
            if parts.peek().is_none() {
                level.end = level.end.max(Some(value));
            }
        }
    }

    /// The highest value of the filters that match `name`, as [`matches`] matches them.
    pub fn best(&self, name: &str) -> Option<T> {
        let parts: Vec<&str> = name.split('/').collect();
        // A name that starts with `$` is matched by no wildcard at its first level.
        let system = name.starts_with('$');
        let mut best = None;
        let mut to_visit = vec![(&self.root, 0)];
        while let Some((level, depth)) = to_visit.pop() {
            let wildcards = !(system && depth == 0);
            if wildcards {
                best = best.max(level.rest);
            }
            let Some(part) = parts.get(depth) else {
                best = best.max(level.end);
                continue;
            };
            if let Some(next) = level.next.get(*part) {
                to_visit.push((next, depth + 1));
            }
            if let (true, Some(any)) = (wildcards, &level.any) {
                to_visit.push((any, depth + 1));
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_of_filters_matches_as_each_filter_does() {
        let patterns = [
            "#",
            "+",
            "a/#",
            "a/+",
            "+/b",
            "a/b",
            "a/b/#",
            "+/+/c",
            "/+",
            "+/+",
            "$SYS/#",
            "$SYS/+/load",
            "a/+/c/#",
            "",
            "a",
        ];
        let names = [
            "a",
            "a/b",
            "a/b/c",
            "a/x/c",
            "a/x/c/d",
            "/finance",
            "b",
            "x/b",
            "$SYS/broker/load",
            "$SYS",
            "a//c",
            "a/b/c/d/e",
        ];
        // Every subset of up to three filters, each with its own value.
        for (i, first) in patterns.iter().enumerate() {
            for (j, second) in patterns.iter().enumerate().skip(i) {
                for third in patterns.iter().skip(j) {
                    let chosen = [(*first, 1), (*second, 2), (*third, 3)];
                    let mut tree = FilterTree::default();
                    for (pattern, value) in chosen.iter().filter(|(p, _)| valid_pattern(p)) {
                        tree.insert(pattern, *value);
                    }
                    for name in names {
                        let expected = (chosen.iter())
                            .filter(|(p, _)| valid_pattern(p) && matches(p, name))
                            .map(|(_, value)| *value)
                            .max();
                        assert_eq!(tree.best(name), expected, "{chosen:?} vs {name}");
                    }
                }
            }
        }
    }

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

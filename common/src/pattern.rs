//! Globs for agent and process names: `*` for any run of characters, `?` for one.

/// Whether `text` matches `pattern`, where `*` stands for any run of characters and `?` for
/// one.
///
/// ```
/// use respawn_common::pattern::glob;
/// assert!(glob("door-*", "door-pi"));
/// assert!(glob("*", ""));
/// assert!(glob("p?", "p1"));
/// assert!(!glob("door-*", "garage-pi"));
/// ```
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == '?' || c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        for (p, t, m) in [
            ("*", "anything", true),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("*-pi", "door-pi", true),
            ("?", "", false),
            ("", "", true),
            ("", "x", false),
            ("**", "x", true),
        ] {
            assert_eq!(glob(p, t), m, "{p:?} vs {t:?}");
        }
    }
}

//! Text for people and for messages of bounded size: cut on a character boundary, and marked
//! with `…` when cut; text written straight where it is shown; and text from elsewhere made
//! safe to show on a terminal.

use std::fmt;

/// What `write` writes, as a `Display` to put into a larger text without a string of its
/// own (`std::fmt::from_fn`, which needs Rust 1.93).
pub fn written<F>(write: F) -> impl fmt::Display
where
    F: Fn(&mut fmt::Formatter<'_>) -> fmt::Result,
{
    struct Written<F>(F);
    impl<F: Fn(&mut fmt::Formatter<'_>) -> fmt::Result> fmt::Display for Written<F> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            (self.0)(f)
        }
    }
    Written(write)
}

/// `a, b and c`: the items in order, the last joined by `conjunction`.
pub fn listed(items: &[impl AsRef<str>], conjunction: &str) -> String {
    let items: Vec<&str> = items.iter().map(AsRef::as_ref).collect();
    match items.split_last() {
        Some((last, rest)) if !rest.is_empty() => {
            format!("{} {conjunction} {last}", rest.join(", "))
        }
        _ => items.concat(),
    }
}

/// `text` cut to at most `chars` characters (the `…` not counted).
pub fn cut(text: &str, chars: usize) -> String {
    match text.char_indices().nth(chars) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// `text` cut to at most `bytes` bytes, the `…` included.
pub fn cut_bytes(text: &str, bytes: usize) -> String {
    if text.len() <= bytes {
        return text.to_owned();
    }
    let mut end = bytes.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Text that came over the network, as a terminal may show it: control characters (escape
/// sequences, a bell, a line break within a field) and bidirectional overrides are written as
/// escapes such as `\u{1b}`. Anyone who can publish on the broker can put text in states,
/// events and replies; none of it may move the cursor, retitle the terminal, fake a line of
/// its own or reorder what is shown.
pub struct Printable<T>(pub T);

impl<T: fmt::Display> fmt::Display for Printable<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write as _;

        /// Writes through to `f`, escaping what a terminal would act on.
        struct Escaping<'a, 'b>(&'a mut fmt::Formatter<'b>);

        impl fmt::Write for Escaping<'_, '_> {
            fn write_str(&mut self, mut text: &str) -> fmt::Result {
                while let Some(at) = text.find(acted_on) {
                    self.0.write_str(&text[..at])?;
                    let c = text[at..].chars().next().unwrap_or_default();
                    write!(self.0, "{}", c.escape_unicode())?;
                    text = &text[at + c.len_utf8()..];
                }
                self.0.write_str(text)
            }
        }

        write!(Escaping(f), "{}", self.0)
    }
}

/// A character a terminal acts on instead of showing. A tab only moves to the next stop, and
/// log lines are full of them (stack traces).
fn acted_on(c: char) -> bool {
    (c.is_control() && c != '\t')
        || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_terminal_acts_on_is_shown_escaped_and_tabs_pass() {
        let shown = Printable("\u{1b}]0;pwned\u{7}ok\tthen\u{202e}txt").to_string();
        assert_eq!(shown, "\\u{1b}]0;pwned\\u{7}ok\tthen\\u{202e}txt");
        assert_eq!(
            Printable("plain words, ünïcode").to_string(),
            "plain words, ünïcode"
        );
    }

    #[test]
    fn text_is_cut_on_character_boundaries_and_marked() {
        assert_eq!(cut("door", 10), "door");
        assert_eq!(cut("dööröpener", 4), "döör…");
        assert_eq!(cut_bytes("door", 4), "door");
        assert_eq!(cut_bytes("dööröpener", 6), "dö…");
        assert!(cut_bytes("dööröpener", 6).len() <= 6);
    }
}

//! Text for people and for messages of bounded size: cut on a character boundary, and marked
//! with `…` when cut; and text written straight where it is shown.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_cut_on_character_boundaries_and_marked() {
        assert_eq!(cut("door", 10), "door");
        assert_eq!(cut("dööröpener", 4), "döör…");
        assert_eq!(cut_bytes("door", 4), "door");
        assert_eq!(cut_bytes("dööröpener", 6), "dö…");
        assert!(cut_bytes("dööröpener", 6).len() <= 6);
    }
}

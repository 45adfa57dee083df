//! How one value of a configuration file is read: the checks that turn a TOML value into what
//! the program runs with, and the refusals they keep for the report instead of failing the
//! whole table.

use std::cell::RefCell;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use toml::Spanned;

use super::{Span, MAX_DURATION};

thread_local! {
    /// What [`lenient`] refused while [`Section::read`](super::Section::read) deserializes one table. serde gives a
    /// field no way to hand out a problem but failing, and a failure would stop the table at
    /// its first mistake.
    static REFUSED: RefCell<Vec<(Span, Wrong)>> = const { RefCell::new(Vec::new()) };
}

/// Starts the refusals of a table afresh.
pub(super) fn forget_refused() {
    REFUSED.with_borrow_mut(Vec::clear);
}

/// The refusals of the table just read, each with its place.
pub(super) fn take_refused() -> Vec<(Span, Wrong)> {
    REFUSED.take()
}

/// Keeps what is wrong with the value at `span` for the table being read.
pub fn refuse(span: Span, wrong: Wrong) {
    REFUSED.with_borrow_mut(|refused| refused.push((span, wrong)));
}

/// How many values were refused so far: a check across keys looks only at a table whose own
/// values all passed.
pub fn refused_so_far() -> usize {
    REFUSED.with_borrow(Vec::len)
}

/// A value as toml gives it, or why it cannot: toml refuses a number beyond 64 bits only when
/// it converts it, and that refusal must stay with its key instead of ending the table.
struct Readable(Result<toml::Value, Wrong>);

impl<'de> Deserialize<'de> for Readable {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = toml::Value::deserialize(deserializer).map_err(|e| {
            let message = e.to_string();
            match ["integer", "float", "overflow", "too large"]
                .iter()
                .any(|n| message.contains(n))
            {
                true => Wrong::then("is a number beyond TOML's 64 bits"),
                false => Wrong::says(message.trim_end()),
            }
        });
        Ok(Self(value))
    }
}

/// The value at the deserializer's place, read by `check`; `Err` with its place when it is
/// refused, the refusal kept for the report.
fn checked_at<'de, D: Deserializer<'de>, T>(
    deserializer: D,
    check: impl FnOnce(toml::Value) -> Result<T, Wrong>,
) -> Result<Result<(Span, T), ()>, D::Error> {
    let value = Spanned::<Readable>::deserialize(deserializer)?;
    let span = value.span();
    Ok(match value.into_inner().0.and_then(check) {
        Ok(read) => Ok((span, read)),
        Err(wrong) => {
            refuse(span, wrong);
            Err(())
        }
    })
}

/// For `#[serde(deserialize_with)]`: the value as `check` reads it. What `check` refuses is
/// kept to be reported at the value's place, and `T::default()` stands in, so that the rest of
/// the table is still read.
pub fn lenient<'de, D: Deserializer<'de>, T: Default>(
    deserializer: D,
    check: impl FnOnce(toml::Value) -> Result<T, Wrong>,
) -> Result<T, D::Error> {
    let read = checked_at(deserializer, check)?;
    Ok(read.map_or_else(|()| T::default(), |(_, read)| read))
}

/// What is wrong with a value: the end of a sentence whose start names the key (`{what}
/// must be a string`, `{what}: "x" is not a signal`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wrong(String);

impl Wrong {
    /// `{what} must …`
    pub fn must(text: impl fmt::Display) -> Self {
        Self(format!(" must {text}"))
    }

    /// `{what}: …`
    pub fn says(text: impl fmt::Display) -> Self {
        Self(format!(": {text}"))
    }

    /// `{what} …`, for sentences of another form (`{what} is "x"; expected …`).
    pub fn then(text: impl fmt::Display) -> Self {
        Self(format!(" {text}"))
    }

    pub fn about(&self, what: &str) -> String {
        format!("{what}{}", self.0)
    }

    /// The items of one list or table that were each refused, said together: every problem
    /// at once, within a value too. Each names its item (`"A=B" is not …; C: must be …`).
    pub fn together(wrongs: Vec<Wrong>) -> Self {
        let parts: Vec<&str> = (wrongs.iter())
            .map(|w| w.0.trim_start_matches(": ").trim_start())
            .collect();
        Self(format!(": {}", parts.join("; ")))
    }
}

/// Each of `items` checked, or every refusal said together.
pub fn each<T>(items: impl Iterator<Item = Result<T, Wrong>>) -> Result<Vec<T>, Wrong> {
    let (fine, wrong): (Vec<_>, Vec<_>) = items.partition(Result::is_ok);
    match wrong.is_empty() {
        true => Ok(fine.into_iter().filter_map(Result::ok).collect()),
        false => Err(Wrong::together(
            wrong.into_iter().filter_map(Result::err).collect(),
        )),
    }
}

/// A value that must be there when its key is: `Some` is what the adapter returns, and what
/// stands in for a refused one does not matter, as the file is refused.
pub fn some<T>(
    check: impl FnOnce(toml::Value) -> Result<T, Wrong>,
) -> impl FnOnce(toml::Value) -> Result<Option<T>, Wrong> {
    move |value| check(value).map(Some)
}

/// A check of a value of type `T`, after the value is read as one.
pub fn checked<T: FromValue, U>(
    check: impl FnOnce(T) -> Result<U, Wrong>,
) -> impl FnOnce(toml::Value) -> Result<U, Wrong> {
    move |value| T::from_value(value).and_then(check)
}

/// For `#[serde(deserialize_with)]`: a value kept with its place, for a check across keys to
/// point at; `None` when `check` refused it (kept for the report, as by [`lenient`]).
pub fn kept<'de, D: Deserializer<'de>, T>(
    deserializer: D,
    check: impl FnOnce(toml::Value) -> Result<T, Wrong>,
) -> Result<Option<Spanned<T>>, D::Error> {
    let read = checked_at(deserializer, check)?;
    Ok(read.ok().map(|(span, read)| Spanned::new(span, read)))
}

/// Declares serde adapters, one per line, each reading its key's value with a check and
/// keeping what is wrong for the report instead of failing the whole table:
/// - `name -> T = check;` ([`lenient`]): `T::default()` stands in for a refused value;
/// - `name -> T = check, else stand_in;`: the value must be there when its key is (`T` has no
///   default of its own), and `stand_in` is only a placeholder in a file that is refused;
/// - `name => T = check;` ([`kept`]): `Option<Spanned<T>>`, the value with its place, for a
///   check across keys to point at.
#[macro_export]
macro_rules! adapters {
    () => {};
    ($(#[$meta:meta])* $name:ident -> $out:ty = $check:expr; $($rest:tt)*) => {
        $(#[$meta])*
        pub fn $name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<$out, D::Error> {
            $crate::config_file::lenient(d, $check)
        }
        $crate::adapters! { $($rest)* }
    };
    ($(#[$meta:meta])* $name:ident -> $out:ty = $check:expr, else $stand_in:expr; $($rest:tt)*) => {
        $(#[$meta])*
        pub fn $name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<$out, D::Error> {
            let read = $crate::config_file::lenient(d, $crate::config_file::some($check))?;
            Ok(read.unwrap_or_else(|| $stand_in))
        }
        $crate::adapters! { $($rest)* }
    };
    ($(#[$meta:meta])* $name:ident => $out:ty = $check:expr; $($rest:tt)*) => {
        $(#[$meta])*
        pub fn $name<'de, D: serde::Deserializer<'de>>(
            d: D,
        ) -> Result<Option<$crate::config_file::Spanned<$out>>, D::Error> {
            $crate::config_file::kept(d, $check)
        }
        $crate::adapters! { $($rest)* }
    };
}

crate::adapters! {
    flag -> bool = bool::from_value;
    text -> Option<String> = some(checked(non_empty));
    /// Relative to where the program runs, unless the reader joins it to another directory.
    path -> Option<PathBuf> = some(checked(|t| non_empty(t).map(Into::into)));
}

/// A type a configuration value converts to, with the sentence that says what is wrong when
/// it does not.
pub trait FromValue: Sized {
    fn from_value(value: toml::Value) -> Result<Self, Wrong>;
}

impl FromValue for toml::Value {
    fn from_value(value: toml::Value) -> Result<Self, Wrong> {
        Ok(value)
    }
}

impl FromValue for String {
    fn from_value(value: toml::Value) -> Result<Self, Wrong> {
        match value {
            toml::Value::String(s) => Ok(s),
            other => Err(Wrong::must(format_args!(
                "be a string, not {}",
                super::with_article(other.type_str())
            ))),
        }
    }
}

impl FromValue for bool {
    fn from_value(value: toml::Value) -> Result<Self, Wrong> {
        match value {
            toml::Value::Boolean(b) => Ok(b),
            other => Err(Wrong::must(format_args!(
                "be true or false, not {}",
                super::with_article(other.type_str())
            ))),
        }
    }
}

impl FromValue for Vec<String> {
    fn from_value(value: toml::Value) -> Result<Self, Wrong> {
        let toml::Value::Array(items) = value else {
            return Err(Wrong::must("be a list of strings"));
        };
        items
            .into_iter()
            .map(|item| match item {
                toml::Value::String(s) => Ok(s),
                _ => Err(Wrong::must("be a list of strings")),
            })
            .collect()
    }
}

/// `"10s"`, `"500ms"`, `"1h 30m"`: at most [`MAX_DURATION`].
impl FromValue for Duration {
    fn from_value(value: toml::Value) -> Result<Self, Wrong> {
        let toml::Value::String(s) = value else {
            return Err(Wrong::must(
                "be a duration string such as \"10s\", \"500ms\" or \"10m\"",
            ));
        };
        match humantime::parse_duration(&s) {
            Ok(d) if d > MAX_DURATION => Err(Wrong::says(format_args!(
                "{s:?} is longer than the limit of 365 days"
            ))),
            Ok(d) => Ok(d),
            Err(e) => {
                let (mistake, units) = duration_mistake(&s, e);
                let units = if units {
                    "use ms, s, m, h or d, "
                } else {
                    "write "
                };
                Err(Wrong::says(format_args!(
                    "bad duration {s:?} ({mistake}); {units}e.g. \"10s\", \"500ms\" or \"10m\""
                )))
            }
        }
    }
}

/// What humantime found wrong with `text`, said by character rather than by byte offset;
/// whether it was the unit.
fn duration_mistake(text: &str, error: humantime::DurationError) -> (String, bool) {
    use humantime::DurationError::{InvalidCharacter, NumberExpected, UnknownUnit};
    let at = |offset: usize| {
        text.get(..offset)
            .map_or(0, |before| before.chars().count())
            + 1
    };
    let mistake = match error {
        NumberExpected(0) => "a number must come first".to_owned(),
        NumberExpected(offset) => format!("a number is expected at character {}", at(offset)),
        InvalidCharacter(offset) => match text.get(offset..).and_then(|rest| rest.chars().next()) {
            Some(found) => format!("{found:?} at character {} is not allowed", at(offset)),
            None => format!("character {} is not allowed", at(offset)),
        },
        // humantime's own list names months and years, beyond the longest allowed.
        UnknownUnit { unit, .. } if !unit.is_empty() => {
            return (format!("unknown unit {unit:?}"), true)
        }
        // humantime's own words give examples of their own ("5sec"), beside ours.
        UnknownUnit { .. } => return ("a number needs a unit".to_owned(), true),
        other => other.to_string(),
    };
    (mistake, false)
}

/// A whole number from `min` to `u32::MAX`.
pub fn whole(min: u32) -> impl FnOnce(toml::Value) -> Result<u32, Wrong> {
    move |value| {
        match value {
            toml::Value::Integer(n) => u32::try_from(n).ok().filter(|&n| n >= min),
            _ => None,
        }
        .ok_or_else(|| Wrong::must(format_args!("be a whole number from {min} to {}", u32::MAX)))
    }
}

/// A string without NUL bytes (it goes into argv or the environment).
pub fn without_nul(s: String) -> Result<String, Wrong> {
    match s.contains('\0') {
        true => Err(Wrong::must("not contain a NUL byte")),
        false => Ok(s),
    }
}

/// A string that is neither empty nor holds a NUL byte.
pub fn non_empty(s: String) -> Result<String, Wrong> {
    match s.is_empty() {
        true => Err(Wrong::must("not be empty")),
        false => without_nul(s),
    }
}

/// A duration of at least `min`, which a refusal names as it would be written (`1s`, `100ms`).
pub fn at_least(min: Duration) -> impl FnOnce(Duration) -> Result<Duration, Wrong> {
    move |d| match d < min {
        true => Err(Wrong::must(format_args!(
            "be at least {}",
            humantime::format_duration(min)
        ))),
        false => Ok(d),
    }
}

//! Configuration files that report every problem at once, each with its line: the agent's
//! `agent.toml`, respawnctl's `respawnctl.toml` and `alerts.toml`.
//!
//! A file is parsed into toml's spanned tree, which recovers from syntax errors. Each section
//! is then read on its own into a serde struct whose fields read their values with
//! [`lenient`] checks: a value of the wrong type or form becomes a problem kept beside the
//! others instead of an error that stops the rest, so that one bad key never hides the next. Unknown keys are found by comparing a
//! table with the keys of its struct, taken from the struct's own declaration ([`keys`]), and
//! come with the nearest known key as a suggestion.

use std::fmt;
use std::ops::Range;
use std::time::Duration;

use serde::de::{self, DeserializeOwned, Deserializer, IntoDeserializer, Visitor};
use serde::Deserialize;
use toml::de::{DeTable, DeValue};
pub use toml::Spanned;

mod values;
pub use values::*;

/// The most a file a user names (a configuration, a password, a token, a key) may hold: far
/// beyond any real one.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Whether users other than its owner may read `path`, a file of secrets (a key, a password).
pub fn others_can_read(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|meta| meta.permissions().mode() & 0o077 != 0)
}

/// Reads a file a user named, as text. Refused: what is not a regular file (a FIFO would wait
/// for a writer forever, `/dev/zero` never ends), a file over [`MAX_FILE_BYTES`], and what is
/// not UTF-8.
pub fn read_text(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::{Error, ErrorKind, Read as _};
    if !std::fs::metadata(path)?.is_file() {
        return Err(Error::new(ErrorKind::InvalidInput, "not a regular file"));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        let message = format!("larger than {} MiB", MAX_FILE_BYTES >> 20);
        return Err(Error::new(ErrorKind::InvalidInput, message));
    }
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        Error::new(
            ErrorKind::InvalidData,
            format!("not UTF-8 text (byte {at})"),
        )
    })
}

/// Byte offsets into the file.
pub type Span = Range<usize>;

/// The longest duration accepted anywhere: far beyond any sensible timeout, and far from the
/// limits of clock arithmetic and of timestamps.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// One thing wrong with a configuration file.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct Problem {
    /// 1-based; 0 when the problem has no place in the file.
    pub line: usize,
    pub message: String,
}

/// The words by which a problem points at another line of its file (`first defined on line 3`).
pub const ON_LINE: &str = "on line ";

impl Problem {
    /// The problem as found in a text with `offset` lines before it (a header): placed that
    /// much further down, and so is every line its message points at.
    pub fn shifted(&self, offset: usize) -> Problem {
        let mut parts = self.message.split(ON_LINE);
        let mut message = parts.next().unwrap_or_default().to_owned();
        for part in parts {
            message.push_str(ON_LINE);
            let digits = part.bytes().take_while(u8::is_ascii_digit).count();
            match part[..digits].parse::<usize>() {
                Ok(line) => message.push_str(&format!("{}{}", line + offset, &part[digits..])),
                Err(_) => message.push_str(part),
            }
        }
        let line = if self.line == 0 {
            0
        } else {
            self.line + offset
        };
        Problem { line, message }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            f.write_str(&self.message)
        } else {
            write!(f, "line {}: {}", self.line, self.message)
        }
    }
}

/// `2 problems:` and the problems, one per line, indented: for error messages.
pub fn summary(problems: &[Problem]) -> String {
    let plural = if problems.len() == 1 { "" } else { "s" };
    format!(
        "{} problem{plural}:\n{}",
        problems.len(),
        format_problems(problems)
    )
}

/// The problems of a list, one per line, indented: for error messages.
pub fn format_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The problems found in one file so far, placed on its lines.
pub struct Report<'t> {
    text: &'t str,
    /// Where each line after the first starts: a file with a problem on every line is
    /// placed in one pass, not one pass per problem.
    line_starts: Vec<usize>,
    problems: Vec<Problem>,
    /// The keys each section read so far takes (`""` the file's top level, else as its
    /// messages start): a key unknown where it stands but known to another was most likely
    /// written under the wrong table header.
    declared: Vec<(String, Vec<String>)>,
}

impl<'t> Report<'t> {
    pub fn new(text: &'t str) -> Self {
        let line_starts = text
            .bytes()
            .enumerate()
            .filter(|(_, b)| *b == b'\n')
            .map(|(i, _)| i + 1)
            .collect();
        Self {
            text,
            line_starts,
            problems: Vec::new(),
            declared: Vec::new(),
        }
    }

    /// The 1-based line of byte `offset`.
    pub fn line_of(&self, offset: usize) -> usize {
        let offset = offset.min(self.text.len());
        self.line_starts.partition_point(|&start| start <= offset) + 1
    }

    pub fn add(&mut self, span: &Span, message: impl Into<String>) {
        let line = self.line_of(span.start);
        self.problems.push(Problem {
            line,
            message: shortened(message.into()),
        });
    }

    /// A problem of the whole file, with no line of its own.
    pub fn note(&mut self, message: impl Into<String>) {
        self.problems.push(Problem {
            line: 0,
            message: shortened(message.into()),
        });
    }

    /// How many problems were found so far (to tell whether a step found any).
    pub fn count(&self) -> usize {
        self.problems.len()
    }

    /// `Ok` without problems; else every problem, in the order of the file.
    pub fn finish(self) -> Result<(), Vec<Problem>> {
        let mut problems = self.problems;
        if problems.is_empty() {
            return Ok(());
        }
        problems.sort_by_key(|p| p.line);
        problems.dedup();
        Err(problems)
    }
}

/// A message that quotes a megabyte-long value is cut in its middle: its start names the key,
/// its end says what is wrong.
fn shortened(message: String) -> String {
    const KEPT: usize = 150;
    let chars = message.chars().count();
    if chars <= 2 * KEPT + 20 {
        return message;
    }
    let head: String = message.chars().take(KEPT).collect();
    let tail: String = message.chars().skip(chars - KEPT).collect();
    format!(
        "{head} … ({} characters left out) … {tail}",
        chars - 2 * KEPT
    )
}

/// Parses `text` as TOML. Syntax errors are reported, each on its line, and nothing else is
/// read from a file that has any: what the parser recovered would only add problems that are
/// not there.
pub fn parse<'i>(text: &'i str, report: &mut Report<'_>) -> Option<Spanned<DeTable<'i>>> {
    let (root, errors) = DeTable::parse_recoverable(text);
    let mut found: Vec<(usize, String)> = errors
        .iter()
        .map(|e| {
            let at = e.span().map_or(0, |s| s.start);
            let mut message = e.message().trim_end().to_owned();
            // toml says which key only by its place: name it.
            let key = e.span().and_then(|s| text.get(s)).map(str::trim);
            if let (true, Some(key)) = (message == "duplicate key", key) {
                message = format!("`{key}` is defined twice");
            }
            (at, message)
        })
        .collect();
    // An unclosed `[` or `{` swallows what follows it, and is found only where the parser
    // gives up: the mistake is at the bracket, and the errors between it and there are echoes.
    let unclosed: Vec<(usize, usize)> = found
        .iter()
        .filter(|(_, message)| message.starts_with("unclosed"))
        .filter_map(|(at, _)| Some((unclosed_opener(text, *at)?, *at)))
        .collect();
    for (opener, end) in &unclosed {
        found.retain(|(at, message)| at <= opener || at > end || message.starts_with("unclosed"));
        for (at, message) in &mut found {
            if *at == *end && message.starts_with("unclosed") {
                *at = *opener;
            }
        }
    }
    for (at, message) in found {
        report.add(&(at..at), format!("TOML syntax: {message}"));
    }
    errors.is_empty().then_some(root)
}

/// The `[` or `{` still open at `end`, skipping strings and comments.
fn unclosed_opener(text: &str, end: usize) -> Option<usize> {
    let bytes = &text.as_bytes()[..end.min(text.len())];
    let mut open = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            quote @ (b'"' | b'\'') => {
                i += 1;
                while i < bytes.len() && bytes[i] != quote && bytes[i] != b'\n' {
                    i += if quote == b'"' && bytes[i] == b'\\' {
                        2
                    } else {
                        1
                    };
                }
            }
            b'[' | b'{' => open.push(i),
            b']' | b'}' => {
                open.pop();
            }
            _ => {}
        }
        i += 1;
    }
    open.pop()
}

/// The keys of the serde struct `T`, from its own declaration.
pub fn keys<T: DeserializeOwned>() -> &'static [&'static str] {
    /// A deserializer that only listens for the field list a struct asks for.
    struct Keys<'a>(&'a mut &'static [&'static str]);

    impl<'de> Deserializer<'de> for Keys<'_> {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("fields taken"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }

    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Keys(&mut fields));
    fields
}

/// Reports every key of `table` that is not one of `known`, with the nearest known key.
pub fn unknown_keys(table: &DeTable<'_>, known: &[&str], context: &str, report: &mut Report<'_>) {
    let keys = known.iter().map(|k| (*k).to_owned()).collect();
    report.declared.push((context.to_owned(), keys));
    for (key, _) in table.iter() {
        let name = key.get_ref().as_ref();
        if known.contains(&name) {
            continue;
        }
        // `password` for `password_file`: a known key that only adds a word to it.
        let widened = || {
            let wider = |k: &&&str| {
                k.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('_'))
            };
            known.iter().find(wider).copied()
        };
        // TOML gives every key after a `[table]` header to that table, whatever was meant: a
        // key of a section read before this one was most likely written below a later header.
        let elsewhere = || {
            let declared = report.declared.iter();
            let mut others = declared.filter(|(other, _)| other != context);
            let (other, _) = others.find(|(_, keys)| keys.iter().any(|k| k == name))?;
            Some(match other.trim_end_matches(": ") {
                "" => "at the top of the file, above the first table header".to_owned(),
                section => format!("under {section}"),
            })
        };
        let hint = if let Some(k) = closest(name, known) {
            format!(" (did you mean `{k}`?)")
        } else if let Some(place) = elsewhere() {
            format!(" (every key after a table header belongs to that table: write it {place})")
        } else if let Some(k) = widened() {
            format!(" (did you mean `{k}`?)")
        } else {
            format!(" (known keys: {})", known.join(", "))
        };
        report.add(&key.span(), format!("{context}unknown key `{name}`{hint}"));
    }
}

/// The known key nearest to a mistyped one, if it is near enough to be a likely typo.
pub fn closest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (strsim::osa_distance(key, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// The key of `table` (`backoff.initial` for a key within a table) whose value is at `span`.
fn key_at(table: &DeTable<'_>, span: &Span) -> Option<String> {
    table.iter().find_map(|(key, value)| {
        let key = key.get_ref().as_ref();
        if value.span() == *span {
            return Some(key.to_owned());
        }
        match value.get_ref() {
            DeValue::Table(inner) => key_at(inner, span).map(|k| format!("{key}.{k}")),
            _ => None,
        }
    })
}

/// How a section names its keys in messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Naming {
    /// `[mqtt] url`; unknown keys as `[mqtt]: unknown key …`.
    Table,
    /// `[[process]] "web": \`url\``, one of an array of tables.
    Item,
    /// `broker`: the top level of a file, whose path the report starts with; unknown keys as
    /// `unknown key …`.
    File,
}

/// One section being read: how it names its keys in messages, and where its problems go.
pub struct Section<'r, 't> {
    pub name: String,
    naming: Naming,
    report: &'r mut Report<'t>,
}

impl<'r, 't> Section<'r, 't> {
    pub fn new(name: impl Into<String>, naming: Naming, report: &'r mut Report<'t>) -> Self {
        Self {
            name: name.into(),
            naming,
            report,
        }
    }

    /// How a key of this section is named in messages.
    pub fn what(&self, key: &str) -> String {
        match self.naming {
            Naming::Table => format!("{} {key}", self.name),
            Naming::Item => format!("{}: `{key}`", self.name),
            // The file's path starts the report already (and may not be the usual name).
            Naming::File => key.to_owned(),
        }
    }

    /// What starts a message about the section's keys.
    fn context(&self) -> String {
        match self.naming {
            Naming::File => String::new(),
            _ => format!("{}: ", self.name),
        }
    }

    /// The table `value` as `T`, with every problem it has: keys `T` does not declare (with
    /// the key meant), `required` keys it lacks (each with a hint), tables within it that are
    /// not tables or have unknown keys of their own (`nested`: each key and the keys of its
    /// table), and each value a field refused, named by its key. `None` when `T` could not be
    /// read at all.
    pub fn read<T: DeserializeOwned>(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        required: &[(&str, &str)],
        nested: &[(&str, &[&str])],
    ) -> Option<T> {
        let mut known: Vec<&str> = keys::<T>().to_vec();
        let tables = nested.iter().map(|(key, _)| *key);
        known.extend(tables.filter(|key| !keys::<T>().contains(key)));
        let table = self.table(value, &known)?;
        let mut readable = table.clone();
        for (key, keys) in nested {
            let Some(inner) = table.get(*key) else {
                continue;
            };
            match inner.get_ref() {
                DeValue::Table(inner) => {
                    let context = format!("{}: `{key}`: ", self.name);
                    unknown_keys(inner, keys, &context, self.report);
                }
                _ => {
                    self.report
                        .add(&inner.span(), format!("{} must be a table", self.what(key)));
                    readable.remove(*key);
                }
            }
        }
        let mut missing = false;
        for (key, hint) in required {
            if !table.contains_key(*key) {
                self.missing(&value.span(), key, hint);
                missing = true;
            }
        }
        let readable = Spanned::new(value.span(), DeValue::Table(readable));
        self.values(&readable, !missing)
    }

    /// The table `value`, after reporting its keys that are not `known`; `None`, reported,
    /// when it is not a table.
    pub fn table<'v, 'i>(
        &mut self,
        value: &'v Spanned<DeValue<'i>>,
        known: &[&str],
    ) -> Option<&'v DeTable<'i>> {
        let DeValue::Table(table) = value.get_ref() else {
            let message = format!(
                "{} must be a table, not {}",
                self.name,
                type_of(value.get_ref())
            );
            self.report.add(&value.span(), message);
            return None;
        };
        unknown_keys(table, known, &self.context(), self.report);
        Some(table)
    }

    /// The table `value` as `T`, each value a field refused named by its key; without a look
    /// at its keys. An error of `T` as a whole is reported when `whole`.
    pub fn values<T: DeserializeOwned>(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        whole: bool,
    ) -> Option<T> {
        values::forget_refused();
        let read = T::deserialize(value.clone().into_deserializer());
        for (span, wrong) in values::take_refused() {
            let key = match value.get_ref() {
                DeValue::Table(table) => key_at(table, &span),
                _ => None,
            };
            let what = key.map_or_else(|| self.name.clone(), |key| self.what(&key));
            self.report.add(&span, wrong.about(&what));
        }
        read.map_err(|e| {
            if whole {
                let span = e.span().unwrap_or_else(|| value.span());
                self.report
                    .add(&span, format!("{}: {}", self.name, e.message()));
            }
        })
        .ok()
    }

    /// Where the value of `key` is, if the table `value` has it.
    pub fn span_of(value: &Spanned<DeValue<'_>>, key: &str) -> Option<Span> {
        match value.get_ref() {
            DeValue::Table(table) => table.get(key).map(Spanned::span),
            _ => None,
        }
    }

    /// Reports that the section at `span` lacks `key`; `hint` follows the message.
    pub fn missing(&mut self, span: &Span, key: &str, hint: &str) {
        let message = format!("{}: missing `{key}`{hint}", self.name);
        self.report.add(span, message);
    }

    pub fn problem(&mut self, span: &Span, message: impl Into<String>) {
        self.report.add(span, message);
    }

    /// Problems found in the file so far, to tell whether a step found any.
    pub fn count(&self) -> usize {
        self.report.count()
    }
}

/// The tables of `[[key]]` sections; anything else under `key` is reported.
pub fn array_of_tables<'v, 'i>(
    value: &'v Spanned<DeValue<'i>>,
    key: &str,
    report: &mut Report<'_>,
) -> &'v [Spanned<DeValue<'i>>] {
    match value.get_ref() {
        DeValue::Array(items) => items,
        _ => {
            let message =
                format!("`{key}` must be an array of tables, written as [[{key}]] sections");
            report.add(&value.span(), message);
            &[]
        }
    }
}

/// A TOML value's type, with its article, for messages.
pub fn type_of(value: &DeValue<'_>) -> &'static str {
    with_article(value.type_str())
}

/// A TOML type's name as toml gives it (`type_str`), with its article.
pub fn with_article(type_str: &str) -> &'static str {
    match type_str {
        "string" => "a string",
        "integer" => "an integer",
        "float" => "a float",
        "boolean" => "a boolean",
        "datetime" => "a date",
        "array" => "an array",
        _ => "a table",
    }
}

#[cfg(test)]
mod tests;

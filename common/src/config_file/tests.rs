//! The reading of configuration files: problems with their lines, lenient values, near misses.

use super::*;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Sample {
    #[serde(deserialize_with = "name")]
    name: String,
    #[serde(deserialize_with = "timeout")]
    timeout: Duration,
    #[serde(deserialize_with = "flag")]
    on: bool,
}

crate::adapters! {
    name -> String = String::from_value;
    timeout -> Duration = Duration::from_value;
}

fn read(text: &str) -> (Option<Sample>, Vec<String>) {
    let mut report = Report::new(text);
    let sample = parse(text, &mut report).and_then(|root| {
        let value = Spanned::new(root.span(), DeValue::Table(root.into_inner()));
        Section::new("sample.toml:", Naming::File, &mut report).read(&value, &[], &[])
    });
    let problems = match report.finish() {
        Ok(()) => Vec::new(),
        Err(p) => p.iter().map(ToString::to_string).collect(),
    };
    (sample, problems)
}

#[test]
fn a_shifted_problem_points_at_the_lines_of_the_longer_file() {
    let problem = Problem {
        line: 5,
        message: "\"web\": duplicate name (first defined on line 2; again on line 5)".into(),
    };
    assert_eq!(
        problem.shifted(1),
        Problem {
            line: 6,
            message: "\"web\": duplicate name (first defined on line 3; again on line 6)".into(),
        }
    );
    let whole = Problem {
        line: 0,
        message: "on line without a number".into(),
    };
    assert_eq!(whole.shifted(1), whole);
}

#[test]
fn a_bad_duration_is_explained_by_character() {
    let said = |text: &str| match Duration::from_value(toml::Value::String(text.into())) {
        Err(wrong) => wrong.about("timeout"),
        Ok(d) => panic!("{text:?} was taken as {d:?}"),
    };
    let hint = "; write e.g. \"10s\", \"500ms\" or \"10m\"";
    assert_eq!(
        said("ten seconds"),
        format!("timeout: bad duration \"ten seconds\" (a number must come first){hint}")
    );
    assert_eq!(
        said("10s x"),
        format!("timeout: bad duration \"10s x\" (a number is expected at character 5){hint}")
    );
    assert_eq!(
        said("1é0s!"),
        format!("timeout: bad duration \"1é0s!\" ('é' at character 2 is not allowed){hint}")
    );
    assert_eq!(
        said("5 parsecs"),
        "timeout: bad duration \"5 parsecs\" (unknown unit \"parsecs\"); use ms, s, m, h or d, e.g. \"10s\", \"500ms\" or \"10m\""
    );
    assert_eq!(
        said("5"),
        "timeout: bad duration \"5\" (a number needs a unit); use ms, s, m, h or d, e.g. \"10s\", \"500ms\" or \"10m\""
    );
}

#[test]
fn the_keys_of_a_struct_come_from_its_declaration() {
    assert_eq!(keys::<Sample>(), ["name", "timeout", "on"]);
}

#[test]
fn every_bad_value_and_unknown_key_is_reported_with_its_line() {
    let (sample, problems) = read("name = 5\ntimeout = \"ten\"\non = \"yes\"\nnmae = \"x\"\n");
    assert!(sample.is_some(), "the rest of the table is still read");
    assert_eq!(
        problems,
        [
            "line 1: name must be a string, not an integer",
            "line 2: timeout: bad duration \"ten\" (a number must come first); write e.g. \"10s\", \"500ms\" or \"10m\"",
            "line 3: on must be true or false, not a string",
            "line 4: unknown key `nmae` (did you mean `name`?)",
        ]
    );
    let (sample, problems) = read("name = \"x\"\ntimeout = \"2s\"\n");
    assert!(problems.is_empty(), "{problems:?}");
    let sample = sample.unwrap();
    assert_eq!(
        (sample.name.as_str(), sample.timeout, sample.on),
        ("x", Duration::from_secs(2), false)
    );
}

#[test]
fn a_number_beyond_64_bits_is_a_problem_of_its_key_and_hides_no_other() {
    let (sample, problems) = read("name = 18446744073709551616\ntimeout = 1e400\non = \"yes\"\n");
    assert!(sample.is_some(), "the rest of the table is still read");
    assert_eq!(
        problems,
        [
            "line 1: name is a number beyond TOML's 64 bits",
            "line 2: timeout is a number beyond TOML's 64 bits",
            "line 3: on must be true or false, not a string",
        ]
    );
}

#[test]
fn only_a_regular_file_of_reasonable_size_in_utf8_is_read() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    let file = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    assert_eq!(read_text(&file("ok.toml", b"a = 1\n")).unwrap(), "a = 1\n");
    let error = |path: &std::path::Path| read_text(path).unwrap_err().to_string();
    assert_eq!(error(dir), "not a regular file");
    assert_eq!(
        error(std::path::Path::new("/dev/zero")),
        "not a regular file"
    );
    assert_eq!(
        error(&file("latin1.toml", b"a = \"\xe9\"")),
        "not UTF-8 text (byte 5)"
    );
    let huge = vec![b'#'; MAX_FILE_BYTES as usize + 1];
    assert_eq!(error(&file("huge.toml", &huge)), "larger than 4 MiB");
}

#[test]
fn a_huge_value_is_not_quoted_whole() {
    let text = format!("name = \"x\"\ntimeout = \"{}\"\n", "9".repeat(1_000_000));
    let (_, problems) = read(&text);
    assert_eq!(problems.len(), 1, "{problems:?}");
    let problem = &problems[0];
    assert!(problem.len() < 500, "{problem}");
    assert!(problem.starts_with("line 2: timeout: "), "{problem}");
    assert!(problem.contains("characters left out"), "{problem}");
    assert!(
        problem.ends_with("write e.g. \"10s\", \"500ms\" or \"10m\""),
        "{problem}"
    );
}

#[test]
fn a_key_defined_twice_is_named() {
    let (_, problems) = read("name = \"x\"\non = true\nname = \"y\"\n");
    assert_eq!(problems, ["line 3: TOML syntax: `name` is defined twice"]);
}

#[test]
fn a_missing_bracket_is_one_problem_on_its_own_line() {
    let (sample, problems) = read("name = \"x\"\non = true\ntimeout = [\"1s\"\n\nname = 2\n");
    assert!(sample.is_none());
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with("line 3: TOML syntax:"),
        "{problems:?}"
    );
}

#[test]
fn typo_suggestions_only_when_close() {
    let known = ["command", "stop_signal", "name"];
    assert_eq!(closest("comand", &known), Some("command"));
    assert_eq!(closest("stop_sigal", &known), Some("stop_signal"));
    assert_eq!(
        closest("comamnd", &known),
        Some("command"),
        "a swap is one typo"
    );
    assert_eq!(closest("zzzzzz", &known), None);
}

//! RFC 3339 timestamps with millisecond precision for serde, as `with = "..."` modules.

use std::fmt;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Deserializer, Serializer};

/// The last moment RFC 3339 can express: 9999-12-31T23:59:59Z.
const LATEST: Duration = Duration::from_secs(253_402_300_799);

/// Formats a timestamp as RFC 3339 in UTC with milliseconds, e.g. `2026-11-24T23:26:36.123Z`.
/// Times outside years 1970 to 9999 are clamped rather than failing.
pub fn format(t: SystemTime) -> String {
    let t = t.clamp(SystemTime::UNIX_EPOCH, SystemTime::UNIX_EPOCH + LATEST);
    humantime::format_rfc3339_millis(t).to_string()
}

/// `850ms`, `42s`, `3m12s`, `5h3m`, `2d4h`: two units at most, for tables and one-liners.
pub fn short(d: Duration) -> String {
    Short(d).to_string()
}

/// A wait before something happens, in words: `None` when it is at once (under 100 ms);
/// from a second on to the nearest second (a backoff of 1.9 s is "about 2s", not 1s), below
/// to the nearest 100 ms (`800ms`: a restart then is soon, not at once).
pub fn wait(d: Duration) -> Option<String> {
    let rounded = match d.as_millis() {
        0..100 => return None,
        ms @ 100..1000 => Duration::from_millis((ms as u64 + 50) / 100 * 100),
        _ => Duration::from_secs(d.as_secs_f64().round() as u64),
    };
    Some(short(rounded))
}

/// A process's next start at `next`, as `status` says it at `now`: `next start in 800ms`, or
/// `next start due` once its time has come.
pub fn next_start(next: SystemTime, now: SystemTime) -> String {
    match wait(next.duration_since(now).unwrap_or_default()) {
        Some(wait) => format!("next start in {wait}"),
        None => "next start due".to_owned(),
    }
}

/// [`short`] as it is written into a larger text, with no string of its own: a fleet's
/// table writes 200,000 of them.
pub struct Short(pub Duration);

impl fmt::Display for Short {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0.as_secs();
        match s {
            0 => write!(f, "{}ms", self.0.as_millis()),
            1..=59 => write!(f, "{s}s"),
            // A whole unit is said alone: a window of "10m", not "10m0s".
            60..=3599 => write_two(f, (s / 60, "m"), (s % 60, "s")),
            3600..=86_399 => write_two(f, (s / 3600, "h"), (s % 3600 / 60, "m")),
            _ => write_two(f, (s / 86_400, "d"), (s % 86_400 / 3600, "h")),
        }
    }
}

fn write_two(f: &mut fmt::Formatter<'_>, big: (u64, &str), small: (u64, &str)) -> fmt::Result {
    match small.0 {
        0 => write!(f, "{}{}", big.0, big.1),
        _ => write!(f, "{}{}{}{}", big.0, big.1, small.0, small.1),
    }
}

/// `437ms`, `1s 500ms`, `43s`, `3m 12s`: to the millisecond below ten seconds, to the nearest
/// second above (as events round a wait, so that the journal and `respawnctl events` agree),
/// for log lines that say how long something took or will wait.
pub fn precise(d: Duration) -> String {
    let rounded = if d >= Duration::from_secs(10) {
        Duration::from_secs(d.as_secs() + u64::from(d.subsec_millis() >= 500))
    } else {
        Duration::from_millis(d.as_millis() as u64)
    };
    humantime::format_duration(rounded).to_string()
}

/// How long before `now` the moment `t` was: zero when `t` is later (another machine's clock
/// may be ahead).
pub fn elapsed(t: SystemTime, now: SystemTime) -> Duration {
    now.duration_since(t).unwrap_or_default()
}

/// How far another machine's clock is off this one's, as its heartbeats show: a Pi without a
/// real-time clock and out of reach of NTP keeps the time it had when it was last shut down,
/// and its reports say "up 7d" of a program started a minute ago. Readers show its times by
/// its own clock moved onto theirs. Within [`ClockOffset::TOLERANCE`] the clocks agree: the
/// estimate is no better than a second (the broker counts message expiry in whole seconds).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClockOffset {
    /// How far its clock is ahead of ours, in milliseconds (negative: behind); 0 within the
    /// tolerance.
    ahead_ms: i64,
}

impl ClockOffset {
    pub const TOLERANCE: Duration = Duration::from_secs(5);

    /// The offset of a clock that read `theirs` when ours read `ours`.
    pub fn between(theirs: SystemTime, ours: SystemTime) -> Self {
        let signed = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let ahead_ms = match theirs.duration_since(ours) {
            Ok(ahead) => signed(ahead),
            Err(behind) => -signed(behind.duration()),
        };
        let within = ahead_ms.unsigned_abs() < Self::TOLERANCE.as_millis() as u64;
        Self {
            ahead_ms: if within { 0 } else { ahead_ms },
        }
    }

    /// Milliseconds its clock is ahead of ours (negative: behind).
    pub fn ahead_ms(self) -> i64 {
        self.ahead_ms
    }

    /// Our `now` by its clock: what its times are to be measured against.
    pub fn their_now(self, now: SystemTime) -> SystemTime {
        moved(now, self.ahead_ms)
    }

    /// A time by its clock, by ours.
    pub fn ours(self, theirs: SystemTime) -> SystemTime {
        moved(theirs, -self.ahead_ms)
    }

    /// `clock 7d behind`, `clock 1m30s ahead`; `None` when the clocks agree. Rounded to the
    /// minute from an hour on: the estimate is good to a second, and a week less a second
    /// would read `6d23h`.
    pub fn describe(self) -> Option<String> {
        let ms = self.ahead_ms.unsigned_abs();
        let unit = if ms >= 3_600_000 { 60_000 } else { 1_000 };
        let off = short(Duration::from_millis((ms + unit / 2) / unit * unit));
        match self.ahead_ms {
            0 => None,
            ahead if ahead > 0 => Some(format!("clock {off} ahead")),
            _ => Some(format!("clock {off} behind")),
        }
    }
}

/// `t` moved later by `ms` milliseconds (earlier when negative); `t` where that cannot be.
fn moved(t: SystemTime, ms: i64) -> SystemTime {
    let by = Duration::from_millis(ms.unsigned_abs());
    let moved = match ms >= 0 {
        true => t.checked_add(by),
        false => t.checked_sub(by),
    };
    moved.unwrap_or(t)
}

/// A command line's time to wait (`--timeout 30s`): a duration longer than zero, and no
/// longer than a configuration's durations may be (a deadline past what clocks can count
/// would be no deadline at all).
pub fn parse_wait(text: &str) -> Result<Duration, String> {
    use crate::config_file::MAX_DURATION;
    match humantime::parse_duration(text) {
        Ok(wait) if wait.is_zero() => Err("must be longer than 0s".into()),
        Ok(wait) if wait > MAX_DURATION => Err("must be at most 365 days".into()),
        Ok(wait) => Ok(wait),
        Err(_) => Err(format!(
            "{text:?} is not a duration: write e.g. 5s, 30s or 2m"
        )),
    }
}

/// Reads an RFC 3339 time, with or without fractions of a second; RFC 3339 allows `t` and
/// `z` in lower case, and so does this.
pub fn parse(text: &str) -> Result<SystemTime, humantime::TimestampError> {
    // Upper-cased only when it must be: a fleet's reading parses 300,000 of these.
    match text.bytes().any(|b| b.is_ascii_lowercase()) {
        true => humantime::parse_rfc3339_weak(&text.to_ascii_uppercase()),
        false => humantime::parse_rfc3339_weak(text),
    }
}

/// `#[serde(with = "respawn_common::time::rfc3339")]` for `SystemTime`.
pub mod rfc3339 {
    use super::*;

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        parse(&text).map_err(serde::de::Error::custom)
    }
}

/// `#[serde(with = "respawn_common::time::rfc3339_opt", default)]` for `Option<SystemTime>`.
pub mod rfc3339_opt {
    use super::*;

    pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&format(*t)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        match Option::<std::borrow::Cow<'de, str>>::deserialize(d)? {
            Some(text) => parse(&text).map(Some).map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_lines_wait_is_longer_than_zero_and_within_a_year() {
        assert_eq!(parse_wait("30s"), Ok(Duration::from_secs(30)));
        assert!(parse_wait("0s").is_err());
        // Added to the clock, it would overflow it (found by a hostile-input review).
        for absurd in ["18446744073709551615s", "9223372036854775807s", "366days"] {
            assert_eq!(parse_wait(absurd), Err("must be at most 365 days".into()));
        }
    }

    #[test]
    fn a_clock_off_by_more_than_the_tolerance_moves_times_onto_ours() {
        let ours = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let week = Duration::from_secs(7 * 86_400);
        let behind = ClockOffset::between(ours - week, ours);
        assert_eq!(behind.ahead_ms(), -(week.as_millis() as i64));
        assert_eq!(behind.their_now(ours), ours - week);
        assert_eq!(
            behind.ours(ours - week - Duration::from_secs(60)),
            ours - Duration::from_secs(60)
        );
        assert_eq!(behind.describe().as_deref(), Some("clock 7d behind"));
        let ahead = ClockOffset::between(ours + Duration::from_secs(90), ours);
        assert_eq!(ahead.their_now(ours), ours + Duration::from_secs(90));
        assert_eq!(ahead.ours(ours + Duration::from_secs(90)), ours);
        assert_eq!(ahead.describe().as_deref(), Some("clock 1m30s ahead"));
        // A week less the second the estimate may be off reads a week.
        let almost = ClockOffset::between(ours - week + Duration::from_millis(805), ours);
        assert_eq!(almost.describe().as_deref(), Some("clock 7d behind"));
        // Within the tolerance the clocks agree: an estimate is good to a second or so.
        for off in [Duration::from_millis(4_999), Duration::ZERO] {
            for theirs in [ours + off, ours - off] {
                let agrees = ClockOffset::between(theirs, ours);
                assert_eq!((agrees.ahead_ms(), agrees.describe()), (0, None));
                assert_eq!(agrees.their_now(ours), ours);
            }
        }
    }

    #[test]
    fn a_wait_is_said_to_the_nearest_second_or_tenth_or_as_at_once() {
        let said = |ms: u64| wait(Duration::from_millis(ms));
        assert_eq!(said(0), None);
        assert_eq!(said(99), None);
        assert_eq!(said(100).as_deref(), Some("100ms"));
        assert_eq!(said(816).as_deref(), Some("800ms"));
        assert_eq!(said(960).as_deref(), Some("1s"));
        assert_eq!(said(1900).as_deref(), Some("2s"));
        assert_eq!(said(61_400).as_deref(), Some("1m1s"));
    }

    #[test]
    fn precise_durations_keep_milliseconds_below_ten_seconds() {
        assert_eq!(precise(Duration::from_micros(437_900)), "437ms");
        assert_eq!(precise(Duration::from_millis(1500)), "1s 500ms");
        assert_eq!(precise(Duration::from_millis(42_900)), "43s");
        assert_eq!(precise(Duration::from_millis(42_499)), "42s");
        assert_eq!(precise(Duration::from_secs(192)), "3m 12s");
    }

    #[test]
    fn rfc3339_times_are_read_with_or_without_fractions_and_in_either_case() {
        let expected = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_547_200);
        for text in [
            "2025-12-01T00:00:00Z",
            "2025-12-01T00:00:00.000Z",
            "2025-12-01t00:00:00z",
            "2025-12-01T00:00:00.000z",
        ] {
            assert_eq!(parse(text).ok(), Some(expected), "{text}");
        }
        assert!(parse("2025-12-01 00:00").is_err());
        assert!(parse("yesterday").is_err());
    }

    #[test]
    fn out_of_range_times_are_clamped_not_fatal() {
        let far = SystemTime::UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        assert_eq!(format(far), "9999-12-31T23:59:59.000Z");
        let early = SystemTime::UNIX_EPOCH - Duration::from_secs(10);
        assert_eq!(format(early), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn short_durations_use_two_units_at_most() {
        assert_eq!(short(Duration::from_millis(850)), "850ms");
        assert_eq!(short(Duration::from_secs(42)), "42s");
        assert_eq!(short(Duration::from_secs(192)), "3m12s");
        assert_eq!(short(Duration::from_secs(18_180)), "5h3m");
        assert_eq!(short(Duration::from_secs(187_200)), "2d4h");
        // A whole unit alone.
        assert_eq!(short(Duration::from_secs(600)), "10m");
        assert_eq!(short(Duration::from_secs(7200)), "2h");
        assert_eq!(short(Duration::from_secs(172_800)), "2d");
    }

    #[test]
    fn elapsed_is_zero_for_a_time_ahead_of_now() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        assert_eq!(
            elapsed(now - Duration::from_secs(5), now),
            Duration::from_secs(5)
        );
        assert_eq!(elapsed(now + Duration::from_secs(5), now), Duration::ZERO);
    }
}

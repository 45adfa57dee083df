//! RFC 3339 timestamps with millisecond precision for serde, as `with = "..."` modules.

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

/// `#[serde(with = "respawn_common::time::rfc3339")]` for `SystemTime`.
pub mod rfc3339 {
    use super::*;

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        humantime::parse_rfc3339_weak(&text).map_err(serde::de::Error::custom)
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
            Some(text) => humantime::parse_rfc3339_weak(&text)
                .map(Some)
                .map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_times_are_clamped_not_fatal() {
        let far = SystemTime::UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        assert_eq!(format(far), "9999-12-31T23:59:59.000Z");
        let early = SystemTime::UNIX_EPOCH - Duration::from_secs(10);
        assert_eq!(format(early), "1970-01-01T00:00:00.000Z");
    }
}

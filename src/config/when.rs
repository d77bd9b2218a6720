//! Times as people type them: besides RFC 3339, epoch milliseconds and the open ends (`earliest`,
//! `latest`), the relative forms `now`, `now-<duration>`, `<duration> ago`, `today` and `yesterday`
//! (00:00 UTC of that day). Durations are humantime's: `90m`, `2h30m`, `7d`.
//!
//! Invariant: a relative time is resolved once, against one `now`, into the absolute RFC 3339 time
//! that is used from then on (and printed back): nothing downstream sees a relative time, so a
//! window never moves after it was asked for.

use crate::archive::time::rfc3339_millis;

const DAY_MS: i64 = 86_400_000;

/// 0000-01-01T00:00:00Z: the earliest time RFC 3339 writes, and so the earliest a relative time
/// may reach.
const EARLIEST_MS: i64 = -62_167_219_200_000;

/// Bare numbers from 1 up to this are refused as times: as epoch milliseconds they are before
/// 2001-09-09T01:46:40Z, as epoch seconds they cover every date from 1970 to the year 33658.
/// Numbers at or above it, 0 and negative numbers (times before 1970) are milliseconds.
pub const SECONDS_BELOW: i64 = 1_000_000_000_000;

/// `earliest`/`latest` (the open end), epoch milliseconds, or RFC 3339. The one time parser of
/// restores (command line, pipelines, API) and `rewind find`: a positive number below
/// [`SECONDS_BELOW`] is refused, being far likelier epoch seconds than a time in 1970–2001.
pub fn parse_time(s: &str, open: &str) -> Result<Option<i64>, String> {
    let s = s.trim();
    if s == open {
        return Ok(None);
    }
    if let Ok(ms) = s.parse::<i64>() {
        if ms > 0 && ms < SECONDS_BELOW {
            let as_seconds = crate::archive::time::rfc3339_millis(ms * 1000).replace(".000Z", "Z");
            return Err(format!(
                "{s} looks like epoch seconds, but times are epoch milliseconds or RFC 3339: write {} or {as_seconds} (a positive number below {SECONDS_BELOW} is refused: in milliseconds it would be before 2001-09-09)",
                ms * 1000
            ));
        }
        return Ok(Some(ms));
    }
    crate::archive::time::parse_rfc3339_millis(s)
        .map(Some)
        .ok_or_else(|| {
            format!(
                "{s:?} is not a time: use RFC 3339 such as 2026-11-23T10:00:00Z, epoch milliseconds, or {open}"
            )
        })
}

/// The relative forms, for messages.
pub const RELATIVE_FORMS: &str = "now, now-1h, 2h ago, today, yesterday";

/// A relative time resolved against `now` (epoch milliseconds): `Ok(None)` when `s` is not one
/// (it may still be an absolute time), an error when it is one that cannot be resolved. Keywords
/// are case-insensitive; durations are not (`1M` is a month, `1m` a minute).
pub fn relative(s: &str, now: i64) -> Result<Option<i64>, String> {
    let text = s.trim();
    let is = |word: &str| text.eq_ignore_ascii_case(word);
    let today = now.div_euclid(DAY_MS) * DAY_MS;
    if is("now") {
        return Ok(Some(now));
    }
    if is("today") {
        return Ok(Some(today));
    }
    if is("yesterday") {
        return Ok(Some(today - DAY_MS));
    }
    let before_now = text
        .get(..3)
        .filter(|p| p.eq_ignore_ascii_case("now"))
        .map(|_| text[3..].trim_start());
    let ago = match before_now {
        Some(rest) if rest.starts_with('+') => {
            return Err(format!(
                "{text:?}: relative times count back from now ({RELATIVE_FORMS}); write a later time in RFC 3339"
            ))
        }
        Some(rest) => match rest.strip_prefix('-') {
            Some(duration) => duration.trim(),
            None => return Ok(None),
        },
        None => {
            let split = text.len().checked_sub(3).filter(|&i| text.is_char_boundary(i));
            match split.map(|i| text.split_at(i)) {
                Some((duration, word))
                    if word.eq_ignore_ascii_case("ago")
                        && duration.ends_with(char::is_whitespace) =>
                {
                    duration.trim()
                }
                _ => return Ok(None),
            }
        }
    };
    let duration = humantime::parse_duration(ago).map_err(|e| {
        format!("{text:?}: {ago:?} is not a duration ({e}); write e.g. now-1h, now-90m, now-2h30m, now-7d or 2h ago")
    })?;
    i64::try_from(duration.as_millis())
        .ok()
        .and_then(|ms| now.checked_sub(ms))
        .filter(|&at| at >= EARLIEST_MS)
        .map(Some)
        .ok_or_else(|| {
            format!(
                "{text:?} reaches back before 0000-01-01T00:00:00Z, the earliest time Rewind writes"
            )
        })
}

/// `s` made absolute: a relative time resolved against `now` and written in RFC 3339, anything
/// else checked as the time parser of restores and `find` reads it
/// ([`parse_time`]) and returned as it was. The flag says whether `s` was
/// relative.
pub fn absolute(s: &str, open: &str, now: i64) -> Result<(String, bool), String> {
    if let Some(at) = relative(s, now)? {
        return Ok((rfc3339_millis(at), true));
    }
    match parse_time(s, open) {
        Ok(_) => Ok((s.trim().to_string(), false)),
        // A number is judged there (epoch seconds are refused with the fix); text that is no time
        // at all is told every form it may take.
        Err(e) if s.trim().parse::<i64>().is_ok() => Err(e),
        Err(_) => Err(format!(
            "{:?} is not a time: use RFC 3339 such as 2026-11-23T10:00:00Z, epoch milliseconds, {RELATIVE_FORMS}, or {open}",
            s.trim()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::time::parse_rfc3339_millis;

    fn at(s: &str) -> i64 {
        parse_rfc3339_millis(s).unwrap()
    }

    #[test]
    fn relative_forms_count_back_from_one_now() {
        let now = at("2026-12-03T05:42:17.250Z");
        for (given, expected) in [
            ("now", "2026-12-03T05:42:17.250Z"),
            (" NOW ", "2026-12-03T05:42:17.250Z"),
            ("now-0s", "2026-12-03T05:42:17.250Z"),
            ("now-1h", "2026-12-03T04:42:17.250Z"),
            ("Now - 90m", "2026-12-03T04:12:17.250Z"),
            ("now-2h30m", "2026-12-03T03:12:17.250Z"),
            ("now-2h 30m", "2026-12-03T03:12:17.250Z"),
            ("now-7d", "2026-11-26T05:42:17.250Z"),
            ("now-1ms", "2026-12-03T05:42:17.249Z"),
            ("2h ago", "2026-12-03T03:42:17.250Z"),
            ("  2h   AGO ", "2026-12-03T03:42:17.250Z"),
            ("1day ago", "2026-12-02T05:42:17.250Z"),
            ("today", "2026-12-03T00:00:00.000Z"),
            ("Yesterday", "2026-12-02T00:00:00.000Z"),
        ] {
            assert_eq!(
                relative(given, now),
                Ok(Some(at(expected))),
                "{given:?} should be {expected}"
            );
        }
        // Days start at 00:00 UTC, also before 1970 and at midnight itself.
        let before_1970 = at("1969-07-20T20:17:40Z");
        assert_eq!(
            relative("today", before_1970),
            Ok(Some(at("1969-07-20T00:00:00Z")))
        );
        assert_eq!(
            relative("yesterday", at("2026-01-01T00:00:00Z")),
            Ok(Some(at("2025-12-31T00:00:00Z")))
        );
        // A result before 1970 is a negative time like any other.
        assert_eq!(
            relative("now-60d", at("1970-01-31T00:00:00Z")),
            Ok(Some(at("1969-12-02T00:00:00Z")))
        );
    }

    #[test]
    fn what_is_not_relative_is_left_to_the_absolute_parser() {
        for text in [
            "2026-11-23T10:00:00Z",
            "1732356000000",
            "-5000",
            "earliest",
            "latest",
            "nowhere",
            "2h",
            "chicago",
            "",
        ] {
            assert_eq!(relative(text, 0), Ok(None), "{text:?}");
        }
    }

    #[test]
    fn broken_relative_times_are_clear_errors_not_panics() {
        let now = at("2026-12-03T05:00:00Z");
        for (given, says) in [
            ("now-", "is not a duration"),
            ("now-1x", "is not a duration"),
            ("now - soon", "is not a duration"),
            ("two hours ago", "is not a duration"),
            ("now+1h", "count back from now"),
            ("now-999999999d", "before 0000-01-01"),
            ("now-99999999999999999999d", "is not a duration"),
            ("now-584942417y", "before 0000-01-01"),
            ("10000y ago", "before 0000-01-01"),
        ] {
            let error = relative(given, now).unwrap_err();
            assert!(error.contains(says), "{given:?}: {error}");
            assert!(error.contains(given.trim()), "{given:?}: {error}");
        }
        // The earliest time that can be written is still reachable.
        assert_eq!(
            relative("now-1d", EARLIEST_MS + DAY_MS),
            Ok(Some(EARLIEST_MS))
        );
    }

    #[test]
    fn absolute_resolves_relative_times_and_checks_the_rest() {
        let now = at("2026-12-03T05:00:00Z");
        assert_eq!(
            absolute("now-1h", "earliest", now),
            Ok(("2026-12-03T04:00:00.000Z".to_string(), true))
        );
        assert_eq!(
            absolute(" 2026-11-23T10:00:00Z ", "earliest", now),
            Ok(("2026-11-23T10:00:00Z".to_string(), false))
        );
        assert_eq!(
            absolute("latest", "latest", now),
            Ok(("latest".to_string(), false))
        );
        // Epoch seconds keep their own refusal, which names the fix.
        let seconds = absolute("1732356000", "earliest", now).unwrap_err();
        assert!(seconds.contains("epoch seconds"), "{seconds}");
        let nonsense = absolute("last tuesday", "latest", now).unwrap_err();
        assert!(
            nonsense.contains("now-1h") && nonsense.contains("latest"),
            "{nonsense}"
        );
    }
}

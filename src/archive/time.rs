//! UTC time buckets of the archive: a data file lives under the `date=YYYY-MM-DD/hour=HH` folder of
//! its first record's timestamp, and every record in it is earlier than the end of that hour.
//! Calendar arithmetic is done here, on integers, so paths never depend on a time-zone database.
//!
//! Rewind keeps this calendar code (and the RFC 3339 printing and parsing built on it) rather than
//! a time crate's: it defines the archive's folder names for every 64-bit millisecond, including
//! the far-future and far-past timestamps a topic may carry, where the time crates' RFC 3339
//! support ends at four-digit (or six-digit) years and would fail, or clamp differently from the
//! buckets. Its properties are proptested below against a civil-date round trip.
//!
//! Any 64-bit timestamp has a bucket: the first bucket (`0000-01-01`, hour `00`) also holds every
//! earlier instant and the last (`9999-12-31`, hour `23`) every later one, so folder names always
//! have four-digit years that readers parse, and the bucket rule still holds because a bucket's
//! [`HourBucket::start_millis`] and [`HourBucket::end_millis`] reach to the ends of time there.

use std::fmt;

const MILLIS_PER_HOUR: i64 = 3_600_000;

/// One UTC hour, counted from the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HourBucket(pub i64);

/// The first bucket, 0000-01-01T00: it also holds every earlier instant.
pub const FIRST_BUCKET: HourBucket = HourBucket(-62_167_219_200_000 / MILLIS_PER_HOUR);
/// The last bucket, 9999-12-31T23: it also holds every later instant.
pub const LAST_BUCKET: HourBucket = HourBucket(253_402_300_799_999 / MILLIS_PER_HOUR);

impl HourBucket {
    /// The bucket of `millis` (milliseconds since the epoch; negative values are before 1970):
    /// the UTC hour that contains it, or the first or last bucket for instants outside years
    /// 0000–9999.
    pub fn of_millis(millis: i64) -> HourBucket {
        HourBucket(millis.div_euclid(MILLIS_PER_HOUR)).clamp(FIRST_BUCKET, LAST_BUCKET)
    }

    /// First millisecond of the bucket (`i64::MIN` for the first bucket).
    pub fn start_millis(self) -> i64 {
        if self <= FIRST_BUCKET {
            return i64::MIN;
        }
        self.0.saturating_mul(MILLIS_PER_HOUR)
    }

    /// First millisecond after the bucket (`i64::MAX` for the last bucket, which has none).
    pub fn end_millis(self) -> i64 {
        if self >= LAST_BUCKET {
            return i64::MAX;
        }
        self.0.saturating_add(1).saturating_mul(MILLIS_PER_HOUR)
    }

    /// `(year, month, day, hour)` in UTC.
    pub fn civil(self) -> (i64, u32, u32, u32) {
        let days = self.0.div_euclid(24);
        let hour = self.0.rem_euclid(24) as u32;
        let (y, m, d) = civil_from_days(days);
        (y, m, d, hour)
    }

    /// The bucket of a UTC calendar hour; `None` for an impossible date.
    pub fn from_civil(year: i64, month: u32, day: u32, hour: u32) -> Option<HourBucket> {
        if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) || hour > 23 {
            return None;
        }
        Some(HourBucket(
            days_from_civil(year, month, day) * 24 + i64::from(hour),
        ))
    }

    /// `YYYY-MM-DD`, the value of the `date=` path folder.
    pub fn date(self) -> String {
        let (y, m, d, _) = self.civil();
        format!("{y:04}-{m:02}-{d:02}")
    }

    /// `HH`, the value of the `hour=` path folder.
    pub fn hour(self) -> String {
        format!("{:02}", self.civil().3)
    }
}

impl fmt::Display for HourBucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}T{}", self.date(), self.hour())
    }
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `2026-11-23T10:15:00.123Z` for milliseconds since the epoch.
pub fn rfc3339_millis(millis: i64) -> String {
    // The calendar hour itself, not the archive's bucket: instants beyond year 9999 print as such.
    let bucket = HourBucket(millis.div_euclid(MILLIS_PER_HOUR));
    let within = millis.rem_euclid(MILLIS_PER_HOUR);
    format!(
        "{}T{}:{:02}:{:02}.{:03}Z",
        bucket.date(),
        bucket.hour(),
        within / 60_000,
        within % 60_000 / 1000,
        within % 1000
    )
}

/// Parse an RFC 3339 UTC time (`2026-11-23T10:15:00Z`, optional fraction, `Z` or `+00:00`-style
/// offsets) into milliseconds since the epoch.
pub fn parse_rfc3339_millis(s: &str) -> Option<i64> {
    let s = s.trim();
    let (date, rest) = s.split_once(['T', 't', ' '])?;
    let mut d = date.splitn(3, '-');
    let (y, m, day) = (
        d.next()?.parse::<i64>().ok()?,
        d.next()?.parse::<u32>().ok()?,
        d.next()?.parse::<u32>().ok()?,
    );
    let (clock, offset_secs) = if let Some(c) = rest.strip_suffix(['Z', 'z']) {
        (c, 0i64)
    } else {
        let i = rest.rfind(['+', '-'])?;
        let (c, off) = rest.split_at(i);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let (oh, om) = off[1..].split_once(':')?;
        (
            c,
            sign * (oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().ok()? * 60),
        )
    };
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
    let mut t = hms.splitn(3, ':');
    let (h, min, sec) = (
        t.next()?.parse::<u32>().ok()?,
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    if !(0..60).contains(&min)
        || !(0..61).contains(&sec)
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let millis_frac = format!("{frac:0<3}")[..3].parse::<i64>().ok()?;
    let hour = HourBucket::from_civil(y, m, day, h)?;
    Some(hour.0 * MILLIS_PER_HOUR + min * 60_000 + sec * 1000 + millis_frac - offset_secs * 1000)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(y) => 29,
        _ => 28,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn known_instants_land_in_the_right_folder() {
        // 2026-11-23T10:15:00Z
        let b = HourBucket::of_millis(1_795_428_900_000);
        assert_eq!(
            (b.date(), b.hour()),
            ("2026-11-23".to_string(), "10".to_string())
        );
        assert_eq!(HourBucket::of_millis(0).to_string(), "1970-01-01T00");
        assert_eq!(HourBucket::of_millis(-1).to_string(), "1969-12-31T23");
        assert_eq!(HourBucket::of_millis(951_782_400_000).date(), "2000-02-29");
        assert_eq!(
            HourBucket::from_civil(2024, 2, 29, 23).unwrap().date(),
            "2024-02-29"
        );
        assert!(HourBucket::from_civil(2023, 2, 29, 0).is_none());
        assert!(HourBucket::from_civil(2023, 1, 1, 24).is_none());
        // Microseconds taken for milliseconds (year ~55,000), and the ends of time.
        assert_eq!(
            HourBucket::of_millis(1_700_000_000_000_000).to_string(),
            "9999-12-31T23"
        );
        assert_eq!(HourBucket::of_millis(i64::MAX).to_string(), "9999-12-31T23");
        assert_eq!(HourBucket::of_millis(i64::MIN).to_string(), "0000-01-01T00");
        assert_eq!(
            HourBucket::of_millis(-62_167_219_200_000).to_string(),
            "0000-01-01T00"
        );
        assert_eq!(
            HourBucket::of_millis(253_402_300_799_999).to_string(),
            "9999-12-31T23"
        );
        assert_eq!(FIRST_BUCKET.start_millis(), i64::MIN);
        assert_eq!(LAST_BUCKET.end_millis(), i64::MAX);
        assert_eq!(rfc3339_millis(1_700_000_000_000_000).len(), 25);
    }

    #[test]
    fn rfc3339_round_trips() {
        assert_eq!(
            rfc3339_millis(1_795_428_900_123),
            "2026-11-23T10:15:00.123Z"
        );
        assert_eq!(
            parse_rfc3339_millis("2026-11-23T10:15:00.123Z"),
            Some(1_795_428_900_123)
        );
        assert_eq!(
            parse_rfc3339_millis("2026-11-23T10:15:00Z"),
            Some(1_795_428_900_000)
        );
        assert_eq!(
            parse_rfc3339_millis("2026-11-23T11:15:00+01:00"),
            Some(1_795_428_900_000)
        );
        assert_eq!(
            parse_rfc3339_millis("2026-11-23T10:15:00.5Z"),
            Some(1_795_428_900_500)
        );
        for bad in [
            "2026-11-23",
            "2026-13-01T00:00:00Z",
            "2026-11-23T10:61:00Z",
            "yesterday",
        ] {
            assert_eq!(parse_rfc3339_millis(bad), None, "{bad}");
        }
    }

    proptest! {
        #[test]
        fn rfc3339_text_reads_back(millis in -5_000_000_000_000i64..50_000_000_000_000) {
            prop_assert_eq!(parse_rfc3339_millis(&rfc3339_millis(millis)), Some(millis));
        }

        #[test]
        fn a_bucket_contains_its_instants(millis in -10_000_000_000_000i64..50_000_000_000_000) {
            let b = HourBucket::of_millis(millis);
            prop_assert!(b.start_millis() <= millis && millis < b.end_millis());
            let (y, m, d, h) = b.civil();
            prop_assert_eq!(HourBucket::from_civil(y, m, d, h), Some(b));
        }

        #[test]
        fn every_timestamp_has_a_bucket_readers_parse_that_keeps_the_rule(millis in any::<i64>(), other in any::<i64>()) {
            let b = HourBucket::of_millis(millis);
            prop_assert!((b.start_millis() <= millis && millis < b.end_millis()) || (b == LAST_BUCKET && millis == i64::MAX));
            prop_assert_eq!(b.date().len(), 10);
            let (y, m, d, h) = b.civil();
            prop_assert_eq!(HourBucket::from_civil(y, m, d, h), Some(b));
            // Buckets order like time, so a later bucket's first record is later than any earlier bucket's records.
            let c = HourBucket::of_millis(other);
            if b < c {
                prop_assert!(millis < other);
            }
        }

        #[test]
        fn folder_names_sort_like_time(a in 0i64..4_000_000_000_000, b in 0i64..4_000_000_000_000) {
            let (x, y) = (HourBucket::of_millis(a), HourBucket::of_millis(b));
            prop_assert_eq!((x.date(), x.hour()).cmp(&(y.date(), y.hour())), x.cmp(&y));
        }
    }
}

//! Human-readable durations (`60s`, `5m`, `1h 30m`) and sizes (`128MiB`, `1GB`, `4096`) in
//! configuration, with errors that show an example of what is expected.

use std::fmt;
use std::time::Duration;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// A size in bytes, written as `128MiB`, `64 KiB`, `1GB` or a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

impl Size {
    pub const fn mib(n: u64) -> Size {
        Size(n * 1024 * 1024)
    }

    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 4] = [
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
            ("B", 1),
        ];
        // Print the largest unit that divides exactly, so the value reads back unchanged.
        let (unit, factor) = UNITS
            .iter()
            .find(|(_, f)| self.0.is_multiple_of(*f) && self.0 >= *f)
            .copied()
            .unwrap_or(("B", 1));
        write!(f, "{}{unit}", self.0 / factor)
    }
}

impl std::str::FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Size, String> {
        s.trim()
            .parse::<bytesize::ByteSize>()
            .map(|b| Size(b.as_u64()))
            .map_err(|_| format!("expected a size such as 128MiB, 64KiB or 1GB, got {s:?}"))
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        ser.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Size, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as 128MiB")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
                Ok(Size(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v)
                    .map(Size)
                    .map_err(|_| E::custom(format!("expected a size such as 128MiB, got {v}")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
                v.parse().map_err(E::custom)
            }
        }
        de.deserialize_any(V)
    }
}

/// Serde for `std::time::Duration` as `60s`, `500ms`, `5m`, `1h 30m`.
pub mod duration {
    use super::*;

    pub fn parse(s: &str) -> Result<Duration, String> {
        humantime::parse_duration(s.trim())
            .map_err(|_| format!("expected a duration such as 60s, 500ms or 5m, got {s:?}"))
    }

    pub fn serialize<S: Serializer>(d: &Duration, ser: S) -> Result<S::Ok, S::Error> {
        ser.collect_str(&humantime::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 60s")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                parse(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
                Err(E::custom(format!("expected a duration with a unit such as \"{v}s\" or \"{v}ms\", got the bare number {v}")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
                Err(E::custom(format!(
                    "expected a duration with a unit such as \"{v}s\", got the bare number {v}"
                )))
            }
        }
        de.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_binary_and_decimal_units() {
        assert_eq!("128MiB".parse::<Size>().unwrap(), Size(128 << 20));
        assert_eq!("64 KiB".parse::<Size>().unwrap(), Size(64 << 10));
        assert_eq!("1GB".parse::<Size>().unwrap(), Size(1_000_000_000));
        assert_eq!("4096".parse::<Size>().unwrap(), Size(4096));
        assert!("lots"
            .parse::<Size>()
            .unwrap_err()
            .contains("expected a size such as 128MiB"));
    }

    #[test]
    fn sizes_print_back_exactly() {
        for s in [
            Size(256 << 20),
            Size(5 << 30),
            Size(1000),
            Size(0),
            Size(1536),
        ] {
            assert_eq!(s.to_string().parse::<Size>().unwrap(), s, "{s}");
        }
        assert_eq!(Size(256 << 20).to_string(), "256MiB");
    }

    #[test]
    fn durations_parse_and_print_back() {
        for (text, d) in [
            ("60s", Duration::from_secs(60)),
            ("500ms", Duration::from_millis(500)),
            ("1h 30m", Duration::from_secs(5400)),
        ] {
            let parsed = duration::parse(text).unwrap();
            assert_eq!(parsed, d);
            assert_eq!(
                duration::parse(&humantime::format_duration(parsed).to_string()).unwrap(),
                d
            );
        }
        assert!(duration::parse("soon")
            .unwrap_err()
            .contains("expected a duration such as 60s"));
    }
}

//! Values that carry their unit in the config file: sizes ("25MiB") and durations ("5m").
//!
//! Exposure: operator-written text. Every parse error names what was expected, and the TOML
//! layer adds the key and line.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A size in bytes, written as an integer or with a binary/decimal unit: `512`, `64KiB`,
/// `25MiB`, `1GiB`, `10kB`, `1MB`. Plain `K`/`M`/`G` mean the binary units, as in Postfix
/// and most operators' habits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const KIB: u64 = 1024;
    pub const MIB: u64 = 1024 * 1024;
    pub const GIB: u64 = 1024 * 1024 * 1024;

    pub const fn mib(n: u64) -> Self {
        ByteSize(n * Self::MIB)
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: u64 = number
            .parse()
            .map_err(|_| format!("`{text}` is not a size (expected e.g. 512, 64KiB, 25MiB)"))?;
        let multiplier = match unit.trim() {
            "" | "B" => 1,
            "K" | "KiB" | "k" => Self::KIB,
            "M" | "MiB" => Self::MIB,
            "G" | "GiB" => Self::GIB,
            "kB" | "KB" => 1000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            other => {
                return Err(format!(
                    "unknown size unit `{other}` in `{text}` (use B, KiB, MiB, GiB, kB, MB, GB)"
                ))
            }
        };
        number
            .checked_mul(multiplier)
            .map(ByteSize)
            .ok_or_else(|| format!("size `{text}` is too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, size) in [("GiB", Self::GIB), ("MiB", Self::MIB), ("KiB", Self::KIB)] {
            if n >= size && n.is_multiple_of(size) {
                return write!(f, "{}{unit}", n / size);
            }
        }
        write!(f, "{n}B")
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as 512, \"64KiB\" or \"25MiB\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A duration written with a unit: `0`, `250ms`, `30s`, `5m`, `2h`, `5d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Interval(pub Duration);

impl Interval {
    pub const fn secs(n: u64) -> Self {
        Interval(Duration::from_secs(n))
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text == "0" {
            return Ok(Interval(Duration::ZERO));
        }
        humantime::parse_duration(text)
            .map(Interval)
            .map_err(|e| format!("`{text}` is not a duration ({e}); write e.g. 250ms, 30s, 5m, 2h"))
    }
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_zero() {
            return f.write_str("0s");
        }
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for Interval {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Interval {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Interval;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as \"250ms\", \"30s\" or \"5m\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Interval, E> {
                if v == 0 {
                    Ok(Interval(Duration::ZERO))
                } else {
                    Err(E::custom(format!(
                        "a duration needs a unit: write \"{v}s\" or \"{v}ms\""
                    )))
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Interval, E> {
                Interval::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        let cases = [
            ("512", 512),
            ("0", 0),
            ("64KiB", 64 * 1024),
            ("25MiB", 25 * 1024 * 1024),
            ("1GiB", 1 << 30),
            ("10kB", 10_000),
            ("2MB", 2_000_000),
            ("3M", 3 << 20),
            (" 7 MiB ", 7 << 20),
        ];
        for (text, bytes) in cases {
            assert_eq!(ByteSize::parse(text), Ok(ByteSize(bytes)), "{text}");
        }
    }

    #[test]
    fn sizes_reject_garbage() {
        for text in [
            "",
            "MiB",
            "12 parsecs",
            "-1",
            "99999999999999999999GiB",
            "1.5MiB",
        ] {
            assert!(ByteSize::parse(text).is_err(), "{text} should be rejected");
        }
    }

    #[test]
    fn sizes_display_round_trips() {
        for bytes in [0, 1, 1023, 1024, 1536, 25 << 20, 3 << 30] {
            let shown = ByteSize(bytes).to_string();
            assert_eq!(ByteSize::parse(&shown), Ok(ByteSize(bytes)), "{shown}");
        }
    }

    #[test]
    fn intervals_parse_and_round_trip() {
        assert_eq!(Interval::parse("5m"), Ok(Interval::secs(300)));
        assert_eq!(Interval::parse("0"), Ok(Interval(Duration::ZERO)));
        assert_eq!(
            Interval::parse("250ms"),
            Ok(Interval(Duration::from_millis(250)))
        );
        for d in [
            Interval::secs(0),
            Interval::secs(90),
            Interval(Duration::from_millis(5)),
        ] {
            assert_eq!(Interval::parse(&d.to_string()), Ok(d));
        }
        assert!(Interval::parse("5 fortnights please").is_err());
        assert!(Interval::parse("").is_err());
    }
}

//! Identifiers that come from the platform: GUIDs, cell ids and time-to-live values.
//!
//! Each is built by `FromStr`, so a malformed value is refused where it enters.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Why an identifier or duration did not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    #[error("GUID is empty")]
    EmptyGuid,
    #[error("{0:?} is not a GUID (expected 8-4-4-4-12 hexadecimal digits)")]
    BadGuid(String),
    #[error("cell id {0:?} must be 1-128 characters of letters, digits, '.', '-' or '_'")]
    BadCellId(String),
    #[error(
        "{0:?} is not a duration (expected a number followed by s, m, h, d or y, e.g. \"1h\")"
    )]
    BadDuration(String),
    #[error("duration {0:?} must be greater than zero")]
    ZeroDuration(String),
}

/// A Cloud Foundry GUID (app, space, org or instance), stored lowercase. Held inline, not on
/// the heap: sets of a hundred thousand policies compare and copy them without chasing a
/// pointer for each.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Guid([u8; 36]);

impl Guid {
    /// The canonical lowercase form.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("a GUID is ASCII")
    }
}

impl FromStr for Guid {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        if s.is_empty() {
            return Err(Error::EmptyGuid);
        }
        let bytes = s.as_bytes();
        let dash = |i: usize| matches!(i, 8 | 13 | 18 | 23);
        let ok = bytes.len() == 36
            && bytes.iter().enumerate().all(|(i, b)| {
                if dash(i) {
                    *b == b'-'
                } else {
                    b.is_ascii_hexdigit()
                }
            });
        if !ok {
            return Err(Error::BadGuid(s.to_string()));
        }
        let mut guid = [0u8; 36];
        for (to, from) in guid.iter_mut().zip(bytes) {
            *to = from.to_ascii_lowercase();
        }
        Ok(Guid(guid))
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Guid").field(&self.as_str()).finish()
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The id of a Diego cell (or any host running an agent).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CellId(String);

impl CellId {
    /// The id as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for CellId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let ok = (1..=128).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !ok {
            return Err(Error::BadCellId(s.to_string()));
        }
        Ok(CellId(s.to_string()))
    }
}

impl fmt::Display for CellId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A positive duration written as `<n><unit>` with unit s, m, h, d or y (365 days).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ttl(Duration);

impl Ttl {
    /// A TTL of whole seconds; zero is not a TTL.
    pub fn from_secs(secs: u64) -> Option<Ttl> {
        (secs > 0).then(|| Ttl(Duration::from_secs(secs)))
    }

    /// The duration.
    pub fn duration(self) -> Duration {
        self.0
    }

    /// Whole seconds.
    pub fn as_secs(self) -> u64 {
        self.0.as_secs()
    }
}

impl FromStr for Ttl {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || Error::BadDuration(s.to_string());
        let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (number, unit) = s.split_at(split);
        let n: u64 = number.parse().map_err(|_| bad())?;
        let unit_secs = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            "y" => 365 * 86_400,
            _ => return Err(bad()),
        };
        let secs = n.checked_mul(unit_secs).ok_or_else(bad)?;
        Ttl::from_secs(secs).ok_or_else(|| Error::ZeroDuration(s.to_string()))
    }
}

impl fmt::Display for Ttl {
    /// Prints the largest unit that divides the value exactly, so `"90m"` prints as `"90m"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.as_secs();
        for (unit, size) in [("y", 365 * 86_400), ("d", 86_400), ("h", 3600), ("m", 60)] {
            if secs % size == 0 {
                return write!(f, "{}{unit}", secs / size);
            }
        }
        write!(f, "{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_are_checked_and_lowercased() {
        let g: Guid = "0A1B2C3D-0000-4000-8000-00000000000F".parse().unwrap();
        assert_eq!(g.as_str(), "0a1b2c3d-0000-4000-8000-00000000000f");
        for bad in [
            "",
            "xyz",
            "0a1b2c3d-0000-4000-8000-00000000000",
            "0a1b2c3d00004000800000000000000f",
        ] {
            assert!(bad.parse::<Guid>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn ttls_round_trip() {
        for (text, secs) in [("1h", 3600), ("90m", 5400), ("7d", 604_800), ("45s", 45)] {
            let ttl: Ttl = text.parse().unwrap();
            assert_eq!(ttl.as_secs(), secs);
            assert_eq!(ttl.to_string(), text);
        }
        for bad in ["", "h", "1", "1w", "-1h", "0s", "99999999999999999999y"] {
            assert!(bad.parse::<Ttl>().is_err(), "{bad:?} accepted");
        }
    }
}

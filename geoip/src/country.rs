//! The ISO 3166-1 alpha-2 country code a lookup returns: two uppercase ASCII letters, `Copy`,
//! so the router can use it as a map key and a metric label without allocating.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Error;

/// An ISO 3166-1 alpha-2 country code such as `DE`, always uppercase.
///
/// Two bytes instead of a `String` so a lookup on the upgrade path never allocates.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Country([u8; 2]);

impl Country {
    /// Parses two ASCII letters in any case; `None` for anything else, because databases
    /// carry odd values (empty strings, numeric codes) that must read as "no country".
    pub fn new(code: &str) -> Option<Self> {
        match code.as_bytes() {
            [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
                Some(Self([a.to_ascii_uppercase(), b.to_ascii_uppercase()]))
            }
            _ => None,
        }
    }

    /// The code as text, for logs, metric labels and JSON.
    pub fn as_str(&self) -> &str {
        // Both bytes are ASCII letters by construction, so this never takes the fallback.
        std::str::from_utf8(&self.0).unwrap_or("??")
    }
}

impl fmt::Display for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Country({})", self.as_str())
    }
}

impl FromStr for Country {
    type Err = Error;

    /// Strict parse for configuration (the router's `pools` keys): an error names the value.
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::new(s).ok_or_else(|| Error::Country(s.to_owned()))
    }
}

impl Serialize for Country {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Country {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let code = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        code.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_uppercases_two_letters() {
        assert_eq!(Country::new("de").map(|c| c.to_string()), Some("DE".to_owned()));
        assert_eq!(Country::new("Us").unwrap().as_str(), "US");
        for bad in ["", "D", "DEU", "1A", "é", "D-"] {
            assert_eq!(Country::new(bad), None, "{bad:?}");
        }
        let err = "DEU".parse::<Country>().unwrap_err().to_string();
        assert!(err.contains("\"DEU\""), "{err}");
    }

    #[test]
    fn serde_round_trips_as_a_string() {
        let de = Country::new("DE").unwrap();
        assert_eq!(serde_json::to_string(&de).unwrap(), "\"DE\"");
        assert_eq!(serde_json::from_str::<Country>("\"fr\"").unwrap().as_str(), "FR");
        assert!(serde_json::from_str::<Country>("\"FRA\"").is_err());
    }
}

//! Replica names: what `/add` accepts, what `/rep` lists, what a replica reports.

use std::fmt;
use std::str::FromStr;

/// A validated replica name: 1–63 characters of `[A-Za-z0-9_-]`, starting with a
/// letter or digit. Validation happens once, here, so a name can never carry
/// anything a shell, a URL or a Kubernetes label would misread.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct ReplicaName(String);

/// Why a string is not a valid replica name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("a replica name cannot be empty")]
    Empty,
    #[error("a replica name has at most 63 characters, this one has {0}")]
    TooLong(usize),
    #[error("a replica name must start with a letter or digit")]
    BadStart,
    #[error("a replica name may contain only letters, digits, '_' and '-'")]
    BadCharacter,
}

pub const MAX_NAME_LEN: usize = 63;

impl ReplicaName {
    pub fn parse(name: &str) -> Result<Self, NameError> {
        let first = name.chars().next().ok_or(NameError::Empty)?;
        if !first.is_ascii_alphanumeric() {
            return Err(NameError::BadStart);
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(NameError::BadCharacter);
        }
        // Only ASCII is left, so bytes are characters.
        if name.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong(name.len()));
        }
        Ok(Self(name.to_owned()))
    }

    /// `Server<n>`: the names of initial replicas and of replicas added without a name.
    pub fn server(n: u64) -> Self {
        Self(format!("Server{n}"))
    }

    /// `emergency_<n>`: the name of a replacement for a failed replica.
    pub fn emergency(n: u64) -> Self {
        Self(format!("emergency_{n}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ReplicaName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ReplicaName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl AsRef<str> for ReplicaName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl<'de> serde::Deserialize<'de> for ReplicaName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_contract_names() {
        for ok in [
            "Server1",
            "emergency_58",
            "a",
            "9lives",
            "web-01",
            &"x".repeat(63),
        ] {
            assert_eq!(ReplicaName::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_names_outside_the_contract() {
        assert_eq!(ReplicaName::parse(""), Err(NameError::Empty));
        assert_eq!(
            ReplicaName::parse(&"x".repeat(64)),
            Err(NameError::TooLong(64))
        );
        assert_eq!(ReplicaName::parse("_x"), Err(NameError::BadStart));
        assert_eq!(ReplicaName::parse("-x"), Err(NameError::BadStart));
        assert_eq!(ReplicaName::parse("$(x)"), Err(NameError::BadStart));
        for bad in ["a b", "a;rm -rf /", "a/b", "a.b", "x$(x)", "Séver"] {
            assert_eq!(
                ReplicaName::parse(bad),
                Err(NameError::BadCharacter),
                "{bad}"
            );
        }
    }

    #[test]
    fn generated_names_are_valid() {
        assert!(ReplicaName::parse(ReplicaName::server(12).as_str()).is_ok());
        assert!(ReplicaName::parse(ReplicaName::emergency(58).as_str()).is_ok());
    }
}

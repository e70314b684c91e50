//! Identifiers: server names, usernames, user ids, room names, aliases and
//! room ids. Each is a newtype that can only hold a syntactically valid,
//! already folded value, so code past the wire never re-validates.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::limits::{ROOM_NAME_MAX, USERNAME_MAX};

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("usernames are 1-{USERNAME_MAX} characters of a-z 0-9 . _ -")]
    Username,
    #[error("room names are 1-{ROOM_NAME_MAX} characters of a-z 0-9 . _ -")]
    RoomName,
    #[error("server names are host[:port]")]
    ServerName,
    #[error("user ids look like @name:server")]
    UserId,
    #[error("room aliases look like #name:server")]
    RoomAlias,
    #[error("room ids look like !opaque:server")]
    RoomId,
}

fn is_name_char(c: char) -> bool {
    matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '-')
}

/// Folds to lower case and checks the shared name alphabet. Only ASCII is
/// folded: anything else is refused rather than guessed at, so two
/// different-looking names can never become one account.
fn fold_name(raw: &str, max: usize) -> Option<String> {
    let folded = raw.to_ascii_lowercase();
    let ok = !folded.is_empty() && folded.len() <= max && folded.chars().all(is_name_char);
    ok.then_some(folded)
}

macro_rules! string_newtype {
    ($name:ident, $parse:path, $schema_name:literal, $pattern:literal, $desc:literal) => {
        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                $parse(s)
            }
        }
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <Cow<'de, str>>::deserialize(d)?;
                $parse(&s).map_err(serde::de::Error::custom)
            }
        }
        impl JsonSchema for $name {
            fn schema_name() -> Cow<'static, str> {
                $schema_name.into()
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!({ "type": "string", "pattern": $pattern, "description": $desc })
            }
        }
    };
}

/// `host[:port]`: a DNS name, IPv4 address or bracketed IPv6 address,
/// optionally with a port. Stored in lower case.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerName(String);

impl ServerName {
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        let s = raw.to_ascii_lowercase();
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let end = rest.find(']').ok_or(IdError::ServerName)?;
            let inner = &rest[..end];
            if inner.is_empty() || !inner.chars().all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.') {
                return Err(IdError::ServerName);
            }
            (&s[..end + 2], &rest[end + 1..])
        } else {
            match s.find(':') {
                Some(i) => (&s[..i], &s[i..]),
                None => (&s[..], ""),
            }
        };
        if !host.starts_with('[') {
            let labels_ok = !host.is_empty()
                && host.len() <= 253
                && host.split('.').all(|l| {
                    !l.is_empty() && l.len() <= 63 && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                });
            if !labels_ok {
                return Err(IdError::ServerName);
            }
        }
        if let Some(p) = port.strip_prefix(':') {
            let ok = !p.is_empty()
                && p.len() <= 5
                && p.chars().all(|c| c.is_ascii_digit())
                && p.parse::<u16>().is_ok_and(|n| n > 0);
            if !ok {
                return Err(IdError::ServerName);
            }
        } else if !port.is_empty() {
            return Err(IdError::ServerName);
        }
        Ok(Self(s))
    }
}
string_newtype!(
    ServerName,
    ServerName::parse,
    "ServerName",
    r"^(\[[0-9a-f:.]+\]|[a-z0-9-]+(\.[a-z0-9-]+)*)(:[0-9]{1,5})?$",
    "A server name: host[:port]."
);

/// A local account name: 1-32 characters of `a-z 0-9 . _ -` after folding
/// ASCII to lower case (`Ann` and `ann` are one account).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Username(String);

impl Username {
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        fold_name(raw, USERNAME_MAX).map(Self).ok_or(IdError::Username)
    }
}
string_newtype!(
    Username,
    Username::parse,
    "Username",
    r"^[A-Za-z0-9._-]{1,32}$",
    "A username; folded to lower case by the server."
);

/// A room name: 1-64 characters of `a-z 0-9 . _ -` after folding.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomName(String);

impl RoomName {
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        fold_name(raw, ROOM_NAME_MAX).map(Self).ok_or(IdError::RoomName)
    }
}
string_newtype!(
    RoomName,
    RoomName::parse,
    "RoomName",
    r"^[A-Za-z0-9._-]{1,64}$",
    "A bare room name; folded to lower case by the server."
);

fn split_sigil(raw: &str, sigil: char) -> Option<(&str, &str)> {
    raw.strip_prefix(sigil)?.split_once(':')
}

/// `@name:server`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(String);

impl UserId {
    pub fn new(name: &Username, server: &ServerName) -> Self {
        Self(format!("@{name}:{server}"))
    }
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        let (local, server) = split_sigil(raw, '@').ok_or(IdError::UserId)?;
        let name = Username::parse(local).map_err(|_| IdError::UserId)?;
        if name.as_str() != local {
            return Err(IdError::UserId);
        }
        let server = ServerName::parse(server).map_err(|_| IdError::UserId)?;
        Ok(Self::new(&name, &server))
    }
    pub fn localpart(&self) -> &str {
        &self.0[1..self.0.find(':').unwrap_or(self.0.len())]
    }
    pub fn server(&self) -> &str {
        &self.0[self.0.find(':').map_or(self.0.len(), |i| i + 1)..]
    }
}
string_newtype!(
    UserId,
    UserId::parse,
    "UserId",
    r"^@[a-z0-9._-]{1,32}:(\[[0-9a-f:.]+\]|[a-z0-9-]+(\.[a-z0-9-]+)*)(:[0-9]{1,5})?$",
    "A user id: @name:server."
);

/// `#name:server`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomAlias(String);

impl RoomAlias {
    pub fn new(name: &RoomName, server: &ServerName) -> Self {
        Self(format!("#{name}:{server}"))
    }
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        let (local, server) = split_sigil(raw, '#').ok_or(IdError::RoomAlias)?;
        let name = RoomName::parse(local).map_err(|_| IdError::RoomAlias)?;
        let server = ServerName::parse(server).map_err(|_| IdError::RoomAlias)?;
        Ok(Self::new(&name, &server))
    }
    pub fn server(&self) -> &str {
        &self.0[self.0.find(':').map_or(self.0.len(), |i| i + 1)..]
    }
}
string_newtype!(
    RoomAlias,
    RoomAlias::parse,
    "RoomAlias",
    r"^#[A-Za-z0-9._-]{1,64}:(\[[0-9a-f:.]+\]|[a-z0-9-]+(\.[a-z0-9-]+)*)(:[0-9]{1,5})?$",
    "A room alias: #name:server."
);

/// `!opaque:server`; the server is the room's home server.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomId(String);

impl RoomId {
    pub fn new(opaque: &str, server: &ServerName) -> Self {
        Self(format!("!{opaque}:{server}"))
    }
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        let (opaque, server) = split_sigil(raw, '!').ok_or(IdError::RoomId)?;
        let ok = !opaque.is_empty()
            && opaque.len() <= 64
            && opaque.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '~'));
        if !ok {
            return Err(IdError::RoomId);
        }
        let server = ServerName::parse(server).map_err(|_| IdError::RoomId)?;
        Ok(Self::new(opaque, &server))
    }
    pub fn server(&self) -> &str {
        &self.0[self.0.find(':').map_or(self.0.len(), |i| i + 1)..]
    }
}
string_newtype!(
    RoomId,
    RoomId::parse,
    "RoomId",
    r"^![A-Za-z0-9._~-]{1,64}:(\[[0-9a-f:.]+\]|[a-z0-9-]+(\.[a-z0-9-]+)*)(:[0-9]{1,5})?$",
    "A room id: !opaque:server."
);

/// How a client names a room: its id, an alias, or a bare local name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RoomRef {
    Id(RoomId),
    Alias(RoomAlias),
    /// A bare name means `#name:<this server>`.
    Name(RoomName),
}

impl RoomRef {
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        match raw.chars().next() {
            Some('!') => RoomId::parse(raw).map(Self::Id),
            Some('#') => RoomAlias::parse(raw).map(Self::Alias),
            _ => RoomName::parse(raw).map(Self::Name),
        }
    }
}

impl fmt::Display for RoomRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Id(id) => id.fmt(f),
            Self::Alias(a) => a.fmt(f),
            Self::Name(n) => n.fmt(f),
        }
    }
}

impl<'de> Deserialize<'de> for RoomRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <Cow<'de, str>>::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Serialize for RoomRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl JsonSchema for RoomRef {
    fn schema_name() -> Cow<'static, str> {
        "RoomRef".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "minLength": 1,
            "description": "A room id (!opaque:server), an alias (#name:server) or a bare local room name."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_fold_and_refuse_the_rest() {
        assert_eq!(Username::parse("Ann").unwrap().as_str(), "ann");
        assert_eq!(Username::parse("a.b_c-9").unwrap().as_str(), "a.b_c-9");
        assert!(Username::parse("").is_err());
        assert!(Username::parse(&"a".repeat(33)).is_err());
        assert!(Username::parse("ann!").is_err());
        assert!(Username::parse("ÄNN").is_err());
        assert!(Username::parse("a n").is_err());
    }

    #[test]
    fn server_names() {
        for ok in ["localhost:8008", "b.example", "127.0.0.1:1", "[::1]:8008", "EXAMPLE.org"] {
            assert!(ServerName::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", ":80", "a..b", "a:0", "a:99999", "a:x", "[::1", "a b", "a:80:90"] {
            assert!(ServerName::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(ServerName::parse("EXAMPLE.org").unwrap().as_str(), "example.org");
    }

    #[test]
    fn ids_round_trip_and_expose_parts() {
        let u = UserId::parse("@ann:b.example:8448").unwrap();
        assert_eq!(u.localpart(), "ann");
        assert_eq!(u.server(), "b.example:8448");
        assert!(UserId::parse("@Ann:b.example").is_err(), "user ids are already folded");
        let a = RoomAlias::parse("#Lobby:b.example").unwrap();
        assert_eq!(a.as_str(), "#lobby:b.example");
        let r = RoomId::parse("!abc:[::1]:80").unwrap();
        assert_eq!(r.server(), "[::1]:80");
        assert!(RoomId::parse("!:x").is_err());
        assert!(matches!(RoomRef::parse("lobby"), Ok(RoomRef::Name(_))));
        assert!(matches!(RoomRef::parse("#lobby:x"), Ok(RoomRef::Alias(_))));
        assert!(matches!(RoomRef::parse("!r:x"), Ok(RoomRef::Id(_))));
        assert!(RoomRef::parse("#nope").is_err());
    }
}

//! Request keys: what the ring hashes to pick a replica.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::Deref;
use std::str::FromStr;

use http::HeaderName;
use http::request::Parts;

use super::wire;

/// Where the request key comes from. A request that lacks the configured key
/// falls back to a random id, like the original project does for every request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// A random six-digit request id per request (the original project's behaviour).
    RandomId,
    /// The value of a request header.
    Header(HeaderName),
    /// The raw (not percent-decoded) value of a query parameter.
    Query(String),
    /// The value of a cookie.
    Cookie(String),
    /// The request path, without the query.
    Path,
    /// The client's IP address (sticky sessions by client).
    ClientAddr,
}

impl FromStr for KeySource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let need = |what: &str, name: &str| {
            if name.is_empty() {
                Err(format!("'{what}:' needs a name, as in '{what}:NAME'"))
            } else {
                Ok(name.to_owned())
            }
        };
        match s.split_once(':') {
            None => match s {
                "random" => Ok(Self::RandomId),
                "path" => Ok(Self::Path),
                "client-ip" => Ok(Self::ClientAddr),
                _ => Err(format!(
                    "unknown key source '{s}': use random, path, client-ip, header:NAME, query:NAME or cookie:NAME"
                )),
            },
            Some(("header", name)) => HeaderName::from_bytes(need("header", name)?.as_bytes())
                .map(Self::Header)
                .map_err(|_| format!("'{name}' is not a valid header name")),
            Some(("query", name)) => need("query", name).map(Self::Query),
            Some(("cookie", name)) => need("cookie", name).map(Self::Cookie),
            Some((other, _)) => Err(format!(
                "unknown key source '{other}:': use header:NAME, query:NAME or cookie:NAME"
            )),
        }
    }
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RandomId => f.write_str("random"),
            Self::Header(name) => write!(f, "header:{name}"),
            Self::Query(name) => write!(f, "query:{name}"),
            Self::Cookie(name) => write!(f, "cookie:{name}"),
            Self::Path => f.write_str("path"),
            Self::ClientAddr => f.write_str("client-ip"),
        }
    }
}

/// A request key, borrowed from the request or held inline: no allocation.
pub enum RequestKey<'a> {
    Borrowed(&'a [u8]),
    Inline { bytes: [u8; 16], len: usize },
}

impl Deref for RequestKey<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Self::Borrowed(bytes) => bytes,
            Self::Inline { bytes, len } => &bytes[..*len],
        }
    }
}

impl RequestKey<'_> {
    /// A random id in 100000..=999999, as decimal digits.
    pub fn random_id() -> Self {
        let mut id: u32 = rand::random_range(100_000..=999_999);
        let mut bytes = [0u8; 16];
        for digit in bytes[..6].iter_mut().rev() {
            *digit = b'0' + (id % 10) as u8;
            id /= 10;
        }
        Self::Inline { bytes, len: 6 }
    }

    fn from_ip(ip: IpAddr) -> Self {
        let mut bytes = [0u8; 16];
        let len = match ip.to_canonical() {
            IpAddr::V4(v4) => {
                bytes[..4].copy_from_slice(&v4.octets());
                4
            }
            IpAddr::V6(v6) => {
                bytes.copy_from_slice(&v6.octets());
                16
            }
        };
        Self::Inline { bytes, len }
    }
}

/// The parts of a request that a key can come from: implemented by the general path's
/// parsed request and by the fast path's borrowed one.
pub trait KeyInput {
    fn path(&self) -> &str;
    fn query(&self) -> Option<&str>;
    /// The first value of header `name`.
    fn header(&self, name: &HeaderName) -> Option<&[u8]>;
    /// Every `Cookie` header value, in order.
    fn cookies(&self) -> impl Iterator<Item = &[u8]>;
}

impl KeyInput for Parts {
    fn path(&self) -> &str {
        self.uri.path()
    }
    fn query(&self) -> Option<&str> {
        self.uri.query()
    }
    fn header(&self, name: &HeaderName) -> Option<&[u8]> {
        self.headers.get(name).map(|v| v.as_bytes())
    }
    fn cookies(&self) -> impl Iterator<Item = &[u8]> {
        self.headers
            .get_all(http::header::COOKIE)
            .iter()
            .map(|v| v.as_bytes())
    }
}

impl KeyInput for wire::Request<'_, '_> {
    fn path(&self) -> &str {
        wire::Request::path(self)
    }
    fn query(&self) -> Option<&str> {
        wire::Request::query(self)
    }
    fn header(&self, name: &HeaderName) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name.as_str()))
            .map(|h| h.value)
    }
    fn cookies(&self) -> impl Iterator<Item = &[u8]> {
        self.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("cookie"))
            .map(|h| h.value)
    }
}

impl KeySource {
    /// The key of this request; a random id when the request does not carry one.
    pub fn extract<'a>(
        &self,
        request: &'a impl KeyInput,
        client: Option<SocketAddr>,
    ) -> RequestKey<'a> {
        let found = match self {
            Self::RandomId => None,
            Self::Header(name) => request.header(name),
            Self::Query(name) => request.query().and_then(|q| query_value(q, name)),
            Self::Cookie(name) => request
                .cookies()
                .find_map(|v| cookie_value(v, name.as_bytes())),
            Self::Path => Some(request.path().as_bytes()),
            Self::ClientAddr => {
                return client.map_or_else(RequestKey::random_id, |c| RequestKey::from_ip(c.ip()));
            }
        };
        match found {
            Some(bytes) if !bytes.is_empty() => RequestKey::Borrowed(bytes),
            _ => RequestKey::random_id(),
        }
    }
}

fn query_value<'a>(query: &'a str, name: &str) -> Option<&'a [u8]> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value.as_bytes())
    })
}

fn cookie_value<'a>(header: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    header.split(|b| *b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|b| *b == b'=')?;
        (&pair[..eq] == name).then_some(&pair[eq + 1..])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut builder = http::Request::builder().uri(uri);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(()).unwrap().into_parts().0
    }

    #[test]
    fn parses_every_source_and_refuses_nonsense() {
        assert_eq!("random".parse(), Ok(KeySource::RandomId));
        assert_eq!("path".parse(), Ok(KeySource::Path));
        assert_eq!("client-ip".parse(), Ok(KeySource::ClientAddr));
        assert_eq!(
            "header:X-User".parse(),
            Ok(KeySource::Header(HeaderName::from_static("x-user")))
        );
        assert_eq!("query:id".parse(), Ok(KeySource::Query("id".into())));
        assert_eq!("cookie:sid".parse(), Ok(KeySource::Cookie("sid".into())));
        for bad in [
            "",
            "header:",
            "query:",
            "bogus",
            "header:bad name",
            "nope:x",
        ] {
            assert!(bad.parse::<KeySource>().is_err(), "{bad}");
        }
        for s in [
            "random",
            "path",
            "client-ip",
            "header:x-user",
            "query:id",
            "cookie:sid",
        ] {
            assert_eq!(s.parse::<KeySource>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn extracts_the_configured_key() {
        let p = parts(
            "/home?a=1&id=42&b",
            &[("x-user", "alice"), ("cookie", "x=1; sid=abc; y=2")],
        );
        let key = |s: &str| s.parse::<KeySource>().unwrap().extract(&p, None).to_vec();
        assert_eq!(key("header:x-user"), b"alice");
        assert_eq!(key("query:id"), b"42");
        assert_eq!(key("cookie:sid"), b"abc");
        assert_eq!(key("path"), b"/home");
        let client = Some(SocketAddr::from(([10, 1, 2, 3], 999)));
        assert_eq!(
            KeySource::ClientAddr.extract(&p, client).to_vec(),
            vec![10, 1, 2, 3]
        );
    }

    #[test]
    fn the_fast_paths_request_gives_the_same_keys() {
        let raw = b"GET /home?a=1&id=42&b HTTP/1.1\r\nHost: x\r\nX-User: alice\r\nCookie: x=1\r\nCookie: sid=abc; y=2\r\n\r\n";
        let mut storage = wire::header_storage();
        let limits = wire::HeadLimits::default();
        let wire::Incoming::Forward(request) =
            wire::parse_request(raw, &mut storage, &limits, 0, |_| false)
        else {
            panic!("not forwarded");
        };
        let key = |s: &str| {
            s.parse::<KeySource>()
                .unwrap()
                .extract(&request, None)
                .to_vec()
        };
        assert_eq!(key("header:x-user"), b"alice");
        assert_eq!(key("query:id"), b"42");
        assert_eq!(key("cookie:sid"), b"abc");
        assert_eq!(key("path"), b"/home");
    }

    #[test]
    fn missing_keys_fall_back_to_a_six_digit_id() {
        let p = parts("/home", &[]);
        for source in ["header:x-user", "query:id", "cookie:sid", "random"] {
            let key = source.parse::<KeySource>().unwrap().extract(&p, None);
            let id: u32 = std::str::from_utf8(&key).unwrap().parse().unwrap();
            assert!((100_000..=999_999).contains(&id), "{source}: {id}");
        }
    }

    #[test]
    fn random_ids_vary() {
        let ids: std::collections::HashSet<Vec<u8>> =
            (0..50).map(|_| RequestKey::random_id().to_vec()).collect();
        assert!(ids.len() > 40, "only {} distinct ids of 50", ids.len());
    }
}

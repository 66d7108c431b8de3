//! How the proxy forwards: the flags shared by `ringlb up` and `ringlb operator`.

use std::time::Duration;

use clap::Args;

use super::wire::HeadLimits;
use super::{KeySource, ProxySettings};

/// How the proxy forwards: shared by `ringlb up` and `ringlb operator`.
#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// Proxy worker threads, each with its own runtime and listener [default: one per core].
    #[arg(long, env = "RINGLB_WORKERS")]
    pub workers: Option<usize>,

    /// What each request is keyed on: random (a random 6-digit id per request),
    /// header:NAME, query:NAME, cookie:NAME, path or client-ip. A request without
    /// the key gets a random id.
    #[arg(long, env = "RINGLB_KEY", default_value = "random")]
    pub key: KeySource,

    /// Bearer token required by /add and /rm (unset: no token needed).
    #[arg(long, env = "RINGLB_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Replicas tried per request when one cannot be reached (counting the first).
    #[arg(long, env = "RINGLB_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: usize,

    /// Time allowed to connect to a replica.
    #[arg(long, env = "RINGLB_CONNECT_TIMEOUT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,

    /// Time allowed for a replica's response headers.
    #[arg(long, env = "RINGLB_REQUEST_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// Time allowed between two reads of a replica's response body; when it passes,
    /// the client's connection is closed and the replica reported (nginx: proxy_read_timeout).
    #[arg(long, env = "RINGLB_READ_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub read_timeout: Duration,

    /// Largest request body forwarded, in bytes.
    #[arg(long, env = "RINGLB_MAX_BODY", default_value_t = 10 * 1024 * 1024)]
    pub max_body: usize,

    /// Time a client has to send a whole request head, from its first byte (from the
    /// connection's start for the first request): then 408 and close (nginx:
    /// client_header_timeout).
    #[arg(long, env = "RINGLB_CLIENT_HEADER_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub client_header_timeout: Duration,

    /// Time allowed between two reads of a request body: then 408 and close (nginx:
    /// client_body_timeout).
    #[arg(long, env = "RINGLB_CLIENT_BODY_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub client_body_timeout: Duration,

    /// Time an idle kept-alive client connection stays open (nginx: keepalive_timeout).
    #[arg(long, env = "RINGLB_KEEPALIVE_TIMEOUT", default_value = "75s", value_parser = humantime::parse_duration)]
    pub keepalive_timeout: Duration,

    /// Longest request line and header line, in bytes: longer gets 414 or 431 (nginx:
    /// large_client_header_buffers).
    #[arg(long, env = "RINGLB_MAX_HEADER_LINE", default_value_t = 8 * 1024, value_parser = clap::value_parser!(u32).range(256..))]
    pub max_header_line: u32,

    /// Largest request head (request line and headers), in bytes: larger gets 431.
    #[arg(long, env = "RINGLB_MAX_HEADER_BYTES", default_value_t = 64 * 1024, value_parser = clap::value_parser!(u32).range(1024..=1024 * 1024))]
    pub max_header_bytes: u32,

    /// Most header lines in a request: more gets 431.
    #[arg(long, env = "RINGLB_MAX_HEADERS", default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=super::wire::MAX_HEADERS as i64))]
    pub max_headers: u16,

    /// Most client connections open at once in this process; one more is answered 503
    /// and closed [default: 10000, or less if the file descriptor limit is lower].
    #[arg(long, env = "RINGLB_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
}

impl ProxyArgs {
    pub fn settings(&self) -> ProxySettings {
        ProxySettings {
            key: self.key.clone(),
            max_attempts: self.max_attempts.max(1),
            connect_timeout: self.connect_timeout,
            request_timeout: self.request_timeout,
            read_timeout: self.read_timeout,
            client_header_timeout: self.client_header_timeout,
            client_body_timeout: self.client_body_timeout,
            keepalive_timeout: self.keepalive_timeout,
            max_body_bytes: self.max_body,
            head_limits: HeadLimits {
                line: self.max_header_line as usize,
                head: self.max_header_bytes as usize,
                headers: usize::from(self.max_headers),
            },
            max_connections: self
                .max_connections
                .unwrap_or_else(super::workers::default_max_connections)
                .max(1),
            admin_token: self.admin_token.clone().filter(|t| !t.is_empty()),
        }
    }

    /// Proxy worker threads: as given, or one per core.
    pub fn workers(&self) -> usize {
        self.workers
            .unwrap_or_else(super::workers::default_workers)
            .max(1)
    }
}

//! How the proxy forwards: the flags shared by `ringlb up` and `ringlb proxy`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::h2::H2Limits;
use super::tls::TlsFiles;
use super::wire::HeadLimits;
use super::{KeySource, ProxySettings};

/// How the proxy forwards: shared by `ringlb up` and `ringlb proxy`.
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

    /// Time a write to a client may wait for the client to read: then the connection
    /// is closed, as a client that stopped reading would hold a replica's answer (nginx:
    /// send_timeout).
    #[arg(long, env = "RINGLB_SEND_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub send_timeout: Duration,

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

    /// Time an idle kept-alive client connection stays open, and an HTTP/2 connection
    /// without an open stream (nginx: keepalive_timeout, which also replaced its
    /// http2_idle_timeout); an idle HTTP/2 connection is closed with GOAWAY.
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

    /// PEM certificate chain for TLS on the proxy port (with --tls-key): each client
    /// then chooses HTTP/2 or HTTP/1.1 by ALPN. Read again when the file changes.
    #[arg(long, env = "RINGLB_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert. Read again when the file changes.
    #[arg(long, env = "RINGLB_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Most streams open at once on one HTTP/2 connection; more are refused
    /// (REFUSED_STREAM) for the client to retry (nginx: http2_max_concurrent_streams).
    #[arg(long, env = "RINGLB_H2_MAX_STREAMS", default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    pub h2_max_streams: u32,

    /// Largest HTTP/2 request header list, in bytes as HTTP/2 counts them (names,
    /// values and 32 per field): larger is answered the JSON 431 (a gRPC call,
    /// RESOURCE_EXHAUSTED), the connection kept; above twice it, the HTTP/2 layer answers
    /// a bare 431 and resets the stream. Each request then meets the HTTP/1.1 head
    /// limits too.
    #[arg(long, env = "RINGLB_H2_MAX_HEADER_LIST", default_value_t = 64 * 1024, value_parser = clap::value_parser!(u32).range(1024..=16 * 1024 * 1024))]
    pub h2_max_header_list: u32,

    /// HTTP/2 flow-control window of each stream, in bytes: what a client may send of a
    /// request body before ringlb reads it (nginx: http2_body_preread_size, 64k).
    #[arg(long, env = "RINGLB_H2_STREAM_WINDOW", default_value_t = 64 * 1024, value_parser = clap::value_parser!(u32).range(65_535..=H2Limits::MAX_WINDOW as i64))]
    pub h2_stream_window: u32,

    /// HTTP/2 flow-control window of a whole connection, in bytes: the request body
    /// bytes all of its streams may have unread at once.
    #[arg(long, env = "RINGLB_H2_CONNECTION_WINDOW", default_value_t = 1024 * 1024, value_parser = clap::value_parser!(u32).range(65_535..=H2Limits::MAX_WINDOW as i64))]
    pub h2_connection_window: u32,

    /// Largest HPACK dynamic table a client's header compression may make ringlb keep
    /// per HTTP/2 connection, in bytes (SETTINGS_HEADER_TABLE_SIZE; 4096 is HTTP/2's
    /// default and what nginx keeps).
    #[arg(long, env = "RINGLB_H2_HEADER_TABLE_SIZE", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(0..=1024 * 1024))]
    pub h2_header_table_size: u32,

    /// Time between the PINGs ringlb sends on each HTTP/2 connection to find clients
    /// that are gone (with streams open, the keep-alive timeout does not apply); 0s
    /// (the default) sends none.
    #[arg(long, env = "RINGLB_H2_PING_INTERVAL", default_value = "0s", value_parser = humantime::parse_duration)]
    pub h2_ping_interval: Duration,

    /// Time a client has to answer a PING (with --h2-ping-interval): then the
    /// connection is closed and its streams cancelled.
    #[arg(long, env = "RINGLB_H2_PING_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration)]
    pub h2_ping_timeout: Duration,

    /// Streams of one HTTP/2 connection that the client may cancel before ringlb took
    /// them up, at once; one more closes the connection with GOAWAY ENHANCE_YOUR_CALM
    /// (rapid reset, CVE-2023-44487).
    #[arg(long, env = "RINGLB_H2_MAX_PENDING_RESETS", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub h2_max_pending_resets: u64,

    /// Streams of one HTTP/2 connection that ringlb may reset for the client's protocol
    /// errors; one more closes the connection with GOAWAY ENHANCE_YOUR_CALM.
    #[arg(long, env = "RINGLB_H2_MAX_ERROR_RESETS", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub h2_max_error_resets: u64,
}

impl ProxyArgs {
    pub fn settings(&self) -> ProxySettings {
        ProxySettings {
            key: self.key.clone(),
            max_attempts: self.max_attempts.max(1),
            connect_timeout: self.connect_timeout,
            request_timeout: self.request_timeout,
            read_timeout: self.read_timeout,
            send_timeout: self.send_timeout,
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
            h2: H2Limits {
                max_streams: self.h2_max_streams,
                max_header_list: self.h2_max_header_list,
                stream_window: self.h2_stream_window,
                connection_window: self.h2_connection_window,
                header_table_size: self.h2_header_table_size,
                ping_interval: (!self.h2_ping_interval.is_zero()).then_some(self.h2_ping_interval),
                ping_timeout: self.h2_ping_timeout,
                max_pending_resets: usize::try_from(self.h2_max_pending_resets)
                    .unwrap_or(usize::MAX),
                max_error_resets: usize::try_from(self.h2_max_error_resets).unwrap_or(usize::MAX),
            },
            tls: self
                .tls_cert
                .clone()
                .zip(self.tls_key.clone())
                .map(|(cert, key)| TlsFiles { cert, key }),
        }
    }

    /// Proxy worker threads: as given, or one per core.
    pub fn workers(&self) -> usize {
        self.workers
            .unwrap_or_else(super::workers::default_workers)
            .max(1)
    }
}

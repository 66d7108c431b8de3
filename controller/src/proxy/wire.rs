//! HTTP/1.1 on the wire, for the fast forwarding path (see `connection.rs`).
//!
//! The fast path takes the common request — HTTP/1.1, origin-form target, no body or a
//! `Content-Length` one, no `Expect`, no upgrade — parses it in place with `httparse`,
//! and writes the upstream request and the client's response head straight into byte
//! buffers. Everything else is left to the general path (hyper and axum), which is why
//! [`parse_request`] can answer [`Incoming::HandOff`] instead of an error: the general
//! path gives the precise error answer or the full feature.

use std::io::Write;
use std::mem::MaybeUninit;
use std::ops::Range;

use httparse::{Header, Status};

/// The most request headers `--max-headers` may allow; room for this many is kept on
/// the stack (uninitialised: the parser writes only what it finds).
pub const MAX_HEADERS: usize = 256;
/// A response head that has not ended within this many bytes is refused.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Room for a request's headers, for [`parse_request`].
pub type HeaderStorage<'b> = [MaybeUninit<Header<'b>>; MAX_HEADERS];

pub fn header_storage<'b>() -> HeaderStorage<'b> {
    [const { MaybeUninit::uninit() }; MAX_HEADERS]
}

/// Limits on a request head, checked before anything is forwarded, on both paths:
/// nginx's `large_client_header_buffers` (8 KiB per line), Envoy's
/// `max_request_headers_kb` and `max_headers_count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadLimits {
    /// The request line, and each header line, in bytes.
    pub line: usize,
    /// The whole head, in bytes.
    pub head: usize,
    /// Header lines.
    pub headers: usize,
}

impl Default for HeadLimits {
    fn default() -> Self {
        Self {
            line: 8 * 1024,
            head: 64 * 1024,
            headers: 100,
        }
    }
}

/// Why a request is refused before it is forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not HTTP/1.x as RFC 9112 defines it.
    Malformed(httparse::Error),
    /// An HTTP/1.1 request without a `Host` header, or with more than one
    /// (RFC 9112 §3.2: a server MUST answer 400).
    Host,
    /// The request line is longer than [`HeadLimits::line`].
    TargetTooLong,
    /// A header line is longer than [`HeadLimits::line`].
    LineTooLong,
    /// The head is larger than [`HeadLimits::head`].
    HeadTooLarge,
    /// More header lines than [`HeadLimits::headers`].
    TooManyHeaders,
}

impl HeadLimits {
    /// Checks a complete request head: both paths call this. `request_line` and
    /// `head` are lengths in bytes; `headers` gives each header's name and value.
    pub fn check<'a>(
        &self,
        http11: bool,
        request_line: usize,
        head: usize,
        headers: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    ) -> Result<(), Refusal> {
        if request_line > self.line {
            return Err(Refusal::TargetTooLong);
        }
        let mut hosts = 0;
        let mut count = 0;
        for (name, value) in headers {
            count += 1;
            // "name: value\r\n"
            if name.len() + value.len() + 4 > self.line {
                return Err(Refusal::LineTooLong);
            }
            hosts += usize::from(name.eq_ignore_ascii_case(b"host"));
        }
        if count > self.headers {
            return Err(Refusal::TooManyHeaders);
        }
        if head > self.head {
            return Err(Refusal::HeadTooLarge);
        }
        // HTTP/1.0 has no Host requirement, but two are ambiguous in any version.
        if hosts > 1 || (http11 && hosts == 0) {
            return Err(Refusal::Host);
        }
        Ok(())
    }

    /// Checks the start of a head that is not complete yet, so that a client cannot
    /// make the proxy buffer more than the limits allow.
    fn check_partial(&self, buf: &[u8]) -> Result<(), Refusal> {
        if buf.len() <= self.line {
            return Ok(());
        }
        if buf.len() > self.head {
            return Err(Refusal::HeadTooLarge);
        }
        match buf.iter().rposition(|b| *b == b'\n') {
            None => Err(Refusal::TargetTooLong),
            Some(end) if buf.len() - end - 1 > self.line => Err(Refusal::LineTooLong),
            Some(_) => Ok(()),
        }
    }
}

/// Headers that describe one connection, not the message: never forwarded (RFC 9110
/// §7.6.1), by either path. `Upgrade` is among them: it is forwarded only with the
/// upgrade request it belongs to (see [`Request::upgrade`]).
pub const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// What the bytes at the start of a connection's buffer hold.
pub enum Incoming<'h, 'b> {
    /// Not a whole request head yet: read more.
    Partial,
    /// A whole head, with its body still arriving: read more.
    PartialBody,
    /// A whole request the fast path forwards.
    Forward(Request<'h, 'b>),
    /// A request for the general path: an admin route, or anything the fast path does
    /// not handle.
    HandOff,
    /// A request refused before anything is forwarded; the connection then closes.
    Refuse(Refusal),
}

/// A complete request, borrowed from the connection's buffer.
pub struct Request<'h, 'b> {
    pub method: &'b str,
    /// Origin-form: path and query.
    pub target: &'b str,
    pub headers: &'h [Header<'b>],
    pub body: &'b [u8],
    /// Bytes of head and body: where the next request starts.
    pub len: usize,
    /// False when the client asked to close the connection after this exchange.
    pub keep_alive: bool,
    /// The client asks to switch protocols (`Connection: upgrade` with `Upgrade`): the
    /// two headers go to the replica, and a `101` answer turns the connection into a
    /// tunnel.
    pub upgrade: bool,
}

impl Request<'_, '_> {
    pub fn path(&self) -> &str {
        self.target
            .split_once('?')
            .map_or(self.target, |(path, _)| path)
    }

    pub fn query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, query)| query)
    }

    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }
}

/// Parses the request at the start of `buf`. `local_route` names the paths this proxy
/// answers itself; requests for them are handed off once their head passed `limits`.
pub fn parse_request<'h, 'b>(
    buf: &'b [u8],
    storage: &'h mut HeaderStorage<'b>,
    limits: &HeadLimits,
    max_body: usize,
    local_route: impl Fn(&str) -> bool,
) -> Incoming<'h, 'b> {
    let mut request = httparse::Request::new(&mut []);
    let storage = &mut storage[..limits.headers.min(MAX_HEADERS)];
    let head_len = match request.parse_with_uninit_headers(buf, storage) {
        Ok(Status::Complete(len)) => len,
        Ok(Status::Partial) => {
            return match limits.check_partial(buf) {
                Ok(()) => Incoming::Partial,
                Err(refusal) => Incoming::Refuse(refusal),
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Incoming::Refuse(Refusal::TooManyHeaders),
        Err(error) => return Incoming::Refuse(Refusal::Malformed(error)),
    };
    let (Some(method), Some(target), Some(version)) =
        (request.method, request.path, request.version)
    else {
        return Incoming::Refuse(Refusal::Malformed(httparse::Error::Version));
    };
    let headers: &'h [Header<'b>] = request.headers;
    // "METHOD target HTTP/1.1\r\n"
    let request_line = method.len() + target.len() + 12;
    let fields = headers.iter().map(|h| (h.name.as_bytes(), h.value));
    if let Err(refusal) = limits.check(version == 1, request_line, head_len, fields) {
        return Incoming::Refuse(refusal);
    }
    if version != 1 || !target.starts_with('/') {
        return Incoming::HandOff;
    }
    let mut content_length: Option<usize> = None;
    let mut keep_alive = true;
    let mut connection_upgrade = false;
    let mut upgrade_header = false;
    for header in headers {
        let name = header.name;
        if name.eq_ignore_ascii_case("content-length") {
            match (content_length, parse_length(header.value)) {
                (None, Some(length)) if length <= max_body => content_length = Some(length),
                // Repeated, malformed or too large: the general path answers it.
                _ => return Incoming::HandOff,
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for token in tokens(header.value) {
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    connection_upgrade = true;
                }
            }
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade_header = true;
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("expect")
        {
            return Incoming::HandOff;
        }
    }
    let upgrade = connection_upgrade && upgrade_header;
    if upgrade && content_length.is_some_and(|length| length > 0) {
        // An upgrade with a body: rare enough for the general path (without the upgrade).
        return Incoming::HandOff;
    }
    let target_path = target.split_once('?').map_or(target, |(path, _)| path);
    if local_route(target_path) {
        return Incoming::HandOff;
    }
    let len = head_len + content_length.unwrap_or(0);
    if buf.len() < len {
        return Incoming::PartialBody;
    }
    Incoming::Forward(Request {
        method,
        target,
        headers,
        body: &buf[head_len..len],
        len,
        keep_alive,
        upgrade,
    })
}

fn parse_length(value: &[u8]) -> Option<usize> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// The comma-separated tokens of a header value, trimmed.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Whether `name` must not cross the proxy: a hop-by-hop header, or one that the
/// message's `Connection` header lists.
fn is_hop_by_hop(name: &str, headers: &[Header], has_connection: bool) -> bool {
    HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
        || (has_connection
            && headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("connection"))
                .flat_map(|h| tokens(h.value))
                .any(|token| token.eq_ignore_ascii_case(name.as_bytes())))
}

fn has_connection_header(headers: &[Header]) -> bool {
    headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("connection"))
}

/// Writes the request a replica receives into `out`: the client's, minus hop-by-hop
/// headers, with the client appended to `X-Forwarded-For`, and the body. Written once
/// per request and replayed as is on a failover. `client` is the client's IP.
pub fn write_upstream_request(request: &Request, client: &str, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(request.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(request.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let has_connection = has_connection_header(request.headers);
    let mut forwarded_for = Vec::new();
    for header in request.headers {
        if header.name.eq_ignore_ascii_case("x-forwarded-for") {
            if !forwarded_for.is_empty() {
                forwarded_for.extend_from_slice(b", ");
            }
            forwarded_for.extend_from_slice(header.value.trim_ascii());
        } else if (request.upgrade && header.name.eq_ignore_ascii_case("upgrade"))
            || !is_hop_by_hop(header.name, request.headers, has_connection)
        {
            write_header(out, header.name.as_bytes(), header.value);
        }
    }
    if request.upgrade {
        out.extend_from_slice(b"connection: upgrade\r\n");
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    if !forwarded_for.is_empty() {
        out.extend_from_slice(&forwarded_for);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(client.as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(request.body);
}

fn write_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// How a response body ends (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body: a response to HEAD, or 204 / 304.
    Empty,
    Length(u64),
    Chunked,
    /// Until the replica closes the connection.
    UntilClose,
}

/// A replica's response head, once parsed.
#[derive(Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub head_len: usize,
    pub framing: Framing,
    /// Whether the replica's connection can carry another request afterwards.
    pub reusable: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("malformed response head: {0}")]
    Malformed(String),
    #[error("response head larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("invalid Content-Length in the response")]
    BadLength,
    #[error("malformed chunked body")]
    BadChunk,
}

/// Parses the response at the start of `buf`. `Ok(None)`: read more. Interim (1xx)
/// responses are returned too; the caller skips them.
///
/// The client's response head — the replica's minus hop-by-hop headers, with this
/// hop's framing — is written into `out` (replacing its content) when `out` is given.
pub fn parse_response(
    buf: &[u8],
    request_was_head: bool,
    client_keep_alive: bool,
    out: Option<&mut Vec<u8>>,
) -> Result<Option<ResponseHead>, WireError> {
    let mut storage = header_storage();
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut storage,
    );
    let head_len = match parsed {
        Ok(Status::Complete(len)) => len,
        Ok(Status::Partial) if buf.len() < MAX_HEAD_BYTES => return Ok(None),
        Ok(Status::Partial) => return Err(WireError::HeadTooLarge),
        Err(error) => return Err(WireError::Malformed(error.to_string())),
    };
    let status = response.code.unwrap_or_default();
    let version = response.version.unwrap_or_default();
    let headers = &*response.headers;

    let mut length = None;
    let mut chunked = None;
    let mut close = version == 0;
    for header in headers {
        if header.name.eq_ignore_ascii_case("content-length") {
            let parsed = parse_length(header.value.trim_ascii()).ok_or(WireError::BadLength)?;
            if length.is_some_and(|l| l != parsed) {
                return Err(WireError::BadLength);
            }
            length = Some(parsed);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked only if it is the final coding (RFC 9112 §6.3).
            chunked = tokens(header.value)
                .last()
                .map(|t| t.eq_ignore_ascii_case(b"chunked"));
        } else if header.name.eq_ignore_ascii_case("connection") {
            close |= tokens(header.value).any(|t| t.eq_ignore_ascii_case(b"close"));
        }
    }
    let framing = if request_was_head || status < 200 || status == 204 || status == 304 {
        Framing::Empty
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) => Framing::UntilClose,
            (None, Some(length)) => Framing::Length(length as u64),
            (None, None) => Framing::UntilClose,
        }
    };
    let head = ResponseHead {
        status,
        head_len,
        framing,
        reusable: !close && framing != Framing::UntilClose,
    };
    if let Some(out) = out {
        write_response_head(&response, &head, client_keep_alive, out);
    }
    Ok(Some(head))
}

fn write_response_head(
    response: &httparse::Response,
    head: &ResponseHead,
    client_keep_alive: bool,
    out: &mut Vec<u8>,
) {
    out.clear();
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\n",
        head.status,
        response.reason.unwrap_or("")
    );
    let headers = &*response.headers;
    let has_connection = has_connection_header(headers);
    let switching = head.status == 101;
    for header in headers {
        // With chunked framing a Content-Length must not be sent along (RFC 9112 §6.3).
        let dropped_length =
            head.framing == Framing::Chunked && header.name.eq_ignore_ascii_case("content-length");
        let kept_upgrade = switching && header.name.eq_ignore_ascii_case("upgrade");
        if kept_upgrade || (!dropped_length && !is_hop_by_hop(header.name, headers, has_connection))
        {
            write_header(out, header.name.as_bytes(), header.value);
        }
    }
    if head.framing == Framing::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if switching {
        out.extend_from_slice(b"connection: upgrade\r\n");
    } else if !client_keep_alive || head.framing == Framing::UntilClose {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Makes a client response head written by [`parse_response`] for a kept-alive
/// connection announce that the connection closes after this response.
pub fn announce_close(head: &mut Vec<u8>) {
    debug_assert!(head.ends_with(b"\r\n\r\n"), "a complete head");
    head.truncate(head.len() - 2);
    head.extend_from_slice(b"connection: close\r\n\r\n");
}

/// The one parser of chunked bodies (RFC 9112 §7.1), for both paths: it finds where a
/// body ends in the bytes relayed so far without changing them (the fast path passes
/// the body through as the replica sent it), and [`ChunkScanner::scan`] also tells
/// where the chunks' data and the trailer section lie (the general path de-chunks
/// with it). A bare LF is taken where CRLF is expected; chunk extensions are skipped.
#[derive(Debug, Default)]
pub struct ChunkScanner {
    state: ChunkState,
}

/// A piece of the bytes given to [`ChunkScanner::scan`], as a range of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Span {
    /// Chunk data: part of the de-chunked body.
    Data(Range<usize>),
    /// Part of the trailer section: the lines after the last chunk, up to and with
    /// the empty line that ends the body.
    Trailer(Range<usize>),
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Before the first hex digit of a chunk size.
    #[default]
    SizeStart,
    Size {
        size: u64,
    },
    /// Chunk extensions or whitespace up to the line end.
    SizeLineRest {
        size: u64,
    },
    Data {
        left: u64,
    },
    DataCr,
    DataLf,
    /// Trailer section: at the start of a line.
    TrailerLineStart,
    TrailerLine,
    TrailerEndLf,
    Done,
}

impl ChunkScanner {
    /// Scans `bytes`, the next bytes of the body. `Ok(Some(n))`: the body ends after
    /// the first `n` of them.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Option<usize>, WireError> {
        // A callback that does nothing: the spans are not even computed.
        self.scan(bytes, |_| {})
    }

    /// [`feed`](Self::feed), telling `on` where the chunks' data and the trailer
    /// section lie in `bytes`, in order. Nothing is told of bytes after an error.
    pub fn scan(
        &mut self,
        bytes: &[u8],
        mut on: impl FnMut(Span),
    ) -> Result<Option<usize>, WireError> {
        use ChunkState::*;
        // Where the trailer section starts in `bytes`, once the scan is in it.
        let mut trailer =
            matches!(self.state, TrailerLineStart | TrailerLine | TrailerEndLf).then_some(0);
        let mut i = 0;
        while i < bytes.len() {
            if self.state == Done {
                if let Some(start) = trailer {
                    on(Span::Trailer(start..i));
                }
                return Ok(Some(i));
            }
            let b = bytes[i];
            self.state = match self.state {
                // Two arms, not one: as one, the generic `scan` compiled its `feed`
                // larger (116 instructions, not 102) than the former non-generic one.
                SizeStart => match (b as char).to_digit(16) {
                    Some(digit) => Size {
                        size: u64::from(digit),
                    },
                    None => return Err(WireError::BadChunk),
                },
                Size { size } => match (b as char).to_digit(16) {
                    Some(digit) => Size {
                        size: size
                            .checked_mul(16)
                            .and_then(|s| s.checked_add(u64::from(digit)))
                            .ok_or(WireError::BadChunk)?,
                    },
                    None if b == b'\n' => after_size_line(size, i, &mut trailer),
                    None => SizeLineRest { size },
                },
                SizeLineRest { size } if b == b'\n' => after_size_line(size, i, &mut trailer),
                SizeLineRest { size } => SizeLineRest { size },
                Data { left } => {
                    let take = (left as usize).min(bytes.len() - i);
                    on(Span::Data(i..i + take));
                    i += take;
                    let left = left - take as u64;
                    self.state = if left == 0 { DataCr } else { Data { left } };
                    continue;
                }
                DataCr if b == b'\r' => DataLf,
                DataCr | DataLf if b == b'\n' => SizeStart,
                DataCr | DataLf => return Err(WireError::BadChunk),
                TrailerLineStart if b == b'\r' => TrailerEndLf,
                TrailerLineStart | TrailerEndLf if b == b'\n' => Done,
                TrailerEndLf => return Err(WireError::BadChunk),
                TrailerLineStart | TrailerLine if b == b'\n' => TrailerLineStart,
                TrailerLineStart | TrailerLine => TrailerLine,
                Done => unreachable!("checked above"),
            };
            i += 1;
        }
        if let Some(start) = trailer
            && start < bytes.len()
        {
            on(Span::Trailer(start..bytes.len()));
        }
        Ok((self.state == Done).then_some(bytes.len()))
    }
}

/// The state after a chunk-size line whose `\n` is at `i`; the last chunk (size 0)
/// starts the trailer section after it.
fn after_size_line(size: u64, i: usize, trailer: &mut Option<usize>) -> ChunkState {
    if size == 0 {
        *trailer = Some(i + 1);
        ChunkState::TrailerLineStart
    } else {
        ChunkState::Data { left: size }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse<'h, 'b>(raw: &'b [u8], storage: &'h mut HeaderStorage<'b>) -> Incoming<'h, 'b> {
        let limits = HeadLimits {
            line: 256,
            head: 1024,
            headers: 8,
        };
        parse_request(raw, storage, &limits, 1024, |p| p == "/rep")
    }

    fn forwarded(raw: &[u8]) -> (String, usize, bool) {
        let mut storage = header_storage();
        match parse(raw, &mut storage) {
            Incoming::Forward(request) => {
                let mut out = Vec::new();
                write_upstream_request(&request, "127.0.0.9", &mut out);
                (
                    String::from_utf8(out).unwrap(),
                    request.len,
                    request.keep_alive,
                )
            }
            Incoming::Partial | Incoming::PartialBody => {
                panic!("partial: {}", String::from_utf8_lossy(raw))
            }
            Incoming::HandOff => panic!("handed off: {}", String::from_utf8_lossy(raw)),
            Incoming::Refuse(refusal) => {
                panic!("refused ({refusal:?}): {}", String::from_utf8_lossy(raw))
            }
        }
    }

    fn outcome(raw: &[u8]) -> String {
        let mut storage = header_storage();
        match parse(raw, &mut storage) {
            Incoming::Forward(_) => "forward".into(),
            Incoming::Partial => "partial".into(),
            Incoming::PartialBody => "partial body".into(),
            Incoming::HandOff => "hand off".into(),
            Incoming::Refuse(refusal) => format!("{refusal:?}"),
        }
    }

    #[test]
    fn the_upstream_request_drops_hop_by_hop_headers_and_appends_the_client() {
        let raw = b"GET /home?id=1 HTTP/1.1\r\nHost: example\r\nConnection: keep-alive, x-secret\r\n\
                    X-Secret: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n\
                    X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.2\r\nAccept: */*\r\n\r\nGET /next";
        let (upstream, len, keep_alive) = forwarded(raw);
        assert_eq!(
            upstream,
            "GET /home?id=1 HTTP/1.1\r\nHost: example\r\nAccept: */*\r\n\
             x-forwarded-for: 10.0.0.1, 10.0.0.2, 127.0.0.9\r\n\r\n"
        );
        assert_eq!(
            &raw[len..],
            b"GET /next",
            "the next pipelined request starts here"
        );
        assert!(keep_alive);
    }

    #[test]
    fn a_body_is_forwarded_once_it_is_complete() {
        let head =
            b"POST /data HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\n";
        assert_eq!(outcome(&[&head[..], b"hel"].concat()), "partial body");
        let (upstream, len, keep_alive) = forwarded(&[&head[..], b"hello", b"extra"].concat());
        assert_eq!(
            upstream,
            "POST /data HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nx-forwarded-for: 127.0.0.9\r\n\r\nhello"
        );
        assert_eq!(len, head.len() + 5);
        assert!(!keep_alive);
    }

    #[test]
    fn unusual_requests_are_handed_to_the_general_path() {
        assert_eq!(outcome(b"GET /home HTTP/1.1\r\nHost: x\r\n"), "partial");
        assert_eq!(outcome(b"GET /home HTTP/1.1\r\nHost: x\r\n\r\n"), "forward");
        for raw in [
            &b"GET /rep HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"DELETE /rep?x=1 HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /home HTTP/1.0\r\n\r\n",
            b"GET http://example/home HTTP/1.1\r\nHost: example\r\n\r\n",
            b"POST /home HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST /home HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
            b"GET /home HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: ws\r\nContent-Length: 2\r\n\r\nab",
            b"POST /home HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
            b"POST /home HTTP/1.1\r\nHost: x\r\nContent-Length: -3\r\n\r\n",
            b"POST /home HTTP/1.1\r\nHost: x\r\nContent-Length: 4096\r\n\r\n",
        ] {
            assert_eq!(outcome(raw), "hand off", "{}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn an_upgrade_keeps_its_headers_both_ways() {
        let raw = b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\n\
                    Upgrade: websocket\r\nSec-WebSocket-Key: k\r\n\r\n";
        let (upstream, _, _) = forwarded(raw);
        assert_eq!(
            upstream,
            "GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\n\
             connection: upgrade\r\nx-forwarded-for: 127.0.0.9\r\n\r\n"
        );
        // `Upgrade` alone, without the `Connection` token, is not an upgrade: dropped.
        let (upstream, _, _) = forwarded(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\n\r\n");
        assert!(
            !upstream.to_ascii_lowercase().contains("upgrade"),
            "{upstream}"
        );

        let (head, out) = response(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Accept: a\r\n\r\n",
            false,
            true,
        );
        assert_eq!(head.framing, Framing::Empty);
        assert_eq!(
            out,
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: a\r\n\
             connection: upgrade\r\n\r\n"
        );
    }

    /// The test limits: lines of 256 bytes, heads of 1024, 8 headers.
    #[test]
    fn heads_beyond_the_limits_or_without_host_are_refused() {
        let line = |n: usize| format!("X-Long: {}\r\n", "a".repeat(n - 10));
        let headers = |n: usize| "X-A: 1\r\n".repeat(n);
        let cases: Vec<(String, &str)> = vec![
            // (request, outcome)
            ("GET /home HTTP/1.1\r\n\r\n".into(), "Host"),
            (
                "GET /home HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n".into(),
                "Host",
            ),
            (
                "GET /home HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n".into(),
                "Host",
            ),
            ("GET /home HTTP/1.0\r\n\r\n".into(), "hand off"),
            // A header line of exactly 256 bytes passes; 257 is refused.
            (
                format!("GET / HTTP/1.1\r\nHost: x\r\n{}\r\n", line(256)),
                "forward",
            ),
            (
                format!("GET / HTTP/1.1\r\nHost: x\r\n{}\r\n", line(257)),
                "LineTooLong",
            ),
            // Refused before the head is complete: the line alone is too long.
            (
                format!("GET / HTTP/1.1\r\nHost: x\r\nX-Long: {}", "a".repeat(300)),
                "LineTooLong",
            ),
            // "GET /a… HTTP/1.1\r\n": 3 + 1 + (1 + 240) + 1 + 8 + 2 = 256 bytes.
            (
                format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(240)),
                "forward",
            ),
            (
                format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(241)),
                "TargetTooLong",
            ),
            (format!("GET /{}", "a".repeat(300)), "TargetTooLong"),
            (
                format!("GET / HTTP/1.1\r\nHost: x\r\n{}\r\n", headers(7)),
                "forward",
            ),
            (
                format!("GET / HTTP/1.1\r\nHost: x\r\n{}\r\n", headers(8)),
                "TooManyHeaders",
            ),
            (
                format!("GET / HTTP/1.1\r\nHost: x\r\n{}{}", line(200), line(200)),
                "partial",
            ),
            (
                format!(
                    "GET / HTTP/1.1\r\n{}{}{}{}{}",
                    line(250),
                    line(250),
                    line(250),
                    line(250),
                    line(100)
                ),
                "HeadTooLarge",
            ),
            (
                "GET /home HTTP/1.1\r\nBad Header\r\n\r\n".into(),
                "Malformed(HeaderName)",
            ),
            ("GET /home HTTP/2.0\r\n\r\n".into(), "Malformed(Version)"),
        ];
        for (raw, expected) in cases {
            assert_eq!(outcome(raw.as_bytes()), expected, "{raw:?}");
        }
    }

    fn response(raw: &[u8], head_request: bool, keep_alive: bool) -> (ResponseHead, String) {
        let mut out = Vec::new();
        let head = parse_response(raw, head_request, keep_alive, Some(&mut out))
            .unwrap()
            .unwrap();
        (head, String::from_utf8(out).unwrap())
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let (head, out) = response(
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nkeep-alive: timeout=5\r\n\r\nabc",
            false,
            true,
        );
        assert_eq!(head.framing, Framing::Length(3));
        assert!(head.reusable);
        assert_eq!(head.head_len, 61);
        assert_eq!(out, "HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n");

        let (head, out) = response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 9\r\n\r\n",
            false,
            false,
        );
        assert_eq!(head.framing, Framing::Chunked);
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        );

        let (head, out) = response(b"HTTP/1.0 200 OK\r\nServer: old\r\n\r\n", false, true);
        assert_eq!(head.framing, Framing::UntilClose);
        assert!(!head.reusable);
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nServer: old\r\nconnection: close\r\n\r\n"
        );

        let (head, _) = response(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n", true, true);
        assert_eq!(
            head.framing,
            Framing::Empty,
            "a response to HEAD has no body"
        );
        let (head, mut out) = response(b"HTTP/1.1 304 Not Modified\r\n\r\n", false, true);
        assert_eq!(head.framing, Framing::Empty);
        let mut bytes = std::mem::take(&mut out).into_bytes();
        announce_close(&mut bytes);
        assert_eq!(
            bytes,
            b"HTTP/1.1 304 Not Modified\r\nconnection: close\r\n\r\n"
        );
        let (head, _) = response(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\ncontent-length: 0\r\n\r\n",
            false,
            true,
        );
        assert!(!head.reusable);

        assert_eq!(
            parse_response(
                b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n",
                false,
                true,
                None
            ),
            Ok(None)
        );
        for bad in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n",
        ] {
            assert_eq!(
                parse_response(bad, false, true, None),
                Err(WireError::BadLength)
            );
        }
    }

    #[test]
    fn the_chunk_scanner_finds_the_end_of_the_body_in_any_split() {
        let body =
            b"5\r\nhello\r\n1A;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Trailer: 1\r\n\r\n";
        let next = b"HTTP/1.1 200 OK";
        let stream = [&body[..], next].concat();
        for split in 0..stream.len() {
            let mut scanner = ChunkScanner::default();
            let end = match scanner.feed(&stream[..split]).unwrap() {
                Some(end) => end,
                None => split + scanner.feed(&stream[split..]).unwrap().unwrap(),
            };
            assert_eq!(end, body.len(), "split at {split}");
        }
        let mut scanner = ChunkScanner::default();
        assert_eq!(scanner.feed(b"0\r\n\r\n"), Ok(Some(5)));
        for bad in [&b"x\r\n"[..], b"3\r\nabcX", b"FFFFFFFFFFFFFFFFFF\r\n"] {
            assert_eq!(
                ChunkScanner::default().feed(bad),
                Err(WireError::BadChunk),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// Scans `stream` in pieces of `step` bytes: the de-chunked body (the data spans
    /// put together), the trailer section, and where the body ended.
    fn spans_in_pieces(stream: &[u8], step: usize) -> (Vec<u8>, Vec<u8>, Option<usize>) {
        let mut scanner = ChunkScanner::default();
        let (mut data, mut trailer) = (Vec::new(), Vec::new());
        for (n, piece) in stream.chunks(step).enumerate() {
            let end = scanner
                .scan(piece, |span| match span {
                    Span::Data(range) => data.extend_from_slice(&piece[range]),
                    Span::Trailer(range) => trailer.extend_from_slice(&piece[range]),
                })
                .unwrap();
            if let Some(end) = end {
                return (data, trailer, Some(n * step + end));
            }
        }
        (data, trailer, None)
    }

    #[test]
    fn the_chunk_scanner_tells_where_data_and_trailers_lie() {
        let next = b"HTTP/1.1 200 OK";
        for (body, data, trailer) in [
            (
                &b"5\r\nhello\r\n1A;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Trailer: 1\r\n\r\n"[..],
                &b"helloabcdefghijklmnopqrstuvwxyz"[..],
                &b"X-Trailer: 1\r\n\r\n"[..],
            ),
            (b"3\r\n\r\n\n\r\n0 ; x\r\n\r\n", b"\r\n\n", b"\r\n"),
            (b"2\nab\n0\nA: 1\nB: 2\n\n", b"ab", b"A: 1\nB: 2\n\n"),
            (b"0\r\n\r\n", b"", b"\r\n"),
        ] {
            let stream = [body, next].concat();
            for step in 1..=stream.len() {
                let what = format!("{} in {step}s", String::from_utf8_lossy(body));
                let (got_data, got_trailer, end) = spans_in_pieces(&stream, step);
                assert_eq!(end, Some(body.len()), "{what}");
                assert_eq!(got_data, data, "{what}");
                assert_eq!(got_trailer, trailer, "{what}");
            }
        }
        // Cut short: the data so far, no end.
        let (data, trailer, end) = spans_in_pieces(b"5\r\nhello\r\n3\r\nab", 4);
        assert_eq!(
            (&data[..], &trailer[..], end),
            (&b"helloab"[..], &b""[..], None)
        );
    }
}

/// Properties over generated input: what the fuzz targets check (`fuzz/`), kept in
/// `cargo test`.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn request() -> impl Strategy<Value = (Vec<u8>, usize)> {
        let method = prop::sample::select(vec!["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"]);
        let path = "/[a-z0-9/._-]{0,40}(\\?[a-z0-9=&]{0,20})?";
        let header = ("x-[a-z]{1,12}", "[ -~]{0,40}");
        let headers = prop::collection::vec(header, 0..10);
        let body = prop::collection::vec(any::<u8>(), 0..200);
        (method, path, headers, body).prop_map(|(method, path, headers, body)| {
            let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: h\r\n");
            for (name, value) in headers {
                raw.push_str(&format!("{name}: {}\r\n", value.trim()));
            }
            raw.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
            let mut raw = raw.into_bytes();
            raw.extend_from_slice(&body);
            let len = raw.len();
            (raw, len)
        })
    }

    proptest! {
        /// A valid request is forwarded whole once all of it has arrived, and any
        /// prefix of it only asks for more: never refused, never handed off.
        #[test]
        fn a_valid_request_is_forwarded_once_complete((raw, len) in request(), extra in prop::collection::vec(any::<u8>(), 0..20)) {
            let limits = HeadLimits::default();
            let mut whole = raw.clone();
            whole.extend_from_slice(&extra);
            let mut storage = header_storage();
            match parse_request(&whole, &mut storage, &limits, 1024, |_| false) {
                Incoming::Forward(request) => prop_assert_eq!(request.len, len),
                _ => prop_assert!(false, "not forwarded"),
            }
            for cut in 0..len {
                let mut storage = header_storage();
                let outcome = parse_request(&raw[..cut], &mut storage, &limits, 1024, |_| false);
                prop_assert!(
                    matches!(outcome, Incoming::Partial | Incoming::PartialBody),
                    "prefix of {} bytes", cut
                );
            }
        }

        /// Any bytes: an answer, and a forwarded request lies within them.
        #[test]
        fn any_bytes_get_an_answer(raw in prop::collection::vec(any::<u8>(), 0..600)) {
            let limits = HeadLimits { line: 128, head: 512, headers: 8 };
            let mut storage = header_storage();
            if let Incoming::Forward(request) = parse_request(&raw, &mut storage, &limits, 64, |_| false) {
                prop_assert!(request.len <= raw.len());
                prop_assert!(request.headers.len() <= 8);
            }
        }

        /// The chunk scanner finds the same end whether the bytes come whole or split.
        #[test]
        fn the_chunk_scanner_does_not_depend_on_how_bytes_arrive(
            body in prop::collection::vec(prop::sample::select(b"0123456789abcdefABCDEF;=x \r\n".to_vec()), 0..200),
            split in any::<prop::sample::Index>(),
        ) {
            let whole = ChunkScanner::default().feed(&body);
            let split = split.index(body.len() + 1);
            let mut scanner = ChunkScanner::default();
            let pieces = match scanner.feed(&body[..split]) {
                Ok(None) => scanner.feed(&body[split..]).map(|end| end.map(|end| split + end)),
                other => other,
            };
            prop_assert_eq!(whole, pieces);
        }
    }
}

//! What ringlb's own code reads of an HTTP/2 stream's request head, on any header list
//! the h2 crate could hand over (names and values as `http` accepts them): the key, and
//! for a gRPC call its deadline, and the headers a replica is sent. None may panic; no
//! hop-by-hop header, nor one the client's `Connection` names, reaches a replica; a
//! deadline is within what `grpc-timeout` can say (8 digits of hours).
#![no_main]

use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Request};
use libfuzzer_sys::fuzz_target;
use ringlb::proxy::wire::HOP_BY_HOP;
use ringlb::proxy::{KeySource, forward, grpc};

fuzz_target!(|data: &[u8]| {
    // `path\0name\0value\0name\0value…`
    let mut fields = data.split(|b| *b == 0);
    let path = fields.next().unwrap_or_default();
    let mut request = Request::builder()
        .uri(http::Uri::try_from(path).unwrap_or_else(|_| http::Uri::from_static("/")))
        .body(())
        .expect("a request of a valid URI");
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            request.headers_mut().append(name, value);
        }
    }
    let (parts, ()) = request.into_parts();
    let client = SocketAddr::from(([10, 0, 0, 1], 40000));

    for source in [
        "path",
        "query:id",
        "header:x-user-id",
        "cookie:sid",
        "client-ip",
    ] {
        let key = source.parse::<KeySource>().unwrap();
        let _ = key.extract(&parts, Some(client));
    }
    let _ = grpc::is_grpc(&parts.headers);
    if let Some(deadline) = grpc::timeout(&parts.headers) {
        assert!(deadline <= Duration::from_secs(99_999_999 * 3600));
    }

    let named: Vec<HeaderName> = parts
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    let sent = forward::upstream_headers(parts.headers.clone(), Some(client));
    for name in HOP_BY_HOP {
        assert!(sent.get(name).is_none(), "{name} reached a replica");
    }
    for name in named.iter().filter(|n| *n != "x-forwarded-for") {
        assert!(
            sent.get(name).is_none(),
            "{name}, named in Connection, reached a replica"
        );
    }
    let forwarded = sent.get("x-forwarded-for").expect("the client is named");
    assert!(forwarded.to_str().unwrap().ends_with("10.0.0.1"));
});

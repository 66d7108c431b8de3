//! The fast path's request parser on any bytes: it must not panic, and what it
//! forwards must be what it was given, within the limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringlb::proxy::KeySource;
use ringlb::proxy::wire::{self, HeadLimits, Incoming};

fuzz_target!(|data: &[u8]| {
    let limits = HeadLimits {
        line: 512,
        head: 2048,
        headers: 16,
    };
    let mut storage = wire::header_storage();
    match wire::parse_request(data, &mut storage, &limits, 1024, |p| p == "/rep") {
        Incoming::Forward(request) => {
            assert!(request.len <= data.len());
            assert!(request.body.len() <= 1024);
            assert!(request.len <= limits.head + 1024);
            assert!(request.target.starts_with('/'));
            assert!(request.headers.len() <= limits.headers);
            let mut out = Vec::new();
            wire::write_upstream_request(&request, "127.0.0.1", &mut out);
            assert!(out.ends_with(request.body));
            // The upstream head parses back as one request with the same target.
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut parsed = httparse::Request::new(&mut headers);
            let parsed_len = parsed.parse(&out).expect("our own request parses");
            assert!(parsed_len.is_complete());
            assert_eq!(parsed.path, Some(request.target));
            for source in ["path", "query:id", "header:x-user", "cookie:sid"] {
                let key = source.parse::<KeySource>().unwrap();
                let _ = key.extract(&request, None);
            }
        }
        Incoming::Partial | Incoming::PartialBody | Incoming::HandOff | Incoming::Refuse(_) => {}
    }
});

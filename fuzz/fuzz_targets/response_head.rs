//! A replica's response head on any bytes: no panic, and a complete head's length
//! and framing stay within what was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringlb::proxy::wire::{self, Framing};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, raw)) = data.split_first() else {
        return;
    };
    let (head_request, keep_alive) = (flags & 1 == 1, flags & 2 == 2);
    let mut out = Vec::new();
    if let Ok(Some(head)) = wire::parse_response(raw, head_request, keep_alive, Some(&mut out)) {
        assert!(head.head_len <= raw.len());
        assert!(out.ends_with(b"\r\n\r\n"));
        if head_request {
            assert_eq!(head.framing, Framing::Empty);
        }
        if head.framing == Framing::UntilClose {
            assert!(!head.reusable);
        }
        let mut closed = out.clone();
        if !String::from_utf8_lossy(&out).contains("connection: close") {
            wire::announce_close(&mut closed);
        }
    }
});

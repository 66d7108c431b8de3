//! The chunked-body scanner on any bytes, fed whole and in two pieces: the same
//! answer either way, and an end never beyond what it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringlb::proxy::wire::ChunkScanner;

fuzz_target!(|data: &[u8]| {
    let Some((&split, body)) = data.split_first() else {
        return;
    };
    let whole = ChunkScanner::default().feed(body);
    if let Ok(Some(end)) = whole {
        assert!(end <= body.len());
    }
    let split = usize::from(split).min(body.len());
    let mut scanner = ChunkScanner::default();
    let pieces = match scanner.feed(&body[..split]) {
        Ok(Some(end)) => Ok(Some(end)),
        Ok(None) => scanner
            .feed(&body[split..])
            .map(|end| end.map(|end| split + end)),
        Err(error) => Err(error),
    };
    assert_eq!(whole, pieces, "split at {split}");
});

//! `/add` and `/rm` bodies on any bytes: parsed or refused with a reason, and names
//! that pass reach the pool only if they are valid replica names.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringlb::pool::admission::names_to_add;
use ringlb::proxy::admin::parse_change;

fuzz_target!(|data: &[u8]| {
    let Ok(change) = parse_change(data) else {
        return;
    };
    assert!(change.n >= 1);
    if let Ok(names) = names_to_add(&[], &[], change.n.min(1000), &change.hostnames, 1000) {
        for name in &names {
            let name = name.as_str();
            assert!(!name.is_empty() && name.len() <= 63);
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            );
        }
    }
});

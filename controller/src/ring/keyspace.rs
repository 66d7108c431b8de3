//! The default request-key space: the six-digit request ids "100000"..="999999" that the
//! proxy draws when no other key is configured. `Ring::shares` measures over it.

/// First and last default request id.
pub const FIRST_ID: u32 = 100_000;
pub const LAST_ID: u32 = 999_999;

/// Number of keys in the space (900 000).
pub const KEY_COUNT: usize = (LAST_ID - FIRST_ID + 1) as usize;

/// Calls `visit` with the decimal bytes of every id in the space, in order, reusing one
/// buffer.
pub fn for_each_default_key(mut visit: impl FnMut(&[u8])) {
    let mut digits = *b"100000";
    for _ in 0..KEY_COUNT {
        visit(&digits);
        // Increment the decimal string in place.
        for d in digits.iter_mut().rev() {
            if *d == b'9' {
                *d = b'0';
            } else {
                *d += 1;
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visits_every_six_digit_id_once_in_order() {
        let mut expected = FIRST_ID;
        for_each_default_key(|key| {
            assert_eq!(std::str::from_utf8(key).unwrap(), expected.to_string());
            expected += 1;
        });
        assert_eq!(expected, LAST_ID + 1);
    }
}

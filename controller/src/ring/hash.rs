//! The hash functions: how a request key and a (member, virtual node) pair become a `u64`.

use super::config::HashFn;

impl HashFn {
    /// Hash of a request key.
    ///
    /// `quadratic`: the course's H(i) = i + 2i² + 17 (wrapping `u64`), where i is the key
    /// read as a decimal integer if it is 1 to 18 ASCII digits (18 digits always fit a `u64`),
    /// and otherwise i = xxh3_64(key) so that header, cookie or path keys still spread.
    pub fn key_hash(self, key: &[u8]) -> u64 {
        match self {
            HashFn::Quadratic => course_request_hash(decimal_id(key).unwrap_or_else(|| xxh3(key))),
            HashFn::Xxh3 => xxh3(key),
            HashFn::Murmur3 => murmur3_x64_128(key, 0).0,
        }
    }

    /// Hash of virtual node `vnode` of the member called `name` at 1-based canonical
    /// position `position`.
    ///
    /// `quadratic` is the course's Φ(position, vnode) and ignores the name (so a member's
    /// placement depends on where it sorts); the others hash the name seeded with the vnode
    /// index and ignore the position (so a member's placement is its own). Maglev's and the
    /// rank table's permutations (vnodes 0 and 1) and rendezvous (vnode 0) take it as it is;
    /// the rings of many virtual nodes take [`HashFn::vnode_hash`].
    pub fn member_hash(self, name: &str, position: u64, vnode: u32) -> u64 {
        match self {
            HashFn::Quadratic => course_vnode_hash(position, u64::from(vnode)),
            HashFn::Xxh3 => xxhash_rust::xxh3::xxh3_64_with_seed(name.as_bytes(), u64::from(vnode)),
            HashFn::Murmur3 => murmur3_x64_128(name.as_bytes(), vnode).0,
        }
    }

    /// The position of virtual node `vnode` of a point or slot ring: [`HashFn::member_hash`],
    /// except for xxh3 and a name of 1 to 3 bytes, whose points hash the name and the
    /// vnode index together (as ketama hashes "name-vnode").
    ///
    /// Why: for an input of 1 to 3 bytes xxh3 only XORs its seed into the input before
    /// mixing, so with the vnode index as the seed `r-1`'s vnode s and `r-2`'s vnode near
    /// s hashed alike. Two such names that differ in their last character shared nearly
    /// every point, and the one sorted first owned them all (`r-1` held 98.5% of a
    /// six-member point ring). From 4 bytes on, xxh3 mixes the seed in with the input and
    /// the points are as even as random ones (docs/ring-quality.md), so those names keep
    /// their placements. Murmur3 mixes its seed in after the input and needs nothing.
    pub fn vnode_hash(self, name: &str, position: u64, vnode: u32) -> u64 {
        match self {
            HashFn::Xxh3 if name.len() <= 3 => {
                let mut input = [0u8; 7];
                input[..name.len()].copy_from_slice(name.as_bytes());
                input[name.len()..name.len() + 4].copy_from_slice(&vnode.to_le_bytes());
                xxh3(&input[..name.len() + 4])
            }
            _ => self.member_hash(name, position, vnode),
        }
    }
}

/// The course's request hash H(i) = i + 2i² + 17, in wrapping `u64` arithmetic. Taken mod a
/// power of two (such as 512) this equals the exact integer value mod that power.
pub fn course_request_hash(i: u64) -> u64 {
    i.wrapping_add(i.wrapping_mul(i).wrapping_mul(2))
        .wrapping_add(17)
}

/// The course's virtual-server hash Φ(i, j) = i + j + 2j² + 25, in wrapping `u64` arithmetic.
pub fn course_vnode_hash(i: u64, j: u64) -> u64 {
    i.wrapping_add(j)
        .wrapping_add(j.wrapping_mul(j).wrapping_mul(2))
        .wrapping_add(25)
}

/// The key as a decimal integer when it is 1 to 18 ASCII digits.
fn decimal_id(key: &[u8]) -> Option<u64> {
    if key.is_empty() || key.len() > 18 || !key.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(key.iter().fold(0, |n, &d| n * 10 + u64::from(d - b'0')))
}

fn xxh3(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// MurmurHash3's 64-bit finaliser: a bijection on `u64` with full avalanche.
pub fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

/// MurmurHash3_x64_128 (Austin Appleby's reference `MurmurHash3.cpp`), returning (h1, h2).
/// Blocks are read little-endian, as the reference does on x86.
pub fn murmur3_x64_128(data: &[u8], seed: u32) -> (u64, u64) {
    const C1: u64 = 0x87c3_7b91_1142_53d5;
    const C2: u64 = 0x4cf5_ad43_2745_937f;
    let mix_k1 = |k1: u64| k1.wrapping_mul(C1).rotate_left(31).wrapping_mul(C2);
    let mix_k2 = |k2: u64| k2.wrapping_mul(C2).rotate_left(33).wrapping_mul(C1);

    let (mut h1, mut h2) = (u64::from(seed), u64::from(seed));
    let mut blocks = data.chunks_exact(16);
    for block in &mut blocks {
        let k1 = u64::from_le_bytes(block[..8].try_into().expect("8 bytes"));
        let k2 = u64::from_le_bytes(block[8..].try_into().expect("8 bytes"));
        h1 ^= mix_k1(k1);
        h1 = h1
            .rotate_left(27)
            .wrapping_add(h2)
            .wrapping_mul(5)
            .wrapping_add(0x52dc_e729);
        h2 ^= mix_k2(k2);
        h2 = h2
            .rotate_left(31)
            .wrapping_add(h1)
            .wrapping_mul(5)
            .wrapping_add(0x3849_5ab5);
    }

    // The tail: bytes 0..8 go to k1 and 8..16 to k2, little-endian, zero-padded.
    let tail = blocks.remainder();
    let le = |bytes: &[u8]| {
        bytes
            .iter()
            .rev()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
    };
    if tail.len() > 8 {
        h2 ^= mix_k2(le(&tail[8..]));
    }
    if !tail.is_empty() {
        h1 ^= mix_k1(le(&tail[..tail.len().min(8)]));
    }

    let len = data.len() as u64;
    h1 ^= len;
    h2 ^= len;
    h1 = h1.wrapping_add(h2);
    h2 = h2.wrapping_add(h1);
    h1 = fmix64(h1);
    h2 = fmix64(h2);
    h1 = h1.wrapping_add(h2);
    h2 = h2.wrapping_add(h1);
    (h1, h2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn course_request_hash_by_hand() {
        // H(1) = 1 + 2 + 17 = 20.
        assert_eq!(course_request_hash(1), 20);
        // H(123456) = 123456 + 2·123456² + 17 = 123456 + 2·15241383936 + 17 = 30482891345.
        assert_eq!(course_request_hash(123_456), 30_482_891_345);
        // mod 512: 123456 = 241·512 + 64, so 123456 ≡ 64 and 123456² ≡ 64² = 4096 ≡ 0;
        // H ≡ 64 + 0 + 17 = 81.
        assert_eq!(course_request_hash(123_456) % 512, 81);
        // 999999 = 1953·512 + 63 ≡ 63; 2·63² = 7938 = 15·512 + 258 ≡ 258; H ≡ 63 + 258 + 17 = 338.
        assert_eq!(course_request_hash(999_999) % 512, 338);
    }

    #[test]
    fn course_vnode_hash_by_hand() {
        // Φ(1, 0) = 1 + 0 + 0 + 25 = 26; Φ(1, 1) = 1 + 1 + 2 + 25 = 29; Φ(3, 8) = 3 + 8 + 128 + 25 = 164.
        assert_eq!(course_vnode_hash(1, 0), 26);
        assert_eq!(course_vnode_hash(1, 1), 29);
        assert_eq!(course_vnode_hash(3, 8), 164);
    }

    #[test]
    fn quadratic_key_hash_reads_decimal_ids_and_hashes_anything_else() {
        let q = HashFn::Quadratic;
        assert_eq!(q.key_hash(b"123456"), course_request_hash(123_456));
        assert_eq!(q.key_hash(b"000001"), course_request_hash(1));
        // 18 digits are still an id; 19 digits, a sign or an empty key fall back to xxh3.
        assert_eq!(
            q.key_hash(b"999999999999999999"),
            course_request_hash(999_999_999_999_999_999)
        );
        let fallback = |k: &[u8]| course_request_hash(xxhash_rust::xxh3::xxh3_64(k));
        for key in [&b"1234567890123456789"[..], b"-5", b"", b"user-42"] {
            assert_eq!(q.key_hash(key), fallback(key), "{key:?}");
        }
    }

    #[test]
    fn member_hash_uses_position_for_quadratic_and_name_otherwise() {
        assert_eq!(HashFn::Quadratic.member_hash("anything", 2, 1), 30); // Φ(2,1) = 2+1+2+25
        assert_eq!(
            HashFn::Xxh3.member_hash("a", 1, 3),
            HashFn::Xxh3.member_hash("a", 7, 3)
        );
        assert_ne!(
            HashFn::Xxh3.member_hash("a", 1, 3),
            HashFn::Xxh3.member_hash("a", 1, 4)
        );
        assert_eq!(
            HashFn::Murmur3.member_hash("Server1", 9, 1),
            0x5de4_5076_9342_b600
        );
    }

    #[test]
    fn murmur3_matches_reference_vectors() {
        // Vectors from the Python `mmh3` package (a binding of the reference C++ code):
        // mmh3.hash128(data, seed, signed=False) = h2 << 64 | h1.
        let cases: [(&[u8], u32, u64, u64); 6] = [
            (b"", 0, 0, 0),
            (b"", 1, 0x4610_abe5_6eff_5cb5, 0x5162_2daa_78f8_3583),
            (b"hello", 0, 0xcbd8_a7b3_41bd_9b02, 0x5b1e_906a_48ae_1d19),
            (b"hello", 42, 0xc4b8_b3c9_60af_6f08, 0x2334_b875_b0ef_bc7a),
            (
                b"The quick brown fox jumps over the lazy dog",
                0,
                0xe34b_bc7b_bc07_1b6c,
                0x7a43_3ca9_c49a_9347,
            ),
            (
                b"0123456789abcdef0",
                1,
                0xd77e_b7aa_cdec_39b2,
                0xc40f_2571_44e8_3a3a,
            ),
        ];
        for (data, seed, h1, h2) in cases {
            assert_eq!(
                murmur3_x64_128(data, seed),
                (h1, h2),
                "{data:?} seed {seed}"
            );
        }
        assert_eq!(HashFn::Murmur3.key_hash(b"hello"), 0xcbd8_a7b3_41bd_9b02);
    }

    #[test]
    fn fmix64_is_murmur3_finaliser() {
        // From the reference: mmh3.hash128(b"", seed=1) gives h1 = 0x4610abe56eff5cb5,
        // h2 = 0x51622daa78f83583. With no data, x64_128 sets h1 = h2 = 1, then
        // h1 += h2 (2), h2 += h1 (3), h1 = fmix64(2), h2 = fmix64(3), h1 += h2,
        // h2 += h1; so fmix64(3) = h2 - h1 and fmix64(2) = h1 - fmix64(3) (mod 2^64).
        let (h1, h2) = (0x4610_abe5_6eff_5cb5_u64, 0x5162_2daa_78f8_3583_u64);
        let fmix3 = h2.wrapping_sub(h1);
        assert_eq!(fmix3, 0x0b51_81c5_09f8_d8ce);
        assert_eq!(fmix64(3), fmix3);
        assert_eq!(fmix64(2), h1.wrapping_sub(fmix3));
        assert_eq!(fmix64(0), 0, "zero is its fixed point");
    }
}

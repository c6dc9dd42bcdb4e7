//! Sticky bucketing, exactly as published in `docs/bucketing.md`.
//!
//! `h = murmur3_x86_32(seed 0, utf8(salt + ":" + unit))`, `bucket = (h * W) >> 32` where `W` is the
//! sum of the weights, and the first variant whose running weight sum exceeds `bucket` is served.
//! The hash of `salt + ":"` is precomputed once per rollout ([`SaltedHasher`]), so an evaluation
//! hashes only the unit's bytes and never allocates.

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

/// MurmurHash3, x86 32-bit variant, of `data` with `seed`.
pub fn murmur3_x86_32(data: &[u8], seed: u32) -> u32 {
    let mut state = Murmur3::new(seed);
    state.write(data);
    state.finish()
}

#[inline(always)]
fn mix_block(h: u32, block: u32) -> u32 {
    let k = block.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

/// A streaming MurmurHash3 x86_32: feeding the bytes in pieces gives the hash of their
/// concatenation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Murmur3 {
    h: u32,
    /// Bytes not yet forming a whole 4-byte block, little-endian in the low bits.
    tail: u32,
    tail_len: u32,
    total_len: u32,
}

impl Murmur3 {
    pub(crate) fn new(seed: u32) -> Self {
        Murmur3 {
            h: seed,
            tail: 0,
            tail_len: 0,
            total_len: 0,
        }
    }

    #[inline]
    pub(crate) fn write(&mut self, mut data: &[u8]) {
        // The length is taken modulo 2^32, as in the reference implementation.
        self.total_len = self.total_len.wrapping_add(data.len() as u32);
        while self.tail_len != 0 {
            let Some((&b, rest)) = data.split_first() else {
                return;
            };
            self.tail |= u32::from(b) << (8 * self.tail_len);
            self.tail_len += 1;
            data = rest;
            if self.tail_len == 4 {
                self.h = mix_block(self.h, self.tail);
                self.tail = 0;
                self.tail_len = 0;
            }
        }
        let mut chunks = data.chunks_exact(4);
        for chunk in &mut chunks {
            let block = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            self.h = mix_block(self.h, block);
        }
        for (i, &b) in chunks.remainder().iter().enumerate() {
            self.tail |= u32::from(b) << (8 * i);
        }
        self.tail_len = chunks.remainder().len() as u32;
    }

    #[inline]
    pub(crate) fn finish(self) -> u32 {
        let mut h = self.h;
        if self.tail_len != 0 {
            h ^= self.tail.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
        }
        h ^= self.total_len;
        h ^= h >> 16;
        h = h.wrapping_mul(0x85eb_ca6b);
        h ^= h >> 13;
        h = h.wrapping_mul(0xc2b2_ae35);
        h ^ (h >> 16)
    }
}

/// The hash state after `salt + ":"`, so that hashing a unit costs only the unit's bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SaltedHasher(Murmur3);

impl SaltedHasher {
    pub(crate) fn new(salt: &str) -> Self {
        let mut state = Murmur3::new(0);
        state.write(salt.as_bytes());
        state.write(b":");
        SaltedHasher(state)
    }

    /// The same as writing `unit` into the saved state and finishing, without a byte loop: the
    /// `t` bytes pending after the salt are carried in a 64-bit word, and each 4-byte word of
    /// the unit is shifted in behind them, so every murmur block costs one load.
    #[inline]
    pub(crate) fn hash(&self, unit: &[u8]) -> u32 {
        let saved = self.0;
        let shift = 8 * saved.tail_len;
        let mut h = saved.h;
        let mut carry = u64::from(saved.tail);
        let mut chunks = unit.chunks_exact(4);
        for chunk in &mut chunks {
            let word = u64::from(u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]));
            let combined = carry | (word << shift);
            h = mix_block(h, combined as u32);
            carry = combined >> 32;
        }
        let remainder = chunks.remainder();
        let mut word = 0u64;
        for (i, &b) in remainder.iter().enumerate() {
            word |= u64::from(b) << (8 * i);
        }
        let mut combined = carry | (word << shift);
        let mut pending = saved.tail_len + remainder.len() as u32;
        if pending >= 4 {
            h = mix_block(h, combined as u32);
            combined >>= 32;
            pending -= 4;
        }
        Murmur3 {
            h,
            tail: combined as u32,
            tail_len: pending,
            total_len: saved.total_len.wrapping_add(unit.len() as u32),
        }
        .finish()
    }
}

/// `bucket = (h * W) >> 32`: a number in `0..W`.
#[inline]
pub fn bucket(hash: u32, total_weight: u32) -> u32 {
    ((u64::from(hash) * u64::from(total_weight)) >> 32) as u32
}

/// The index of the first weight whose running sum exceeds `bucket`.
///
/// `bucket` must be below the sum of `weights` (as [`bucket`] guarantees); otherwise the last
/// index is returned rather than panicking.
#[inline]
pub fn pick(weights: impl IntoIterator<Item = u32>, bucket: u32) -> usize {
    let mut running: u64 = 0;
    let mut last = 0;
    for (i, w) in weights.into_iter().enumerate() {
        running += u64::from(w);
        if running > u64::from(bucket) {
            return i;
        }
        last = i;
    }
    last
}

/// The same as [`pick`], from the running sums precomputed at compile time, and without a
/// branch per variant (a 50/50 split would mispredict half the time): the index of the first
/// running sum greater than `bucket` is the number of running sums not greater than it.
#[inline]
pub(crate) fn pick_cumulative(cumulative: &[u32], bucket: u32) -> usize {
    let below: usize = cumulative.iter().map(|&c| usize::from(c <= bucket)).sum();
    below.min(cumulative.len().saturating_sub(1))
}

/// Hashes a bucketing unit after the salt: strings as they are, integers in decimal. `None`
/// when the value cannot be bucketed (empty string, fraction, any other type).
#[inline]
pub(crate) fn hash_unit(hasher: &SaltedHasher, value: &serde_json::Value) -> Option<u32> {
    match value {
        serde_json::Value::String(s) if !s.is_empty() => Some(hasher.hash(s.as_bytes())),
        serde_json::Value::Number(n) => int_unit(n).map(|buf| hasher.hash(buf.as_bytes())),
        _ => None,
    }
}

/// The unit as hashed, for explanations.
pub(crate) fn unit_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => int_unit(n)
            .map(|buf| String::from_utf8_lossy(buf.as_bytes()).into_owned())
            .unwrap_or_default(),
        _ => String::new(),
    }
}

#[cold]
fn int_unit(n: &serde_json::Number) -> Option<IntBuf> {
    if let Some(i) = n.as_i64() {
        Some(IntBuf::signed(i))
    } else {
        n.as_u64().map(|u| IntBuf::unsigned(u, false))
    }
}

/// A decimal integer rendered into a fixed buffer (20 digits and a sign fit).
pub(crate) struct IntBuf {
    buf: [u8; 21],
    start: usize,
}

impl IntBuf {
    fn signed(i: i64) -> Self {
        IntBuf::unsigned(i.unsigned_abs(), i < 0)
    }

    fn unsigned(mut u: u64, negative: bool) -> Self {
        let mut buf = [0u8; 21];
        let mut pos = buf.len();
        loop {
            pos -= 1;
            buf[pos] = b'0' + (u % 10) as u8;
            u /= 10;
            if u == 0 {
                break;
            }
        }
        if negative {
            pos -= 1;
            buf[pos] = b'-';
        }
        IntBuf { buf, start: pos }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_in_pieces_equals_one_shot() {
        let data = b"new-checkout:user-42 and some more bytes";
        for split in 0..data.len() {
            let mut s = Murmur3::new(0);
            s.write(&data[..split]);
            s.write(&data[split..]);
            assert_eq!(s.finish(), murmur3_x86_32(data, 0), "split at {split}");
        }
    }

    #[test]
    fn the_salted_shortcut_equals_hashing_the_whole_string() {
        for salt in ["", "a", "ab", "abc", "abcd", "new-checkout", "ünï"] {
            let hasher = SaltedHasher::new(salt);
            for len in 0..40 {
                let unit: String = "user-0123456789-abcdefghijklmnopqrstuvwxyz"
                    .chars()
                    .take(len)
                    .collect();
                let whole = format!("{salt}:{unit}");
                assert_eq!(
                    hasher.hash(unit.as_bytes()),
                    murmur3_x86_32(whole.as_bytes(), 0),
                    "{whole:?}"
                );
            }
        }
    }

    #[test]
    fn published_reference_vectors() {
        // From the reference implementation's test suite (SMHasher) and common ports.
        assert_eq!(murmur3_x86_32(b"", 0), 0);
        assert_eq!(murmur3_x86_32(b"", 1), 0x514e_28b7);
        assert_eq!(murmur3_x86_32(b"", 0xffff_ffff), 0x81f1_6f39);
        assert_eq!(murmur3_x86_32(&[0, 0, 0, 0], 0), 0x2362_f9de);
        assert_eq!(murmur3_x86_32(b"aaaa", 0x9747_b28c), 0x5a97_808a);
        assert_eq!(murmur3_x86_32(b"Hello, world!", 0x9747_b28c), 0x2488_4cba);
        assert_eq!(
            murmur3_x86_32(b"The quick brown fox jumps over the lazy dog", 0x9747_b28c),
            0x2fa8_26cd
        );
    }

    #[test]
    fn integers_render_in_decimal() {
        for (v, s) in [
            (0i64, "0"),
            (7, "7"),
            (-12, "-12"),
            (i64::MIN, "-9223372036854775808"),
        ] {
            assert_eq!(IntBuf::signed(v).as_bytes(), s.as_bytes());
        }
        assert_eq!(
            IntBuf::unsigned(u64::MAX, false).as_bytes(),
            b"18446744073709551615"
        );
    }

    #[test]
    fn picking_from_running_sums_equals_walking_the_weights() {
        let mut state = 1u64;
        let mut next = move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) as u32
        };
        for _ in 0..20_000 {
            let n = 1 + next() as usize % 6;
            let weights: Vec<u32> = (0..n)
                .map(|_| if next() % 3 == 0 { 0 } else { next() % 50 })
                .collect();
            let total: u32 = weights.iter().sum();
            if total == 0 {
                continue;
            }
            let cumulative: Vec<u32> = weights
                .iter()
                .scan(0, |run, &w| {
                    *run += w;
                    Some(*run)
                })
                .collect();
            let b = next() % total;
            assert_eq!(
                pick_cumulative(&cumulative, b),
                pick(weights.iter().copied(), b),
                "{weights:?} {b}"
            );
        }
    }

    #[test]
    fn pick_walks_running_sums() {
        assert_eq!(pick([1, 1], 0), 0);
        assert_eq!(pick([1, 1], 1), 1);
        assert_eq!(pick([0, 5, 5], 0), 1);
        assert_eq!(pick([3, 0, 2], 3), 2);
    }
}

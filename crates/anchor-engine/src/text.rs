//! Small string helpers on the evaluation paths.

/// Folds case for case-insensitive comparison; borrows when there is nothing to change.
pub(crate) fn fold_case(s: &str) -> std::borrow::Cow<'_, str> {
    if s.is_ascii() {
        if s.bytes().any(|b| b.is_ascii_uppercase()) {
            std::borrow::Cow::Owned(s.to_ascii_lowercase())
        } else {
            std::borrow::Cow::Borrowed(s)
        }
    } else {
        // Character by character, unlike `str::to_lowercase`, whose final-sigma rule would make
        // "ΟΔΟΣ" fold differently alone and inside "ΟΔΟΣΤΡΩΜΑ"; final sigma folds to sigma.
        std::borrow::Cow::Owned(
            s.chars()
                .flat_map(char::to_lowercase)
                .map(|c| if c == 'ς' { 'σ' } else { c })
                .collect(),
        )
    }
}

/// One bounds check and one unaligned load each.
#[inline(always)]
fn load4(s: &[u8], i: usize) -> u32 {
    <[u8; 4]>::try_from(&s[i..i + 4]).map_or(0, u32::from_le_bytes)
}

#[inline(always)]
fn load8(s: &[u8], i: usize) -> u64 {
    <[u8; 8]>::try_from(&s[i..i + 8]).map_or(0, u64::from_le_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_agree_with_string_equality() {
        let words: Vec<String> = (0..40)
            .flat_map(|n| {
                let base: String = (0..n).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
                let mut variants = vec![base.clone()];
                for pos in 0..n {
                    let mut bytes = base.clone().into_bytes();
                    bytes[pos] = b'Z';
                    variants.push(String::from_utf8(bytes).unwrap());
                }
                variants
            })
            .collect();
        for a in &words {
            let fa = Fingerprint::of(a);
            for b in &words {
                let fb = Fingerprint::of(b);
                assert_eq!(fingerprint_eq(&fa, a, &fb, b), a == b, "{a:?} vs {b:?}");
            }
        }
    }
}

/// A string's length and up to 16 of its bytes in two words: equal fingerprints of strings of at
/// most 16 bytes mean equal strings, so lookups of short keys compare words stored next to the
/// hash-table slot instead of following a pointer to the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fingerprint {
    len: usize,
    lo: u64,
    hi: u64,
}

impl Fingerprint {
    #[inline(always)]
    pub(crate) fn of(s: &str) -> Self {
        let b = s.as_bytes();
        let n = b.len();
        let (lo, hi) = match n {
            0 => (0, 0),
            1..=3 => (
                u64::from(b[0]) | u64::from(b[n / 2]) << 8 | u64::from(b[n - 1]) << 16,
                0,
            ),
            4..=7 => (u64::from(load4(b, 0)) | u64::from(load4(b, n - 4)) << 32, 0),
            _ => (load8(b, 0), load8(b, n - 8)),
        };
        Fingerprint { len: n, lo, hi }
    }

    /// Equality without branches.
    #[inline(always)]
    pub(crate) fn same(&self, other: &Fingerprint) -> bool {
        ((self.len ^ other.len) as u64 | (self.lo ^ other.lo) | (self.hi ^ other.hi)) == 0
    }

    /// Whether equal fingerprints prove equal strings (16 bytes or fewer).
    /// A fingerprint no string has (no string is `usize::MAX` bytes long): an empty slot.
    pub(crate) const NONE: Fingerprint = Fingerprint {
        len: usize::MAX,
        lo: 0,
        hi: 0,
    };

    /// A 64-bit mix of the fingerprint under `seed` (odd), whose top bits pick a slot of a
    /// perfect hash table; only a function of the fingerprint, so equal strings get equal
    /// slots.
    #[inline(always)]
    pub(crate) fn mix(&self, seed: u64) -> u64 {
        (self.lo ^ self.hi.rotate_left(29) ^ (self.len as u64).rotate_left(53)).wrapping_mul(seed)
    }

    #[inline(always)]
    pub(crate) fn is_exact(&self) -> bool {
        self.len <= 16
    }
}

/// `s` equals the string whose fingerprint is `fp` and whose text is `text`, given `s`'s own
/// fingerprint `s_fp`: words first, the text only for long strings.
#[inline(always)]
pub(crate) fn fingerprint_eq(fp: &Fingerprint, text: &str, s_fp: &Fingerprint, s: &str) -> bool {
    fp.same(s_fp) && (s_fp.is_exact() || text == s)
}

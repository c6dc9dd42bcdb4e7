//! Semantic versions (SemVer 2.0 precedence), parsed without allocating.
//!
//! Accepted beyond the strict grammar, because app versions in the wild look like this: a leading
//! `v` or `V`, and partial versions (`2` and `2.1` mean `2.0.0` and `2.1.0`). Build metadata
//! (`+…`) is validated and ignored, as precedence requires.

use std::cmp::Ordering;

/// A parsed version borrowing its pre-release part from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Version<'a> {
    pub(crate) major: u64,
    pub(crate) minor: u64,
    pub(crate) patch: u64,
    /// The dot-separated pre-release identifiers, empty for a release.
    pub(crate) pre: &'a str,
}

/// The same, owning its pre-release part: what the compiler keeps for condition values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OwnedVersion {
    major: u64,
    minor: u64,
    patch: u64,
    pre: Box<str>,
}

impl OwnedVersion {
    pub(crate) fn parse(s: &str) -> Option<Self> {
        let v = Version::parse(s)?;
        Some(OwnedVersion {
            major: v.major,
            minor: v.minor,
            patch: v.patch,
            pre: v.pre.into(),
        })
    }

    pub(crate) fn as_version(&self) -> Version<'_> {
        Version {
            major: self.major,
            minor: self.minor,
            patch: self.patch,
            pre: &self.pre,
        }
    }
}

/// A version parsed once, when a context is built, from one of its string attributes: the
/// numeric core, and where the pre-release part lies in that string. Conditions then compare
/// numbers instead of parsing the attribute again for every flag and every evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ParsedVersion {
    major: u64,
    minor: u64,
    patch: u64,
    pre_start: u32,
    pre_end: u32,
}

impl ParsedVersion {
    /// `None` when `s` is not a version, or when its pre-release part cannot be located (then
    /// the evaluator parses `s` itself, as it would without this cache).
    #[inline]
    pub(crate) fn of(s: &str) -> Option<Self> {
        // Most attributes (countries, plans, ids) fail on the first byte; skip the call.
        if !matches!(s.as_bytes().first(), Some(b'0'..=b'9' | b'v' | b'V')) {
            return None;
        }
        let v = Version::parse(s)?;
        let (pre_start, pre_end) = if v.pre.is_empty() {
            (0, 0)
        } else {
            let start = (v.pre.as_ptr() as usize).checked_sub(s.as_ptr() as usize)?;
            let end = start.checked_add(v.pre.len())?;
            (u32::try_from(start).ok()?, u32::try_from(end).ok()?)
        };
        Some(ParsedVersion {
            major: v.major,
            minor: v.minor,
            patch: v.patch,
            pre_start,
            pre_end,
        })
    }

    /// The version, borrowing its pre-release part from `s`, the string it was parsed from.
    #[inline]
    pub(crate) fn with_text<'a>(&self, s: &'a str) -> Version<'a> {
        Version {
            major: self.major,
            minor: self.minor,
            patch: self.patch,
            pre: s
                .get(self.pre_start as usize..self.pre_end as usize)
                .unwrap_or_default(),
        }
    }
}

impl<'a> Version<'a> {
    /// One pass over the bytes: the numeric core, then the pre-release and build parts, which
    /// are validated but not split (precedence splits the pre-release lazily).
    #[inline]
    pub(crate) fn parse(s: &'a str) -> Option<Self> {
        let b = s.as_bytes();
        let mut i = usize::from(matches!(b.first(), Some(b'v' | b'V')));
        let mut core = [0u64; 3];
        let mut parts = 1;
        let mut digits = 0usize;
        let mut first = 0u8;
        // One pass over the core `N[.N[.N]]`, one byte at a time, with no inner loops: each
        // number has at least one digit, no leading zero, and fits in a u64.
        while let Some(&c) = b.get(i) {
            if c.is_ascii_digit() {
                let n = &mut core[parts - 1];
                *n = if digits < 19 {
                    *n * 10 + u64::from(c - b'0')
                } else {
                    n.checked_mul(10)?.checked_add(u64::from(c - b'0'))?
                };
                if digits == 0 {
                    first = c;
                }
                digits += 1;
            } else if c == b'.' && parts < 3 {
                if digits == 0 || (first == b'0' && digits > 1) {
                    return None;
                }
                parts += 1;
                digits = 0;
            } else {
                break;
            }
            i += 1;
        }
        if digits == 0 || (first == b'0' && digits > 1) {
            return None;
        }
        if i == b.len() {
            // The common case: a plain release, nothing left to validate.
            return Some(Version {
                major: core[0],
                minor: core[1],
                patch: core[2],
                pre: "",
            });
        }
        let rest = s.get(i..)?;
        let (pre, build) = match rest.as_bytes().first() {
            None => ("", None),
            Some(b'-') => match rest[1..].split_once('+') {
                Some((pre, build)) => (pre, Some(build)),
                None => (&rest[1..], None),
            },
            Some(b'+') => ("", Some(&rest[1..])),
            Some(_) => return None,
        };
        if rest.starts_with('-') && !pre.split('.').all(valid_pre_identifier) {
            return None;
        }
        if let Some(build) = build
            && !build
                .split('.')
                .all(|id| !id.is_empty() && id.bytes().all(is_ident_byte))
        {
            return None;
        }
        Some(Version {
            major: core[0],
            minor: core[1],
            patch: core[2],
            pre,
        })
    }

    #[inline]
    pub(crate) fn precedence(&self, other: &Version<'_>) -> Ordering {
        let core =
            (self.major, self.minor, self.patch).cmp(&(other.major, other.minor, other.patch));
        if core != Ordering::Equal || (self.pre.is_empty() && other.pre.is_empty()) {
            return core;
        }
        compare_pre(self.pre, other.pre)
    }
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-'
}

fn valid_pre_identifier(id: &str) -> bool {
    !id.is_empty()
        && id.bytes().all(is_ident_byte)
        && !(id.len() > 1 && id.starts_with('0') && id.bytes().all(|b| b.is_ascii_digit()))
}

/// Pre-release precedence (SemVer 2.0 §11): a release outranks any pre-release; identifiers
/// compare numerically when both are numeric, numeric ones rank below alphanumeric ones, others
/// compare in ASCII order; a longer list wins when all shared identifiers are equal.
fn compare_pre(a: &str, b: &str) -> Ordering {
    match (a.is_empty(), b.is_empty()) {
        (true, true) => return Ordering::Equal,
        (true, false) => return Ordering::Greater,
        (false, true) => return Ordering::Less,
        (false, false) => {}
    }
    let mut left = a.split('.');
    let mut right = b.split('.');
    loop {
        match (left.next(), right.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let x_num = x.bytes().all(|c| c.is_ascii_digit());
                let y_num = y.bytes().all(|c| c.is_ascii_digit());
                let ord = match (x_num, y_num) {
                    // Without leading zeros a longer number is larger, so no overflow is possible.
                    (true, true) => x.len().cmp(&y.len()).then_with(|| x.cmp(y)),
                    (true, false) => Ordering::Less,
                    (false, true) => Ordering::Greater,
                    (false, false) => x.cmp(y),
                };
                if ord != Ordering::Equal {
                    return ord;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmp(a: &str, b: &str) -> Ordering {
        Version::parse(a)
            .unwrap()
            .precedence(&Version::parse(b).unwrap())
    }

    #[test]
    fn the_specification_example_ordering_holds() {
        let ordered = [
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-alpha.beta",
            "1.0.0-beta",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0-rc.1",
            "1.0.0",
            "2.0.0",
            "2.1.0",
            "2.1.1",
        ];
        for pair in ordered.windows(2) {
            assert_eq!(cmp(pair[0], pair[1]), Ordering::Less, "{pair:?}");
            assert_eq!(cmp(pair[1], pair[0]), Ordering::Greater, "{pair:?}");
        }
    }

    #[test]
    fn components_up_to_u64_max_are_accepted() {
        let v = Version::parse("18446744073709551615.0.1").unwrap();
        assert_eq!((v.major, v.minor, v.patch), (u64::MAX, 0, 1));
        assert_eq!(
            cmp("1234567890123456789.0.0", "1234567890123456788.9.9"),
            Ordering::Greater
        );
    }

    #[test]
    fn partial_versions_and_a_leading_v_are_accepted() {
        assert_eq!(cmp("v1.2", "1.2.0"), Ordering::Equal);
        assert_eq!(cmp("2", "2.0.0"), Ordering::Equal);
        assert_eq!(cmp("V3.0.0+build.7", "3.0.0"), Ordering::Equal);
        assert_eq!(cmp("1.2-beta", "1.2.0-beta"), Ordering::Equal);
    }

    #[test]
    fn versions_parsed_in_advance_equal_versions_parsed_now() {
        for s in [
            "2.3.1",
            "v1.2",
            "1.0.0-alpha.1",
            "V3.0.0-rc.1+build.7",
            "3.0.0+build.7",
            "10",
            "DE",
            "",
            "1.2.3-01",
            "user-000123",
        ] {
            let now = Version::parse(s);
            let ahead = ParsedVersion::of(s).map(|p| p.with_text(s));
            assert_eq!(ahead, now, "{s:?}");
        }
    }

    #[test]
    fn malformed_versions_are_rejected() {
        for bad in [
            "",
            "v",
            "1.",
            ".1",
            "1.2.3.4",
            "01.2.3",
            "1.2.3-",
            "1.2.3-01",
            "1.2.3+",
            "1.2.3-a..b",
            "abc",
            "1.x",
            "1.2.3-é",
            " 1.2.3",
        ] {
            assert!(Version::parse(bad).is_none(), "{bad:?} should not parse");
        }
    }
}

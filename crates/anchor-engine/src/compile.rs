//! From the serde model to an immutable, indexed [`Snapshot`].
//!
//! Compiling validates everything and reports every problem at once, each with the JSON pointer
//! (RFC 6901) of the offending value inside the [`EnvironmentConfig`]. It also does all the work
//! that evaluation must not repeat: flags and segments indexed by key, references resolved to
//! indices, regexes compiled, versions and instants parsed, segment key lists put into hash sets,
//! the hash state of each rollout's salt precomputed.
//!
//! A flag with problems still gets into the snapshot, as a broken flag that evaluates to reason
//! `ERROR` with error code `PARSE_ERROR`: one bad flag must not take the others down in an SDK.

use regex::{Regex, RegexBuilder};
use serde::Serialize;
use serde_json::{Number, Value};

use crate::bucket::SaltedHasher;
use crate::context::{AttributePath, TARGETING_KEY};
use crate::model::{
    Condition, EnvironmentConfig, FlagConfig, FlagKind, Operator, Rollout, Serve, is_valid_key,
};
use crate::semver::OwnedVersion;
use crate::text::{Fingerprint, fold_case};
use crate::timestamp::{Timestamp, is_valid_date};

/// Prerequisite chains longer than this are rejected (a flag, its prerequisite, theirs, …).
pub const MAX_PREREQUISITE_DEPTH: usize = 8;
/// Segments may reference segments; nesting deeper than this is rejected.
pub const MAX_SEGMENT_DEPTH: usize = 8;
/// Shared prerequisites (or nested segments) are evaluated once per path that reaches them; a
/// flag whose evaluation would take more nested evaluations than this is rejected, so that no
/// configuration can make one evaluation take exponential time.
pub const MAX_NESTED_EVALUATIONS: u64 = 256;
/// The most variants a flag may have.
pub const MAX_VARIANTS: usize = 1_000;
/// The most rules a flag may have.
pub const MAX_RULES: usize = 5_000;
/// The most prerequisites a flag may have.
pub const MAX_PREREQUISITES: usize = 100;
/// The longest accepted regular expression, in bytes.
pub const MAX_REGEX_LEN: usize = 1024;
/// The compiled size limit of one regular expression, in bytes.
const REGEX_SIZE_LIMIT: usize = 256 * 1024;
/// `in` lists longer than this are looked up in a hash set rather than scanned.
const SMALL_SET: usize = 16;

pub(crate) type Map<V> = crate::keymap::KeyMap<V>;

/// One problem found while compiling, located by a JSON pointer into the input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Diagnostic {
    /// An RFC 6901 JSON pointer, e.g. `/flags/0/config/rules/2/conditions/0/values/1`.
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// An immutable, compiled environment. Cheap to share between threads (`Send + Sync`); wrap it
/// in an `Arc` to swap it atomically.
#[derive(Debug)]
pub struct Snapshot {
    /// Sorted by key, so bulk evaluation has a stable order.
    pub(crate) flags: Vec<CompiledFlag>,
    pub(crate) flag_index: Map<u32>,
    pub(crate) segments: Vec<CompiledSegment>,
}

impl Snapshot {
    /// A snapshot without flags or segments.
    pub fn empty() -> Self {
        compile(&EnvironmentConfig::default()).0
    }

    /// The number of flags.
    pub fn len(&self) -> usize {
        self.flags.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flags.is_empty()
    }

    /// The flag keys, in order.
    pub fn flag_keys(&self) -> impl Iterator<Item = &str> {
        self.flags.iter().map(|f| &*f.key)
    }

    /// The variant names of the flag at `flag_index` (a position in [`Snapshot::flag_keys`]'s
    /// order, as [`Evaluation::flag_index`](crate::Evaluation::flag_index) reports it), in the
    /// order [`Evaluation::variant_index`](crate::Evaluation::variant_index) counts them.
    pub fn variant_names(&self, flag_index: usize) -> impl Iterator<Item = &str> {
        self.flags
            .get(flag_index)
            .into_iter()
            .flat_map(|f| f.variants.iter().map(|(name, _)| &**name))
    }

    /// The kind of a flag, if it exists.
    pub fn flag_kind(&self, key: &str) -> Option<FlagKind> {
        self.flag(key).map(|f| f.kind)
    }

    #[inline]
    pub(crate) fn flag(&self, key: &str) -> Option<&CompiledFlag> {
        self.flag_index.get(key).map(|&i| &self.flags[i as usize])
    }
}

#[derive(Debug)]
pub(crate) struct CompiledFlag {
    pub(crate) key: Box<str>,
    /// The flag's position in the snapshot's key order.
    pub(crate) index: u32,
    pub(crate) kind: FlagKind,
    pub(crate) version: u64,
    pub(crate) variants: Vec<(Box<str>, Value)>,
    /// `None` when the flag failed to compile.
    pub(crate) config: Option<CompiledConfig>,
    /// The evaluation of a flag whose result does not depend on the context (switched off, or
    /// on with one variant for everyone and nothing else), precomputed so that the fast path
    /// returns it without walking the configuration; 0 when it depends on the context.
    pub(crate) fixed: u64,
}

#[derive(Debug)]
pub(crate) struct CompiledConfig {
    pub(crate) enabled: bool,
    pub(crate) off_variant: u32,
    /// (flag index, variant index) pairs.
    pub(crate) prerequisites: Vec<CompiledPrerequisite>,
    /// Targeting key to variant index; `None` when there are no individual targets.
    pub(crate) targets: Option<Map<u32>>,
    pub(crate) rules: Vec<CompiledRule>,
    pub(crate) default_serve: CompiledServe,
    /// No prerequisites, targets or rules, and the default serve is one variant.
    pub(crate) is_static: bool,
    /// On, with no prerequisites, targets or rules: the default serve is the answer (a plain
    /// rollout, for one).
    pub(crate) direct: bool,
}

#[derive(Debug)]
pub(crate) struct CompiledPrerequisite {
    /// The prerequisite flag's key, for reporting.
    pub(crate) key: Box<str>,
    pub(crate) flag: u32,
    pub(crate) variant: u32,
}

#[derive(Debug)]
pub(crate) struct CompiledRule {
    pub(crate) id: Box<str>,
    /// Its position in the flag's rule list.
    pub(crate) index: u32,
    pub(crate) conditions: Vec<CompiledCondition>,
    pub(crate) serve: CompiledServe,
}

#[derive(Debug)]
pub(crate) enum CompiledServe {
    Variant(u32),
    Rollout(CompiledRollout),
}

#[derive(Debug)]
pub(crate) struct CompiledRollout {
    /// (variant index, weight) in order.
    pub(crate) variants: Vec<(u32, u32)>,
    /// The running sums of the weights.
    pub(crate) cumulative: Box<[u32]>,
    pub(crate) total_weight: u32,
    pub(crate) bucket_by: AttributePath,
    pub(crate) salt: Box<str>,
    pub(crate) hasher: SaltedHasher,
}

#[derive(Debug)]
pub(crate) struct CompiledCondition {
    pub(crate) attribute: AttributePath,
    pub(crate) operator: Operator,
    pub(crate) negate: bool,
    pub(crate) test: Test,
    /// The values as written, for explanations.
    pub(crate) values: Box<[Value]>,
}

#[derive(Debug)]
pub(crate) enum Test {
    In(ValueSet),
    StartsWith(StringList),
    EndsWith(StringList),
    Contains(StringList),
    Matches(Vec<Regex>),
    /// The operator decides the comparison.
    Number(Box<[Number]>),
    Semver(Box<[OwnedVersion]>),
    Time(Box<[Timestamp]>),
    Exists,
    Segments(Box<[u32]>),
}

/// Strings to compare with, lowercased when the comparison ignores case.
#[derive(Debug)]
pub(crate) struct StringList {
    pub(crate) items: Box<[Box<str>]>,
    pub(crate) case_insensitive: bool,
}

/// The values of an `in` condition, split by type.
#[derive(Debug)]
pub(crate) struct ValueSet {
    pub(crate) strings: StringSet,
    pub(crate) numbers: Box<[Number]>,
    pub(crate) booleans: [bool; 2],
    pub(crate) case_insensitive: bool,
}

#[derive(Debug)]
pub(crate) enum StringSet {
    /// Scanned whole, without an early exit, comparing fingerprints: no branch depends on which
    /// item matches, so varied contexts cost no mispredictions.
    Small(Box<[(Fingerprint, Box<str>)]>),
    /// Items of at most 16 bytes (so fingerprints are exact) placed by a seed found at compile
    /// time so that no two share a slot: a lookup compares one slot, with no loop and no
    /// branch on the answer.
    Perfect {
        seed: u64,
        shift: u32,
        slots: Box<[Fingerprint]>,
    },
    Large(Map<()>),
}

/// A slot table for `items` in which no two share a slot, when one is found quickly.
fn perfect_slots(items: &[Box<str>]) -> Option<StringSet> {
    if items.is_empty() || items.iter().any(|s| s.len() > 16) {
        return None;
    }
    let fps: Vec<Fingerprint> = items.iter().map(|s| Fingerprint::of(s)).collect();
    // Four to eight slots per item, so that a seed without collisions comes within a few tries.
    for bits in [
        (items.len() * 4).next_power_of_two().trailing_zeros(),
        (items.len() * 8).next_power_of_two().trailing_zeros(),
    ] {
        let shift = 64 - bits;
        // A fixed sequence of odd seeds: the same table on every compile.
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..64 {
            let mut slots = vec![Fingerprint::NONE; 1 << bits];
            let placed = fps.iter().all(|fp| {
                let slot = &mut slots[(fp.mix(seed) >> shift) as usize];
                if *slot == Fingerprint::NONE || slot.same(fp) {
                    *slot = *fp;
                    true
                } else {
                    false
                }
            });
            if placed {
                return Some(StringSet::Perfect {
                    seed,
                    shift,
                    slots: slots.into(),
                });
            }
            seed = seed
                .wrapping_mul(0x5851_f42d_4c95_7f2d)
                .wrapping_add(0x1405_7b7e_f767_814f)
                | 1;
        }
    }
    None
}

impl StringSet {
    fn new(items: Vec<Box<str>>) -> Self {
        if items.len() <= SMALL_SET {
            if let Some(set) = perfect_slots(&items) {
                return set;
            }
            StringSet::Small(
                items
                    .into_iter()
                    .map(|s| (Fingerprint::of(&s), s))
                    .collect(),
            )
        } else {
            StringSet::Large(items.into_iter().map(|s| (s, ())).collect())
        }
    }

    #[inline(always)]
    pub(crate) fn contains(&self, s: &str) -> bool {
        self.contains_known(s, &Fingerprint::of(s))
    }

    /// `contains` with `s`'s fingerprint computed in advance.
    #[inline(always)]
    pub(crate) fn contains_known(&self, s: &str, fp: &Fingerprint) -> bool {
        match self {
            StringSet::Small(items) => {
                let fp = *fp;
                if fp.is_exact() {
                    items
                        .iter()
                        .fold(false, |found, (f, _)| found | f.same(&fp))
                } else {
                    items.iter().any(|(f, text)| f.same(&fp) && **text == *s)
                }
            }
            StringSet::Perfect { seed, shift, slots } => slots
                .get((fp.mix(*seed) >> shift) as usize)
                .is_some_and(|slot| slot.same(fp)),
            StringSet::Large(set) => set.contains_key(s),
        }
    }
}

#[derive(Debug)]
pub(crate) struct CompiledSegment {
    pub(crate) key: Box<str>,
    pub(crate) included: Map<()>,
    pub(crate) excluded: Map<()>,
    pub(crate) rules: Vec<CompiledSegmentRule>,
}

#[derive(Debug)]
pub(crate) struct CompiledSegmentRule {
    pub(crate) id: Box<str>,
    pub(crate) conditions: Vec<CompiledCondition>,
}

/// Validates and compiles an environment. Always returns a usable snapshot; any problem is in
/// the diagnostics (and the flags concerned evaluate to `PARSE_ERROR`).
pub fn compile(config: &EnvironmentConfig) -> (Snapshot, Vec<Diagnostic>) {
    let mut c = Compiler {
        diagnostics: Vec::new(),
        segment_index: Map::default(),
        flag_index: Map::default(),
        broken_segments: Vec::new(),
    };

    for (i, segment) in config.segments.iter().enumerate() {
        let path = format!("/segments/{i}/key");
        // An invalid key is still indexed, so that references to it say "has errors" rather
        // than "unknown".
        if c.segment_index.contains_key(segment.key.as_str()) {
            c.report(path, format!("duplicate segment key `{}`", segment.key));
            continue;
        }
        if !is_valid_key(&segment.key) {
            c.report(path, bad_key_message("segment key", &segment.key));
        }
        c.segment_index
            .insert(segment.key.as_str().into(), i as u32);
    }
    for (i, entry) in config.flags.iter().enumerate() {
        let path = format!("/flags/{i}/flag/key");
        let key = &entry.flag.key;
        // A flag with an invalid key stays in the snapshot (as a broken flag), like any flag
        // with problems; only a duplicate is left out.
        if c.flag_index.contains_key(key.as_str()) {
            c.report(path, format!("duplicate flag key `{key}`"));
            continue;
        }
        if !is_valid_key(key) {
            c.report(path, bad_key_message("flag key", key));
        }
        c.flag_index.insert(key.as_str().into(), i as u32);
    }

    // Segments first: a flag using a segment with problems is broken too, because a segment
    // missing a condition could let everyone in (think of a negated `segment_match`).
    let mut broken = vec![false; config.segments.len()];
    let mut segments: Vec<CompiledSegment> = Vec::with_capacity(config.segments.len());
    for (i, s) in config.segments.iter().enumerate() {
        let before = c.diagnostics.len();
        segments.push(c.segment(i, s));
        broken[i] = c.diagnostics.len() > before || !is_valid_key(&s.key);
    }
    c.break_segment_cycles(&mut segments, &mut broken);
    c.broken_segments = broken;

    let mut flags: Vec<CompiledFlag> = config
        .flags
        .iter()
        .enumerate()
        .map(|(i, entry)| c.flag(i, config, entry))
        .collect();
    c.check_prerequisite_graph(config, &mut flags);

    // Keep only the first flag of each key (duplicates were reported), sorted by key, and remap
    // prerequisite indices into the new order.
    let mut order: Vec<u32> = c.flag_index.values().copied().collect();
    order.sort_by(|&a, &b| flags[a as usize].key.cmp(&flags[b as usize].key));
    let mut new_position = vec![u32::MAX; flags.len()];
    for (new, &old) in order.iter().enumerate() {
        new_position[old as usize] = new as u32;
    }
    let mut slots: Vec<Option<CompiledFlag>> = flags.into_iter().map(Some).collect();
    let mut sorted: Vec<CompiledFlag> = order
        .iter()
        .filter_map(|&old| slots[old as usize].take())
        .collect();
    for (position, flag) in sorted.iter_mut().enumerate() {
        flag.index = position as u32;
        if let Some(config) = &mut flag.config {
            for p in &mut config.prerequisites {
                p.flag = new_position[p.flag as usize];
            }
        }
        // After the prerequisite check, which may have found the configuration broken.
        flag.fixed = crate::eval::fixed_bits(flag);
    }
    let flag_index = sorted
        .iter()
        .enumerate()
        .map(|(i, f)| (f.key.clone(), i as u32))
        .collect();

    let snapshot = Snapshot {
        flags: sorted,
        flag_index,
        segments,
    };
    (snapshot, c.diagnostics)
}

fn bad_key_message(what: &str, key: &str) -> String {
    format!("invalid {what} `{key}`: use 1 to 128 characters from a-z, A-Z, 0-9, `.`, `_` and `-`")
}

struct Compiler {
    diagnostics: Vec<Diagnostic>,
    segment_index: Map<u32>,
    flag_index: Map<u32>,
    /// By segment position; empty while the segments themselves are being compiled.
    broken_segments: Vec<bool>,
}

impl Compiler {
    fn report(&mut self, path: String, message: impl Into<String>) {
        self.diagnostics.push(Diagnostic {
            path,
            message: message.into(),
        });
    }

    fn segment(&mut self, i: usize, segment: &crate::model::Segment) -> CompiledSegment {
        let base = format!("/segments/{i}");
        let mut included: Map<()> = Map::default();
        included.reserve(segment.included.len());
        for (j, key) in segment.included.iter().enumerate() {
            if key.is_empty() {
                self.report(
                    format!("{base}/included/{j}"),
                    "targeting keys cannot be empty",
                );
            }
            included.insert(key.as_str().into(), ());
        }
        let mut excluded: Map<()> = Map::default();
        for (j, key) in segment.excluded.iter().enumerate() {
            if key.is_empty() {
                self.report(
                    format!("{base}/excluded/{j}"),
                    "targeting keys cannot be empty",
                );
            }
            excluded.insert(key.as_str().into(), ());
        }
        let rules = segment
            .rules
            .iter()
            .enumerate()
            .map(|(j, rule)| CompiledSegmentRule {
                id: rule.id.as_str().into(),
                conditions: self.conditions(&format!("{base}/rules/{j}"), &rule.conditions),
            })
            .collect();
        CompiledSegment {
            key: segment.key.as_str().into(),
            included,
            excluded,
            rules,
        }
    }

    /// Reports segments that reference themselves (directly or not) or nest too deeply, and
    /// drops their rules so evaluation cannot recurse without end.
    /// Also marks as broken every segment that uses a broken one.
    fn break_segment_cycles(&mut self, segments: &mut [CompiledSegment], broken: &mut [bool]) {
        let edges: Vec<Vec<u32>> = segments
            .iter()
            .map(|s| {
                s.rules
                    .iter()
                    .flat_map(|r| r.conditions.iter())
                    .filter_map(|c| match &c.test {
                        Test::Segments(refs) => Some(refs.iter().copied()),
                        _ => None,
                    })
                    .flatten()
                    .collect()
            })
            .collect();
        for (i, problem) in graph_problems(&edges, MAX_SEGMENT_DEPTH, MAX_NESTED_EVALUATIONS)
            .into_iter()
            .enumerate()
        {
            if let Some(problem) = problem {
                let message = match problem {
                    GraphProblem::Cycle => {
                        "segment_match references of this segment form or lead into a cycle"
                            .to_string()
                    }
                    GraphProblem::TooDeep => format!(
                        "segments nest more than {MAX_SEGMENT_DEPTH} levels deep through segment_match"
                    ),
                    GraphProblem::TooCostly => format!(
                        "checking membership would check nested segments more than {MAX_NESTED_EVALUATIONS} times"
                    ),
                };
                self.report(format!("/segments/{i}/rules"), message);
                segments[i].rules.clear();
                broken[i] = true;
            }
        }
        let mut changed = true;
        while changed {
            changed = false;
            for (i, refs) in edges.iter().enumerate() {
                if broken[i] {
                    continue;
                }
                if let Some(&bad) = refs.iter().find(|&&r| broken[r as usize]) {
                    let key = &segments[bad as usize].key;
                    self.report(
                        format!("/segments/{i}/rules"),
                        format!("uses segment `{key}`, which has errors"),
                    );
                    broken[i] = true;
                    changed = true;
                }
            }
        }
    }

    fn flag(
        &mut self,
        i: usize,
        env: &EnvironmentConfig,
        entry: &crate::model::ConfiguredFlag,
    ) -> CompiledFlag {
        let errors_before = self.diagnostics.len();
        let flag = &entry.flag;
        let base = format!("/flags/{i}/flag");
        if flag.variants.is_empty() {
            self.report(
                format!("{base}/variants"),
                "a flag needs at least one variant",
            );
        } else if flag.variants.len() > MAX_VARIANTS {
            self.report(
                format!("{base}/variants"),
                format!("a flag may have at most {MAX_VARIANTS} variants"),
            );
        }
        for (j, v) in flag.variants.iter().enumerate() {
            if !is_valid_key(&v.name) {
                self.report(
                    format!("{base}/variants/{j}/name"),
                    bad_key_message("variant name", &v.name),
                );
            } else if flag.variants[..j].iter().any(|o| o.name == v.name) {
                self.report(
                    format!("{base}/variants/{j}/name"),
                    format!("duplicate variant name `{}`", v.name),
                );
            }
            if !flag.kind.admits(&v.value) {
                self.report(
                    format!("{base}/variants/{j}/value"),
                    format!(
                        "a {} flag's variant values must be {}",
                        flag.kind.as_str(),
                        kind_noun(flag.kind)
                    ),
                );
            }
        }
        for (j, tag) in flag.tags.iter().enumerate() {
            if tag.is_empty() || tag.len() > 64 {
                self.report(
                    format!("{base}/tags/{j}"),
                    "tags must have 1 to 64 characters",
                );
            }
        }
        if let Some(date) = &flag.cleanup_date
            && !is_valid_date(date)
        {
            self.report(
                format!("{base}/cleanupDate"),
                format!("`{date}` is not a date of the form YYYY-MM-DD"),
            );
        }
        let variants: Vec<(Box<str>, Value)> = flag
            .variants
            .iter()
            .map(|v| (v.name.as_str().into(), v.value.clone()))
            .collect();
        let compiled = self.config(i, env, &flag.key, &variants, &entry.config);
        // The key was checked (and reported) when the flags were indexed.
        let ok = self.diagnostics.len() == errors_before && is_valid_key(&flag.key);
        CompiledFlag {
            key: flag.key.as_str().into(),
            index: 0,
            kind: flag.kind,
            version: entry.config.version,
            variants,
            config: ok.then_some(compiled),
            fixed: 0,
        }
    }

    fn config(
        &mut self,
        i: usize,
        env: &EnvironmentConfig,
        flag_key: &str,
        variants: &[(Box<str>, Value)],
        config: &FlagConfig,
    ) -> CompiledConfig {
        let base = format!("/flags/{i}/config");
        let off_variant = self.variant(variants, &config.off_variant, format!("{base}/offVariant"));

        if config.prerequisites.len() > MAX_PREREQUISITES {
            self.report(
                format!("{base}/prerequisites"),
                format!("a flag may have at most {MAX_PREREQUISITES} prerequisites"),
            );
        }
        if config.rules.len() > MAX_RULES {
            self.report(
                format!("{base}/rules"),
                format!("a flag may have at most {MAX_RULES} rules"),
            );
        }
        let mut prerequisites = Vec::new();
        for (j, p) in config.prerequisites.iter().enumerate() {
            let path = format!("{base}/prerequisites/{j}");
            if p.flag == flag_key {
                self.report(
                    format!("{path}/flag"),
                    "a flag cannot be its own prerequisite",
                );
                continue;
            }
            let Some(&target) = self.flag_index.get(p.flag.as_str()) else {
                self.report(format!("{path}/flag"), format!("unknown flag `{}`", p.flag));
                continue;
            };
            let target_variants = &env.flags[target as usize].flag.variants;
            match target_variants.iter().position(|v| v.name == p.variant) {
                Some(v) => prerequisites.push(CompiledPrerequisite {
                    key: p.flag.as_str().into(),
                    flag: target,
                    variant: v as u32,
                }),
                None => self.report(
                    format!("{path}/variant"),
                    format!("flag `{}` has no variant `{}`", p.flag, p.variant),
                ),
            }
        }

        let targets = if config.targets.is_empty() {
            None
        } else {
            let mut map: Map<u32> = Map::default();
            for (variant, keys) in &config.targets {
                let path = format!("{base}/targets/{}", escape_pointer(variant));
                let v = self.variant(variants, variant, path.clone());
                for (j, key) in keys.iter().enumerate() {
                    if key.is_empty() {
                        self.report(format!("{path}/{j}"), "targeting keys cannot be empty");
                    } else if let Some(&other) = map.get(key.as_str()) {
                        self.report(
                            format!("{path}/{j}"),
                            format!(
                                "targeting key `{key}` is already a target of variant `{}`",
                                variants.get(other as usize).map_or("?", |v| &v.0)
                            ),
                        );
                    } else {
                        map.insert(key.as_str().into(), v);
                    }
                }
            }
            Some(map)
        };

        let mut rules = Vec::with_capacity(config.rules.len());
        for (j, rule) in config.rules.iter().enumerate() {
            let path = format!("{base}/rules/{j}");
            if rule.id.is_empty() || rule.id.len() > 128 {
                self.report(
                    format!("{path}/id"),
                    "rule ids must have 1 to 128 characters",
                );
            } else if config.rules[..j].iter().any(|r| r.id == rule.id) {
                self.report(
                    format!("{path}/id"),
                    format!("duplicate rule id `{}`", rule.id),
                );
            }
            let conditions = self.conditions(&path, &rule.conditions);
            let serve = self.serve(flag_key, variants, &rule.serve, format!("{path}/serve"));
            rules.push(CompiledRule {
                id: rule.id.as_str().into(),
                index: j as u32,
                conditions,
                serve,
            });
        }
        let default_serve = self.serve(
            flag_key,
            variants,
            &config.default_serve,
            format!("{base}/defaultServe"),
        );
        let direct =
            config.enabled && prerequisites.is_empty() && targets.is_none() && rules.is_empty();
        let is_static = prerequisites.is_empty()
            && targets.is_none()
            && rules.is_empty()
            && matches!(default_serve, CompiledServe::Variant(_));
        CompiledConfig {
            enabled: config.enabled,
            off_variant,
            prerequisites,
            targets,
            rules,
            default_serve,
            is_static,
            direct,
        }
    }

    fn variant(&mut self, variants: &[(Box<str>, Value)], name: &str, path: String) -> u32 {
        match variants.iter().position(|v| &*v.0 == name) {
            Some(i) => i as u32,
            None => {
                self.report(path, format!("unknown variant `{name}`"));
                0
            }
        }
    }

    fn serve(
        &mut self,
        flag_key: &str,
        variants: &[(Box<str>, Value)],
        serve: &Serve,
        path: String,
    ) -> CompiledServe {
        match serve {
            Serve::Variant(name) => {
                CompiledServe::Variant(self.variant(variants, name, format!("{path}/variant")))
            }
            Serve::Rollout(rollout) => {
                CompiledServe::Rollout(self.rollout(flag_key, variants, rollout, path + "/rollout"))
            }
        }
    }

    fn rollout(
        &mut self,
        flag_key: &str,
        variants: &[(Box<str>, Value)],
        rollout: &Rollout,
        path: String,
    ) -> CompiledRollout {
        if rollout.variants.is_empty() {
            self.report(
                format!("{path}/variants"),
                "a rollout needs at least one variant",
            );
        }
        let mut compiled = Vec::with_capacity(rollout.variants.len());
        let mut total: u64 = 0;
        for (j, wv) in rollout.variants.iter().enumerate() {
            let v = self.variant(
                variants,
                &wv.variant,
                format!("{path}/variants/{j}/variant"),
            );
            if rollout.variants[..j]
                .iter()
                .any(|o| o.variant == wv.variant)
            {
                self.report(
                    format!("{path}/variants/{j}/variant"),
                    format!("variant `{}` appears twice in the rollout", wv.variant),
                );
            }
            total += u64::from(wv.weight);
            compiled.push((v, wv.weight));
        }
        if !rollout.variants.is_empty() && !(1..=i32::MAX as u64).contains(&total) {
            self.report(
                format!("{path}/variants"),
                format!("the weights must add up to between 1 and 2147483647, not {total}"),
            );
        }
        let bucket_by = rollout.bucket_by.as_deref().unwrap_or(TARGETING_KEY);
        if bucket_by.is_empty() {
            self.report(
                format!("{path}/bucketBy"),
                "the bucketing attribute cannot be empty",
            );
        }
        let salt = rollout.salt.as_deref().unwrap_or(flag_key);
        let cumulative = compiled
            .iter()
            .scan(0u32, |running, &(_, w)| {
                *running = running.saturating_add(w);
                Some(*running)
            })
            .collect();
        CompiledRollout {
            cumulative,
            variants: compiled,
            total_weight: total.min(u64::from(u32::MAX)) as u32,
            bucket_by: AttributePath::new(bucket_by),
            salt: salt.into(),
            hasher: SaltedHasher::new(salt),
        }
    }

    fn conditions(&mut self, base: &str, conditions: &[Condition]) -> Vec<CompiledCondition> {
        conditions
            .iter()
            .enumerate()
            .map(|(k, c)| self.condition(&format!("{base}/conditions/{k}"), c))
            .collect()
    }

    fn condition(&mut self, path: &str, c: &Condition) -> CompiledCondition {
        use Operator::*;
        if c.attribute.is_empty() && c.operator != SegmentMatch {
            self.report(format!("{path}/attribute"), "the attribute cannot be empty");
        }
        if c.case_insensitive
            && !matches!(c.operator, In | NotIn | StartsWith | EndsWith | Contains)
        {
            self.report(
                format!("{path}/caseInsensitive"),
                format!("`{}` has no case-insensitive form", c.operator.as_str()),
            );
        }
        if c.operator == Exists {
            if !c.values.is_empty() {
                self.report(format!("{path}/values"), "`exists` takes no values");
            }
        } else if c.values.is_empty() {
            self.report(
                format!("{path}/values"),
                format!("`{}` needs at least one value", c.operator.as_str()),
            );
        }
        let ci = c.case_insensitive;
        let test = match c.operator {
            In | NotIn => Test::In(self.value_set(path, &c.values, ci)),
            StartsWith => Test::StartsWith(self.string_list(path, &c.values, ci)),
            EndsWith => Test::EndsWith(self.string_list(path, &c.values, ci)),
            Contains => Test::Contains(self.string_list(path, &c.values, ci)),
            Matches => Test::Matches(self.each(path, &c.values, "a regular expression", |v| {
                let pattern = v.as_str()?;
                if pattern.len() > MAX_REGEX_LEN {
                    return None;
                }
                RegexBuilder::new(pattern)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .dfa_size_limit(REGEX_SIZE_LIMIT)
                    .nest_limit(64)
                    .build()
                    .ok()
            })),
            Lt | Lte | Gt | Gte => Test::Number(
                self.each(path, &c.values, "a number", |v| v.as_number().cloned())
                    .into(),
            ),
            SemverEq | SemverLt | SemverLte | SemverGt | SemverGte => Test::Semver(
                self.each(path, &c.values, "a semantic version such as `2.1.0`", |v| {
                    OwnedVersion::parse(v.as_str()?)
                })
                .into(),
            ),
            Before | After => Test::Time(
                self.each(
                    path,
                    &c.values,
                    "an RFC 3339 timestamp or a number of unix seconds",
                    Timestamp::from_value,
                )
                .into(),
            ),
            Exists => Test::Exists,
            SegmentMatch => {
                let index = &self.segment_index;
                let found: Vec<Option<u32>> = c
                    .values
                    .iter()
                    .map(|v| v.as_str().and_then(|k| index.get(k).copied()))
                    .collect();
                let mut refs = Vec::new();
                for (j, (v, f)) in c.values.iter().zip(found).enumerate() {
                    match f {
                        Some(s) if self.broken_segments.get(s as usize) == Some(&true) => {
                            self.report(
                                format!("{path}/values/{j}"),
                                format!("segment `{}` has errors, so this condition cannot be evaluated", v.as_str().unwrap_or_default()),
                            );
                        }
                        Some(s) => refs.push(s),
                        None => self.report(
                            format!("{path}/values/{j}"),
                            match v.as_str() {
                                Some(k) => format!("unknown segment `{k}`"),
                                None => "segment_match takes segment keys (strings)".to_string(),
                            },
                        ),
                    }
                }
                Test::Segments(refs.into())
            }
        };
        CompiledCondition {
            attribute: AttributePath::new(&c.attribute),
            // `not_in` is `in` negated: one test, one place that decides.
            operator: if c.operator == NotIn { In } else { c.operator },
            negate: c.negate ^ (c.operator == NotIn),
            test,
            values: c.values.clone().into(),
        }
    }

    /// Converts each value, reporting those that do not convert.
    fn each<T>(
        &mut self,
        path: &str,
        values: &[Value],
        expected: &str,
        convert: impl Fn(&Value) -> Option<T>,
    ) -> Vec<T> {
        let mut out = Vec::with_capacity(values.len());
        for (j, v) in values.iter().enumerate() {
            match convert(v) {
                Some(t) => out.push(t),
                None => self.report(
                    format!("{path}/values/{j}"),
                    format!("{v} is not {expected}"),
                ),
            }
        }
        out
    }

    fn string_list(&mut self, path: &str, values: &[Value], ci: bool) -> StringList {
        let items = self.each(path, values, "a string", |v| {
            v.as_str().map(|s| {
                Box::from(if ci {
                    fold_case(s).into_owned()
                } else {
                    s.to_string()
                })
            })
        });
        StringList {
            items: items.into(),
            case_insensitive: ci,
        }
    }

    fn value_set(&mut self, path: &str, values: &[Value], ci: bool) -> ValueSet {
        let mut strings = Vec::new();
        let mut numbers = Vec::new();
        let mut booleans = [false; 2];
        for (j, v) in values.iter().enumerate() {
            match v {
                Value::String(s) => strings.push(Box::from(if ci {
                    fold_case(s).into_owned()
                } else {
                    s.clone()
                })),
                Value::Number(n) => numbers.push(n.clone()),
                Value::Bool(b) => booleans[usize::from(*b)] = true,
                _ => self.report(
                    format!("{path}/values/{j}"),
                    format!("{v} is not a string, number or boolean"),
                ),
            }
        }
        ValueSet {
            strings: StringSet::new(strings),
            numbers: numbers.into(),
            booleans,
            case_insensitive: ci,
        }
    }

    /// Reports prerequisite cycles and chains that are too deep; the flags concerned become
    /// broken.
    fn check_prerequisite_graph(&mut self, env: &EnvironmentConfig, flags: &mut [CompiledFlag]) {
        // Edges come from the model, not the compiled flags, so that a flag broken for another
        // reason still shows up in a cycle it is part of.
        let edges: Vec<Vec<u32>> = env
            .flags
            .iter()
            .map(|entry| {
                entry
                    .config
                    .prerequisites
                    .iter()
                    .filter(|p| p.flag != entry.flag.key)
                    .filter_map(|p| self.flag_index.get(p.flag.as_str()).copied())
                    .collect()
            })
            .collect();
        for (i, problem) in graph_problems(&edges, MAX_PREREQUISITE_DEPTH, MAX_NESTED_EVALUATIONS)
            .into_iter()
            .enumerate()
        {
            if let Some(problem) = problem {
                let message = match problem {
                    GraphProblem::Cycle => format!(
                        "prerequisites of `{}` form or lead into a cycle",
                        env.flags[i].flag.key
                    ),
                    GraphProblem::TooDeep => format!(
                        "prerequisite chains may be at most {MAX_PREREQUISITE_DEPTH} flags deep"
                    ),
                    GraphProblem::TooCostly => format!(
                        "evaluating this flag would evaluate prerequisites more than {MAX_NESTED_EVALUATIONS} times (shared prerequisites count once per path)"
                    ),
                };
                self.report(format!("/flags/{i}/config/prerequisites"), message);
                flags[i].config = None;
            }
        }
    }
}

fn kind_noun(kind: FlagKind) -> &'static str {
    match kind {
        FlagKind::Boolean => "true or false",
        FlagKind::String => "strings",
        FlagKind::Number => "numbers",
        FlagKind::Json => "JSON values",
    }
}

/// RFC 6901: `~` becomes `~0` and `/` becomes `~1`.
fn escape_pointer(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GraphProblem {
    Cycle,
    TooDeep,
    TooCostly,
}

/// For each node of a directed graph: whether it lies on or reaches a cycle, starts a path
/// longer than `max_depth` nodes, or would be visited, with everything it reaches, more than
/// `max_cost` times by a walk that does not remember where it has been (as evaluation does: a
/// diamond of shared prerequisites is evaluated once per path).
///
/// The depth-first search keeps its own stack, so a long chain cannot overflow the thread's.
fn graph_problems(
    edges: &[Vec<u32>],
    max_depth: usize,
    max_cost: u64,
) -> Vec<Option<GraphProblem>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    /// Longest path in nodes and number of visits; `None` when a cycle is reachable.
    type Measure = Option<(usize, u64)>;
    fn combine(acc: Measure, child: Measure) -> Measure {
        let ((depth, cost), (child_depth, child_cost)) = (acc?, child?);
        Some((depth.max(child_depth + 1), cost.saturating_add(child_cost)))
    }
    let n = edges.len();
    let mut marks = vec![Mark::New; n];
    let mut measure: Vec<Measure> = vec![None; n];
    for start in 0..n {
        if marks[start] != Mark::New {
            continue;
        }
        marks[start] = Mark::Active;
        // (node, next edge to follow, measure so far)
        let mut stack: Vec<(usize, usize, Measure)> = vec![(start, 0, Some((1, 1)))];
        while let Some(top) = stack.last_mut() {
            let (node, next, acc) = *top;
            if let Some(&child) = edges[node].get(next) {
                top.1 += 1;
                let child = child as usize;
                match marks.get(child).copied() {
                    Some(Mark::Done) => top.2 = combine(acc, measure[child]),
                    Some(Mark::New) => {
                        marks[child] = Mark::Active;
                        stack.push((child, 0, Some((1, 1))));
                    }
                    // On the current path: a cycle. (Out of range cannot happen: edges come from
                    // the index.)
                    Some(Mark::Active) | None => top.2 = None,
                }
            } else {
                stack.pop();
                marks[node] = Mark::Done;
                measure[node] = acc;
                if let Some(parent) = stack.last_mut() {
                    parent.2 = combine(parent.2, acc);
                }
            }
        }
    }
    measure
        .into_iter()
        .map(|m| match m {
            None => Some(GraphProblem::Cycle),
            Some((depth, _)) if depth > max_depth => Some(GraphProblem::TooDeep),
            Some((_, cost)) if cost > max_cost => Some(GraphProblem::TooCostly),
            Some(_) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_sets_answer_as_string_equality_does() {
        let sets: Vec<Vec<&str>> = vec![
            vec!["DE", "FR", "US", "GB", "NL"],
            vec!["pro", "team", "enterprise"],
            vec![""],
            vec![
                "a",
                "aa",
                "aaa",
                "aaaa",
                "aaaaa",
                "aaaaaaaa",
                "aaaaaaaaa",
                "aaaaaaaaaaaaaaaa",
            ],
            vec!["sixteen-bytes-ab", "sixteen-bytes-ac", "x"],
            // Longer than 16 bytes: scanned with a string comparison, not placed in slots.
            vec!["a-much-longer-item-than-16", "short"],
            (0..16)
                .map(|i| {
                    [
                        "w0", "w1", "w2", "w3", "w4", "w5", "w6", "w7", "w8", "w9", "wa", "wb",
                        "wc", "wd", "we", "wf",
                    ][i]
                })
                .collect(),
        ];
        let probes = [
            "DE",
            "de",
            "D",
            "DEU",
            "pro",
            "prox",
            "team",
            "enterprise",
            "enterprisE",
            "",
            "a",
            "aa",
            "aaaaaa",
            "aaaaaaa",
            "aaaaaaaa",
            "aaaaaaaaa",
            "aaaaaaaaaa",
            "aaaaaaaaaaaaaaaa",
            "aaaaaaaaaaaaaaaaa",
            "sixteen-bytes-ab",
            "sixteen-bytes-ad",
            "x",
            "a-much-longer-item-than-16",
            "a-much-longer-item-than-17",
            "short",
            "w7",
            "wf",
            "wg",
        ];
        for items in &sets {
            let set = StringSet::new(items.iter().map(|s| Box::from(*s)).collect());
            if items.iter().all(|s| s.len() <= 16) {
                assert!(matches!(set, StringSet::Perfect { .. }), "{items:?}");
            }
            for probe in probes {
                assert_eq!(
                    set.contains(probe),
                    items.contains(&probe),
                    "{probe:?} in {items:?}"
                );
            }
        }
    }

    #[test]
    fn graph_problems_find_cycles_depth_and_cost() {
        // 0 -> 1 -> 2, 3 -> 3 (self loop), 4 -> 3
        let edges = vec![vec![1], vec![2], vec![], vec![3], vec![3]];
        let p = graph_problems(&edges, 8, 100);
        assert_eq!(
            p,
            [
                None,
                None,
                None,
                Some(GraphProblem::Cycle),
                Some(GraphProblem::Cycle)
            ]
        );
        assert_eq!(
            graph_problems(&edges[..3], 2, 100)[0],
            Some(GraphProblem::TooDeep)
        );
        // A diamond ladder: every level has two edges to the next, 2^10 paths.
        let ladder: Vec<Vec<u32>> = (0..10u32)
            .map(|i| vec![i + 1, i + 1])
            .chain([vec![]])
            .collect();
        assert_eq!(
            graph_problems(&ladder, 100, 256)[0],
            Some(GraphProblem::TooCostly)
        );
        assert_eq!(graph_problems(&ladder, 100, 256)[8], None);
    }

    #[test]
    fn a_very_long_chain_does_not_overflow_the_stack() {
        let n = 200_000u32;
        let chain: Vec<Vec<u32>> = (0..n)
            .map(|i| if i + 1 < n { vec![i + 1] } else { vec![] })
            .collect();
        let p = graph_problems(&chain, 8, 256);
        assert_eq!(p[0], Some(GraphProblem::TooDeep));
        assert_eq!(p[(n - 1) as usize], None);
    }
}

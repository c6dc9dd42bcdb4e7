//! The evaluation context: who is asking.
//!
//! It is the JSON object OpenFeature sends: the targeting key under `targetingKey`, next to any
//! other attributes, which may nest (`{"targetingKey": "user-42", "country": "DE",
//! "app": {"version": "2.3.1"}}`).

use serde::ser::SerializeMap;

use crate::semver::ParsedVersion;
use crate::text::Fingerprint;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// The attribute name of the targeting key.
pub const TARGETING_KEY: &str = "targetingKey";

/// Contexts with more attributes than this get a hash index; smaller ones are scanned, comparing
/// precomputed hashes before names.
const INDEX_THRESHOLD: usize = 16;

/// The size of [`EvaluationContext::slots`] (a power of two) and its marker of a shared slot.
const SLOTS: usize = 32;
const COLLIDED: u8 = u8::MAX;

#[inline(always)]
fn slot_of(hash: u64) -> usize {
    (hash >> (64 - SLOTS.trailing_zeros())) as usize
}

/// The targeting key and attributes of one evaluation.
///
/// Attribute names are hashed once, when the context is built, so that each condition's lookup
/// compares one precomputed hash per attribute instead of strings.
#[derive(Debug, Clone, Default)]
pub struct EvaluationContext {
    /// In insertion order; names are unique.
    entries: Vec<Entry>,
    /// The entries' name hashes and fingerprints, apart so that a lookup scans one dense array
    /// and confirms a match without following a pointer to the name.
    keys: Vec<(u64, Fingerprint)>,
    /// Name to position, for large contexts only.
    index: Option<crate::compile::Map<u32>>,
    /// A direct-mapped table for small contexts, by the top bits of the name hash: 0 when no
    /// name has that slot, `COLLIDED` when several do (then the keys are scanned), otherwise
    /// the one entry's position + 1. A lookup then confirms one entry instead of scanning all.
    slots: [u8; SLOTS],
    /// The position of `targetingKey`, which most evaluations read.
    targeting_key: Option<u32>,
}

#[derive(Debug, Clone)]
pub(crate) struct Entry {
    hash: u64,
    name: Box<str>,
    value: Value,
    /// The value's fingerprint when it is a string, computed once here rather than by every
    /// `in` condition that reads it.
    value_fingerprint: Fingerprint,
    /// The value as a semantic version when it is a string that is one, parsed once here rather
    /// than by every `semver_*` condition that reads it.
    value_version: Option<ParsedVersion>,
}

impl Entry {
    /// The value's semantic version, when it is a string that parses as one.
    #[inline(always)]
    pub(crate) fn version(&self) -> Option<crate::semver::Version<'_>> {
        let s = self.value.as_str()?;
        self.value_version.map(|v| v.with_text(s))
    }
}

fn value_version(value: &Value) -> Option<ParsedVersion> {
    ParsedVersion::of(value.as_str()?)
}

fn value_fingerprint(value: &Value) -> Fingerprint {
    Fingerprint::of(value.as_str().unwrap_or_default())
}

fn name_hash(name: &str) -> u64 {
    crate::keymap::key_hash(name)
}

/// Why a JSON value is not an evaluation context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContextError {
    NotAnObject,
    TargetingKeyNotAString,
}

impl std::fmt::Display for ContextError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ContextError::NotAnObject => "the evaluation context must be a JSON object",
            ContextError::TargetingKeyNotAString => "targetingKey must be a string",
        })
    }
}

impl std::error::Error for ContextError {}

impl EvaluationContext {
    /// An empty context: no targeting key, no attributes.
    pub fn new() -> Self {
        Self::default()
    }

    /// A context with this targeting key.
    pub fn with_targeting_key(key: impl Into<String>) -> Self {
        Self::new().with(TARGETING_KEY, key.into())
    }

    /// Adds or replaces an attribute (builder style).
    pub fn with(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.set(name, value);
        self
    }

    /// Adds or replaces an attribute.
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<Value>) {
        let name: String = name.into();
        let hash = name_hash(&name);
        let value: Value = value.into();
        if let Some(i) = self.position(&name, hash) {
            self.entries[i].value_fingerprint = value_fingerprint(&value);
            self.entries[i].value_version = value_version(&value);
            self.entries[i].value = value;
            return;
        }
        if name == TARGETING_KEY {
            self.targeting_key = Some(self.entries.len() as u32);
        }
        let slot = &mut self.slots[slot_of(hash) & (SLOTS - 1)];
        *slot = match u8::try_from(self.entries.len() + 1) {
            Ok(tag) if *slot == 0 && tag != COLLIDED => tag,
            _ => COLLIDED,
        };
        self.keys.push((hash, Fingerprint::of(&name)));
        self.entries.push(Entry {
            hash,
            name: name.into_boxed_str(),
            value_fingerprint: value_fingerprint(&value),
            value_version: value_version(&value),
            value,
        });
        if let Some(index) = &mut self.index {
            let last = self.entries.len() - 1;
            index.insert(self.entries[last].name.clone(), last as u32);
        } else if self.entries.len() > INDEX_THRESHOLD {
            self.index = Some(
                self.entries
                    .iter()
                    .enumerate()
                    .map(|(i, e)| (e.name.clone(), i as u32))
                    .collect(),
            );
        }
    }

    /// Reads a JSON object; `targetingKey`, when present, must be a string.
    pub fn from_value(value: Value) -> Result<Self, ContextError> {
        match value {
            Value::Object(attributes) => Self::from_map(attributes),
            _ => Err(ContextError::NotAnObject),
        }
    }

    pub fn from_map(attributes: Map<String, Value>) -> Result<Self, ContextError> {
        if attributes
            .get(TARGETING_KEY)
            .is_some_and(|v| !v.is_string())
        {
            return Err(ContextError::TargetingKeyNotAString);
        }
        let mut ctx = EvaluationContext {
            entries: Vec::with_capacity(attributes.len()),
            keys: Vec::with_capacity(attributes.len()),
            index: None,
            slots: [0; SLOTS],
            targeting_key: None,
        };
        for (name, value) in attributes {
            ctx.set(name, value);
        }
        Ok(ctx)
    }

    #[inline]
    pub fn targeting_key(&self) -> Option<&str> {
        self.targeting_key_value().and_then(Value::as_str)
    }

    #[inline]
    pub(crate) fn targeting_key_value(&self) -> Option<&Value> {
        let i = self.targeting_key? as usize;
        self.entries.get(i).map(|e| &e.value)
    }

    /// A top-level attribute (the targeting key is the attribute `targetingKey`).
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.get_hashed(name, name_hash(name))
    }

    /// The value at an attribute path as conditions read it: a dotted path reads nested
    /// objects first, then a top-level attribute named by the whole path; JSON null counts as
    /// missing. For callers outside the evaluator (SDKs breaking exposures down by an
    /// attribute), so they read the same value a condition would.
    pub fn lookup(&self, path: &str) -> Option<&Value> {
        AttributePath::new(path).lookup(self)
    }

    /// The attributes in insertion order, the targeting key among them.
    pub fn attributes(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.entries.iter().map(|e| (&*e.name, &e.value))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The attributes as a JSON object.
    pub fn to_map(&self) -> Map<String, Value> {
        self.attributes()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[inline(always)]
    fn position(&self, name: &str, hash: u64) -> Option<usize> {
        self.position_of(name, hash, &Fingerprint::of(name))
    }

    #[inline(always)]
    fn position_of(&self, name: &str, hash: u64, fp: &Fingerprint) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(name).map(|&i| i as usize),
            None => {
                let i = match self.slots[slot_of(hash) & (SLOTS - 1)] {
                    0 => return None,
                    COLLIDED => return self.scan(name, hash, fp),
                    tag => usize::from(tag) - 1,
                };
                let (h, f) = self.keys.get(i)?;
                (*h == hash
                    && f.same(fp)
                    && (fp.is_exact() || self.entries.get(i).is_some_and(|e| *e.name == *name)))
                .then_some(i)
            }
        }
    }

    /// The linear scan of the keys, for names that share a slot.
    #[inline(never)]
    fn scan(&self, name: &str, hash: u64, fp: &Fingerprint) -> Option<usize> {
        self.keys.iter().enumerate().find_map(|(i, (h, f))| {
            (*h == hash
                && f.same(fp)
                && (fp.is_exact() || self.entries.get(i).is_some_and(|e| *e.name == *name)))
            .then_some(i)
        })
    }

    #[inline(always)]
    pub(crate) fn get_hashed(&self, name: &str, hash: u64) -> Option<&Value> {
        self.position(name, hash).map(|i| &self.entries[i].value)
    }

    /// A lookup with the name's hash and fingerprint computed in advance (at compile time).
    #[inline(always)]
    fn get_known(&self, name: &str, hash: u64, fp: &Fingerprint) -> Option<&Value> {
        self.position_of(name, hash, fp)
            .map(|i| &self.entries[i].value)
    }

    /// The same, with the value's fingerprint (meaningful when the value is a string).
    #[inline(always)]
    fn entry_known(&self, name: &str, hash: u64, fp: &Fingerprint) -> Option<&Entry> {
        self.position_of(name, hash, fp)
            .and_then(|i| self.entries.get(i))
    }
}

/// Equal when both hold the same attributes, in any order.
impl PartialEq for EvaluationContext {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len()
            && self
                .entries
                .iter()
                .all(|e| other.get_hashed(&e.name, e.hash) == Some(&e.value))
    }
}

impl Serialize for EvaluationContext {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.entries.len()))?;
        for e in &self.entries {
            map.serialize_entry(&*e.name, &e.value)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for EvaluationContext {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let attributes = Map::<String, Value>::deserialize(deserializer)?;
        EvaluationContext::from_map(attributes).map_err(serde::de::Error::custom)
    }
}

/// A compiled attribute reference: a dotted path split, and its names hashed, at compile time.
#[derive(Debug, Clone)]
pub(crate) struct AttributePath {
    full: Box<str>,
    hash: u64,
    fingerprint: Fingerprint,
    targeting_key: bool,
    /// The path's segments when it contains a dot; the first one's hash.
    parts: Option<(Box<[Box<str>]>, u64)>,
}

impl AttributePath {
    pub(crate) fn new(path: &str) -> Self {
        let parts = path.contains('.').then(|| {
            let parts: Box<[Box<str>]> = path.split('.').map(Box::from).collect();
            let first = name_hash(&parts[0]);
            (parts, first)
        });
        AttributePath {
            full: path.into(),
            hash: name_hash(path),
            fingerprint: Fingerprint::of(path),
            targeting_key: path == TARGETING_KEY,
            parts,
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.full
    }

    pub(crate) fn is_targeting_key(&self) -> bool {
        self.targeting_key
    }

    /// The attribute's value: the nested path first, then a top-level attribute whose name is the
    /// whole dotted path. JSON null counts as missing.
    #[inline(always)]
    pub(crate) fn lookup<'c>(&self, context: &'c EvaluationContext) -> Option<&'c Value> {
        let found = match &self.parts {
            None if self.targeting_key => context.targeting_key_value(),
            None => context.get_known(&self.full, self.hash, &self.fingerprint),
            Some(parts) => self.lookup_nested(context, parts),
        };
        match found {
            Some(Value::Null) | None => None,
            v => v,
        }
    }

    /// As [`AttributePath::lookup`], with the fingerprint of a top-level string value (`None`
    /// for nested values, whose fingerprint is not precomputed).
    #[inline(always)]
    pub(crate) fn lookup_fingerprinted<'c>(
        &self,
        context: &'c EvaluationContext,
    ) -> Option<(&'c Value, Option<&'c Fingerprint>)> {
        self.lookup_entry(context)
            .map(|(v, e)| (v, e.map(|e| &e.value_fingerprint)))
    }

    /// As [`AttributePath::lookup`], with the context's entry of a top-level value and what was
    /// precomputed about it (`None` for nested values).
    #[inline(always)]
    pub(crate) fn lookup_entry<'c>(
        &self,
        context: &'c EvaluationContext,
    ) -> Option<(&'c Value, Option<&'c Entry>)> {
        let found = match &self.parts {
            None => {
                let entry = if self.targeting_key {
                    context
                        .targeting_key
                        .and_then(|i| context.entries.get(i as usize))
                } else {
                    context.entry_known(&self.full, self.hash, &self.fingerprint)
                };
                entry.map(|e| (&e.value, Some(e)))
            }
            Some(parts) => self.lookup_nested(context, parts).map(|v| (v, None)),
        };
        match found {
            Some((Value::Null, _)) | None => None,
            v => v,
        }
    }

    #[cold]
    fn lookup_nested<'c>(
        &self,
        context: &'c EvaluationContext,
        (parts, first_hash): &(Box<[Box<str>]>, u64),
    ) -> Option<&'c Value> {
        nested(context, parts, *first_hash).or_else(|| context.get_hashed(&self.full, self.hash))
    }
}

fn nested<'c>(
    context: &'c EvaluationContext,
    parts: &[Box<str>],
    first_hash: u64,
) -> Option<&'c Value> {
    let (first, rest) = parts.split_first()?;
    let mut value = context.get_hashed(first, first_hash)?;
    for part in rest {
        value = value.as_object()?.get(&**part)?;
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dotted_paths_read_nested_objects_then_flat_names() {
        let ctx = EvaluationContext::from_value(json!({
            "app": {"version": "2.0.0", "build": {"number": 7}},
            "device.os": "ios",
            "gone": null
        }))
        .unwrap();
        assert_eq!(
            AttributePath::new("app.version").lookup(&ctx),
            Some(&json!("2.0.0"))
        );
        assert_eq!(
            AttributePath::new("app.build.number").lookup(&ctx),
            Some(&json!(7))
        );
        assert_eq!(
            AttributePath::new("device.os").lookup(&ctx),
            Some(&json!("ios"))
        );
        assert_eq!(AttributePath::new("app.missing").lookup(&ctx), None);
        assert_eq!(AttributePath::new("gone").lookup(&ctx), None);
        // The public lookup reads the same values.
        assert_eq!(ctx.lookup("app.build.number"), Some(&json!(7)));
        assert_eq!(ctx.lookup("device.os"), Some(&json!("ios")));
        assert_eq!(ctx.lookup("gone"), None);
    }

    #[test]
    fn large_contexts_are_indexed_and_still_found() {
        let mut ctx = EvaluationContext::with_targeting_key("u");
        for i in 0..100 {
            ctx.set(format!("a{i}"), i);
        }
        ctx.set("a7", "replaced");
        assert_eq!(ctx.len(), 101);
        assert_eq!(ctx.get("a99"), Some(&json!(99)));
        assert_eq!(ctx.get("a7"), Some(&json!("replaced")));
        assert_eq!(ctx.targeting_key(), Some("u"));
        assert_eq!(AttributePath::new("a42").lookup(&ctx), Some(&json!(42)));
    }

    #[test]
    fn small_contexts_find_every_name_whether_or_not_slots_are_shared() {
        // 16 names in 32 slots: some share a slot (the scan), most do not (the direct check).
        let mut ctx = EvaluationContext::new();
        for i in 0..INDEX_THRESHOLD {
            ctx.set(format!("attr{i}"), i);
        }
        assert!(ctx.index.is_none());
        assert!(ctx.slots.contains(&COLLIDED), "{:?}", ctx.slots);
        for i in 0..INDEX_THRESHOLD {
            assert_eq!(ctx.get(&format!("attr{i}")), Some(&json!(i)));
        }
        for missing in ["attr16", "attr", "", "country"] {
            assert_eq!(ctx.get(missing), None, "{missing}");
        }
        ctx.set("attr3", "replaced");
        assert_eq!(ctx.get("attr3"), Some(&json!("replaced")));
        assert_eq!(ctx.len(), INDEX_THRESHOLD);
    }

    #[test]
    fn contexts_compare_equal_regardless_of_order() {
        let a = EvaluationContext::new().with("x", 1).with("y", 2);
        let b = EvaluationContext::new().with("y", 2).with("x", 1);
        assert_eq!(a, b);
        assert_ne!(a, b.clone().with("z", 3));
    }

    #[test]
    fn a_non_string_targeting_key_is_rejected() {
        assert_eq!(
            EvaluationContext::from_value(json!({"targetingKey": 42})),
            Err(ContextError::TargetingKeyNotAString)
        );
        assert!(serde_json::from_str::<EvaluationContext>(r#"{"targetingKey": 1}"#).is_err());
        assert_eq!(
            EvaluationContext::from_value(json!([])),
            Err(ContextError::NotAnObject)
        );
    }
}

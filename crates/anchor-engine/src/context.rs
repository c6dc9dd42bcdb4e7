//! The evaluation context: who is asking.
//!
//! It is the JSON object OpenFeature sends: the targeting key under `targetingKey`, next to any
//! other attributes, which may nest (`{"targetingKey": "user-42", "country": "DE",
//! "app": {"version": "2.3.1"}}`).

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// The attribute name of the targeting key.
pub const TARGETING_KEY: &str = "targetingKey";

/// The targeting key and attributes of one evaluation.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct EvaluationContext {
    attributes: Map<String, Value>,
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
        self.attributes.insert(name.into(), value.into());
        self
    }

    /// Adds or replaces an attribute.
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<Value>) {
        self.attributes.insert(name.into(), value.into());
    }

    /// Reads a JSON object; `targetingKey`, when present, must be a string.
    pub fn from_value(value: Value) -> Result<Self, ContextError> {
        match value {
            Value::Object(attributes) => Self::from_map(attributes),
            _ => Err(ContextError::NotAnObject),
        }
    }

    pub fn from_map(attributes: Map<String, Value>) -> Result<Self, ContextError> {
        match attributes.get(TARGETING_KEY) {
            None | Some(Value::String(_)) => Ok(EvaluationContext { attributes }),
            Some(_) => Err(ContextError::TargetingKeyNotAString),
        }
    }

    pub fn targeting_key(&self) -> Option<&str> {
        self.attributes.get(TARGETING_KEY).and_then(Value::as_str)
    }

    /// The top-level attributes, the targeting key among them.
    pub fn attributes(&self) -> &Map<String, Value> {
        &self.attributes
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Value> {
        self.attributes.get(name)
    }
}

impl<'de> Deserialize<'de> for EvaluationContext {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let attributes = Map::<String, Value>::deserialize(deserializer)?;
        EvaluationContext::from_map(attributes).map_err(serde::de::Error::custom)
    }
}

/// A compiled attribute reference: a dotted path split once at compile time.
#[derive(Debug, Clone)]
pub(crate) struct AttributePath {
    full: Box<str>,
    /// The path's segments when it contains a dot.
    parts: Option<Box<[Box<str>]>>,
}

impl AttributePath {
    pub(crate) fn new(path: &str) -> Self {
        let parts = path
            .contains('.')
            .then(|| path.split('.').map(Box::from).collect());
        AttributePath {
            full: path.into(),
            parts,
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.full
    }

    pub(crate) fn is_targeting_key(&self) -> bool {
        &*self.full == TARGETING_KEY
    }

    /// The attribute's value: the nested path first, then a top-level attribute whose name is the
    /// whole dotted path. JSON null counts as missing.
    #[inline]
    pub(crate) fn lookup<'c>(&self, context: &'c EvaluationContext) -> Option<&'c Value> {
        let found = match &self.parts {
            None => context.get(&self.full),
            Some(parts) => nested(context, parts).or_else(|| context.get(&self.full)),
        };
        found.filter(|v| !v.is_null())
    }
}

fn nested<'c>(context: &'c EvaluationContext, parts: &[Box<str>]) -> Option<&'c Value> {
    let (first, rest) = parts.split_first()?;
    let mut value = context.get(first)?;
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

//! An OpenFeature provider (the `open-feature` crate) that evaluates with a [`Client`]:
//! `open_feature::OpenFeature::singleton_mut().await.set_provider(AnchorProvider::new(client))`.
//!
//! Values, variants and reasons are the engine's; errors are reported as OpenFeature error
//! codes, so the OpenFeature client returns the caller's default with the code. The flag
//! metadata carries the flag's configuration version (`flagVersion`) and the deciding rule's id
//! (`ruleId`), as the server's OFREP answers do.

use open_feature::provider::{
    FeatureProvider, ProviderMetadata, ProviderStatus, ResolutionDetails,
};
use open_feature::{
    EvaluationContextFieldValue, EvaluationError, EvaluationErrorCode, EvaluationReason,
    EvaluationResult, FlagMetadata, StructValue,
};
use serde_json::Value;

use crate::{Client, Details, ErrorCode, EvaluationContext, Reason, Status};

/// The provider; cheap to construct from a client (clones share the configuration).
#[derive(Debug)]
pub struct AnchorProvider {
    client: Client,
    metadata: ProviderMetadata,
}

impl AnchorProvider {
    pub fn new(client: Client) -> Self {
        AnchorProvider {
            client,
            metadata: ProviderMetadata::new("release-anchor"),
        }
    }
}

/// The engine's evaluation context from OpenFeature's. Date-times become unix seconds, which
/// the `before`/`after` operators accept; structures must be JSON values (`serde_json::Value`
/// or `open_feature::StructValue`).
fn context_of(
    context: &open_feature::EvaluationContext,
) -> Result<EvaluationContext, EvaluationError> {
    let mut map = serde_json::Map::new();
    for (name, value) in &context.custom_fields {
        let json = match value {
            EvaluationContextFieldValue::Bool(b) => Value::Bool(*b),
            EvaluationContextFieldValue::Int(i) => Value::from(*i),
            EvaluationContextFieldValue::Float(f) => Value::from(*f),
            EvaluationContextFieldValue::String(s) => Value::String(s.clone()),
            EvaluationContextFieldValue::DateTime(t) => Value::from(t.unix_timestamp()),
            EvaluationContextFieldValue::Struct(any) => {
                if let Some(json) = any.downcast_ref::<Value>() {
                    json.clone()
                } else if let Some(s) = any.downcast_ref::<StructValue>() {
                    struct_to_json(s)
                } else {
                    return Err(error(
                        EvaluationErrorCode::InvalidContext,
                        format!("attribute `{name}` is a structure of an unknown type"),
                    ));
                }
            }
        };
        map.insert(name.clone(), json);
    }
    if let Some(key) = &context.targeting_key {
        map.insert(
            anchor_engine::TARGETING_KEY.to_string(),
            Value::String(key.clone()),
        );
    }
    EvaluationContext::from_map(map)
        .map_err(|e| error(EvaluationErrorCode::InvalidContext, e.to_string()))
}

fn value_to_json(value: &open_feature::Value) -> Value {
    match value {
        open_feature::Value::Bool(b) => Value::Bool(*b),
        open_feature::Value::Int(i) => Value::from(*i),
        open_feature::Value::Float(f) => Value::from(*f),
        open_feature::Value::String(s) => Value::String(s.clone()),
        open_feature::Value::Array(items) => {
            Value::Array(items.iter().map(value_to_json).collect())
        }
        open_feature::Value::Struct(s) => struct_to_json(s),
    }
}

fn struct_to_json(s: &StructValue) -> Value {
    Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value_to_json(v)))
            .collect(),
    )
}

fn error(code: EvaluationErrorCode, message: impl Into<String>) -> EvaluationError {
    EvaluationError {
        code,
        message: Some(message.into()),
    }
}

fn reason(reason: Reason) -> EvaluationReason {
    match reason {
        Reason::Static => EvaluationReason::Static,
        Reason::TargetingMatch => EvaluationReason::TargetingMatch,
        Reason::Split => EvaluationReason::Split,
        Reason::Disabled => EvaluationReason::Disabled,
        Reason::Default => EvaluationReason::Default,
        Reason::Error => EvaluationReason::Error,
        other => EvaluationReason::Other(other.as_str().to_string()),
    }
}

/// OpenFeature's answer for the client's details: the value, or the error code.
fn resolution<T>(details: Details<T>) -> EvaluationResult<ResolutionDetails<T>> {
    if let Some(code) = details.error_code {
        let code = match code {
            ErrorCode::FlagNotFound => EvaluationErrorCode::FlagNotFound,
            ErrorCode::TypeMismatch => EvaluationErrorCode::TypeMismatch,
            ErrorCode::ParseError => EvaluationErrorCode::ParseError,
            ErrorCode::TargetingKeyMissing => EvaluationErrorCode::TargetingKeyMissing,
            ErrorCode::InvalidContext => EvaluationErrorCode::InvalidContext,
            other => EvaluationErrorCode::General(other.as_str().to_string()),
        };
        return Err(error(code, details.error_message.unwrap_or_default()));
    }
    let mut metadata = FlagMetadata::default();
    if let Some(version) = details.flag_version {
        metadata = metadata.with_value("flagVersion", version as i64);
    }
    if let Some(rule) = details.rule_id {
        metadata = metadata.with_value("ruleId", rule);
    }
    Ok(ResolutionDetails {
        value: details.value,
        variant: details.variant,
        reason: Some(reason(details.reason)),
        flag_metadata: Some(metadata),
    })
}

#[open_feature::async_trait]
impl FeatureProvider for AnchorProvider {
    fn metadata(&self) -> &ProviderMetadata {
        &self.metadata
    }

    fn status(&self) -> ProviderStatus {
        match self.client.status() {
            Status::Ready => ProviderStatus::Ready,
            Status::Stale => ProviderStatus::STALE,
            Status::Error => ProviderStatus::Error,
        }
    }

    async fn resolve_bool_value(
        &self,
        flag_key: &str,
        context: &open_feature::EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<bool>> {
        let context = context_of(context)?;
        resolution(self.client.bool_details(flag_key, &context, false))
    }

    async fn resolve_int_value(
        &self,
        flag_key: &str,
        context: &open_feature::EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<i64>> {
        let context = context_of(context)?;
        resolution(self.client.integer_details(flag_key, &context, 0))
    }

    async fn resolve_float_value(
        &self,
        flag_key: &str,
        context: &open_feature::EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<f64>> {
        let context = context_of(context)?;
        resolution(self.client.number_details(flag_key, &context, 0.0))
    }

    async fn resolve_string_value(
        &self,
        flag_key: &str,
        context: &open_feature::EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<String>> {
        let context = context_of(context)?;
        resolution(self.client.string_details(flag_key, &context, ""))
    }

    async fn resolve_struct_value(
        &self,
        flag_key: &str,
        context: &open_feature::EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<StructValue>> {
        let context = context_of(context)?;
        let details = resolution(self.client.json_details(flag_key, &context, Value::Null))?;
        // OpenFeature's structure is an object: a JSON flag serving an array or a scalar is a
        // type mismatch for it.
        match open_feature::Value::try_from(&details.value) {
            Ok(open_feature::Value::Struct(value)) => Ok(ResolutionDetails {
                value,
                variant: details.variant,
                reason: details.reason,
                flag_metadata: details.flag_metadata,
            }),
            _ => Err(error(
                EvaluationErrorCode::TypeMismatch,
                "the flag's value is not a JSON object",
            )),
        }
    }
}

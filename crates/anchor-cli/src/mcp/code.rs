//! The code that evaluates a flag, per language: the Rust SDK, or an OpenFeature SDK with its
//! OFREP provider pointed at the server. The snippet uses the flag's real key and kind, so the
//! typed getter and the default value match what the server serves.

use schemars::JsonSchema;
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    /// The Release Anchor Rust SDK (`anchor-sdk`), evaluating locally.
    Rust,
    /// OpenFeature server SDK for Node.js with the OFREP provider.
    Javascript,
    /// Same as javascript, typed.
    Typescript,
    /// OpenFeature Python SDK with the OFREP provider.
    Python,
    /// OpenFeature Go SDK with the OFREP provider.
    Go,
    /// OpenFeature Java SDK with the OFREP provider.
    Java,
    /// OpenFeature .NET SDK with the OFREP provider.
    Csharp,
}

/// A flag's kind as the server names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Boolean,
    String,
    Number,
    Json,
}

impl Kind {
    pub fn parse(kind: &str) -> Option<Self> {
        match kind {
            "boolean" => Some(Self::Boolean),
            "string" => Some(Self::String),
            "number" => Some(Self::Number),
            "json" => Some(Self::Json),
            _ => None,
        }
    }
}

/// The snippet for `flag` of `kind`, reading the SDK key from `ANCHOR_SDK_KEY` so no secret
/// ends up in source code.
pub fn snippet(language: Language, flag: &str, kind: Kind, server: &str) -> String {
    // Keys are restricted by the server to characters that need no escaping in any of these
    // languages' string literals; quoting through JSON keeps that true whatever comes in.
    let key = serde_json::Value::from(flag).to_string();
    let url = serde_json::Value::from(server).to_string();
    match language {
        Language::Rust => rust(&key, kind, &url),
        Language::Javascript | Language::Typescript => javascript(&key, kind, &url, language),
        Language::Python => python(&key, kind, &url),
        Language::Go => go(&key, kind, &url),
        Language::Java => java(&key, kind, &url),
        Language::Csharp => csharp(&key, kind, &url),
    }
}

fn rust(key: &str, kind: Kind, url: &str) -> String {
    let (call, use_json) = match kind {
        Kind::Boolean => (format!("client.bool_value({key}, &context, false)"), false),
        Kind::String => (format!("client.string_value({key}, &context, \"\")"), false),
        Kind::Number => (format!("client.number_value({key}, &context, 0.0)"), false),
        Kind::Json => (
            format!("client.json_value({key}, &context, json!({{}}))"),
            true,
        ),
    };
    format!(
        "// Cargo.toml: anchor-sdk = \"*\", tokio = {{ version = \"1\", features = [\"full\"] }}{}
use anchor_sdk::{{Client, EvaluationContext}};{}

let server_key = std::env::var(\"ANCHOR_SDK_KEY\")?; // a server SDK key of the environment
let client = Client::builder({url}, server_key).build().await?;
let context = EvaluationContext::with_targeting_key(\"user-42\").with(\"country\", \"DE\");
let value = {call};
println!(\"{{}}\", client.explain({key}, &context)); // why this value
client.close().await; // flushes the evaluation counts
",
        if use_json { ", serde_json = \"1\"" } else { "" },
        if use_json {
            "\nuse serde_json::json;"
        } else {
            ""
        },
    )
}

fn javascript(key: &str, kind: Kind, url: &str, language: Language) -> String {
    let call = match kind {
        Kind::Boolean => format!("getBooleanValue({key}, false, context)"),
        Kind::String => format!("getStringValue({key}, '', context)"),
        Kind::Number => format!("getNumberValue({key}, 0, context)"),
        Kind::Json => format!("getObjectValue({key}, {{}}, context)"),
    };
    let context_type = if language == Language::Typescript {
        ": EvaluationContext"
    } else {
        ""
    };
    let import = if language == Language::Typescript {
        "import { OpenFeature, type EvaluationContext } from '@openfeature/server-sdk';"
    } else {
        "import { OpenFeature } from '@openfeature/server-sdk';"
    };
    format!(
        "// npm install @openfeature/server-sdk @openfeature/ofrep-provider
{import}
import {{ OFREPProvider }} from '@openfeature/ofrep-provider';

await OpenFeature.setProviderAndWait(new OFREPProvider({{
  baseUrl: {url},
  headers: [['Authorization', `Bearer ${{process.env.ANCHOR_SDK_KEY}}`]],
}}));
const client = OpenFeature.getClient();
const context{context_type} = {{ targetingKey: 'user-42', country: 'DE' }};
const value = await client.{call};
"
    )
}

fn python(key: &str, kind: Kind, url: &str) -> String {
    let call = match kind {
        Kind::Boolean => format!("get_boolean_value({key}, False, context)"),
        Kind::String => format!("get_string_value({key}, \"\", context)"),
        Kind::Number => format!("get_float_value({key}, 0.0, context)"),
        Kind::Json => format!("get_object_value({key}, {{}}, context)"),
    };
    format!(
        "# pip install openfeature-sdk openfeature-provider-ofrep
import os
from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from openfeature.contrib.provider.ofrep import OFREPProvider

api.set_provider(OFREPProvider(
    {url},
    headers_factory=lambda: {{\"Authorization\": f\"Bearer {{os.environ['ANCHOR_SDK_KEY']}}\"}},
))
client = api.get_client()
context = EvaluationContext(targeting_key=\"user-42\", attributes={{\"country\": \"DE\"}})
value = client.{call}
"
    )
}

fn go(key: &str, kind: Kind, url: &str) -> String {
    let call = match kind {
        Kind::Boolean => format!("BooleanValue(ctx, {key}, false, evalCtx)"),
        Kind::String => format!("StringValue(ctx, {key}, \"\", evalCtx)"),
        Kind::Number => format!("FloatValue(ctx, {key}, 0, evalCtx)"),
        Kind::Json => format!("ObjectValue(ctx, {key}, map[string]any{{}}, evalCtx)"),
    };
    format!(
        "// go get github.com/open-feature/go-sdk github.com/open-feature/go-sdk-contrib/providers/ofrep
import (
\t\"context\"
\t\"os\"

\t\"github.com/open-feature/go-sdk-contrib/providers/ofrep\"
\t\"github.com/open-feature/go-sdk/openfeature\"
)

provider := ofrep.NewProvider({url}, ofrep.WithBearerToken(os.Getenv(\"ANCHOR_SDK_KEY\")))
if err := openfeature.SetProviderAndWait(provider); err != nil {{
\treturn err
}}
client := openfeature.NewClient(\"my-app\")
ctx := context.Background()
evalCtx := openfeature.NewEvaluationContext(\"user-42\", map[string]any{{\"country\": \"DE\"}})
value, err := client.{call}
"
    )
}

fn java(key: &str, kind: Kind, url: &str) -> String {
    let call = match kind {
        Kind::Boolean => format!("Boolean value = client.getBooleanValue({key}, false, context);"),
        Kind::String => format!("String value = client.getStringValue({key}, \"\", context);"),
        Kind::Number => format!("Double value = client.getDoubleValue({key}, 0.0, context);"),
        Kind::Json => format!("Value value = client.getObjectValue({key}, new Value(), context);"),
    };
    format!(
        "// Maven: dev.openfeature:sdk and dev.openfeature.contrib.providers:ofrep
import dev.openfeature.contrib.providers.ofrep.OfrepProvider;
import dev.openfeature.contrib.providers.ofrep.OfrepProviderOptions;
import com.google.common.collect.ImmutableList;
import com.google.common.collect.ImmutableMap;
import dev.openfeature.sdk.*;
import java.util.Map;

OfrepProvider provider = OfrepProvider.constructProvider(OfrepProviderOptions.builder()
    .baseUrl({url})
    .headers(ImmutableMap.of(\"Authorization\",
        ImmutableList.of(\"Bearer \" + System.getenv(\"ANCHOR_SDK_KEY\"))))
    .build());
OpenFeatureAPI.getInstance().setProviderAndWait(provider);
Client client = OpenFeatureAPI.getInstance().getClient();
EvaluationContext context = new ImmutableContext(\"user-42\", Map.of(\"country\", new Value(\"DE\")));
{call}
"
    )
}

fn csharp(key: &str, kind: Kind, url: &str) -> String {
    let call = match kind {
        Kind::Boolean => format!("GetBooleanValueAsync({key}, false, context)"),
        Kind::String => format!("GetStringValueAsync({key}, \"\", context)"),
        Kind::Number => format!("GetDoubleValueAsync({key}, 0.0, context)"),
        Kind::Json => format!("GetObjectValueAsync({key}, new Value(), context)"),
    };
    format!(
        "// dotnet add package OpenFeature; dotnet add package OpenFeature.Providers.Ofrep
using OpenFeature;
using OpenFeature.Model;
using OpenFeature.Providers.Ofrep;
using OpenFeature.Providers.Ofrep.Configuration;

var options = new OfrepOptions({url})
{{
    Headers = new Dictionary<string, string>
    {{
        [\"Authorization\"] = $\"Bearer {{Environment.GetEnvironmentVariable(\"ANCHOR_SDK_KEY\")}}\",
    }},
}};
await Api.Instance.SetProviderAsync(new OfrepProvider(options));
var client = Api.Instance.GetClient();
var context = EvaluationContext.Builder().SetTargetingKey(\"user-42\").Set(\"country\", \"DE\").Build();
var value = await client.{call};
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_getter_matches_the_kind_and_the_key_and_url_are_the_real_ones() {
        let url = "http://flags.example:4242";
        let rust = snippet(Language::Rust, "new-checkout", Kind::Boolean, url);
        assert!(rust.contains("client.bool_value(\"new-checkout\", &context, false)"));
        assert!(rust.contains("Client::builder(\"http://flags.example:4242\", server_key)"));
        let ts = snippet(Language::Typescript, "banner", Kind::String, url);
        assert!(
            ts.contains("getStringValue(\"banner\", '', context)"),
            "{ts}"
        );
        assert!(
            ts.contains("baseUrl: \"http://flags.example:4242\""),
            "{ts}"
        );
        assert!(ts.contains(": EvaluationContext"));
        assert!(!snippet(Language::Javascript, "banner", Kind::String, url).contains("type "));
        let py = snippet(Language::Python, "limit", Kind::Number, url);
        assert!(
            py.contains("get_float_value(\"limit\", 0.0, context)"),
            "{py}"
        );
        let go = snippet(Language::Go, "cfg", Kind::Json, url);
        assert!(go.contains("ObjectValue(ctx, \"cfg\", map[string]any{}, evalCtx)"));
        let java = snippet(Language::Java, "limit", Kind::Number, url);
        assert!(java.contains("client.getDoubleValue(\"limit\", 0.0, context)"));
        // The provider's options take Guava's immutable header map.
        assert!(java.contains(".headers(ImmutableMap.of(\"Authorization\","));
        let cs = snippet(Language::Csharp, "on", Kind::Boolean, url);
        assert!(cs.contains("GetBooleanValueAsync(\"on\", false, context)"));
        for language in [Language::Python, Language::Go, Language::Csharp] {
            assert!(snippet(language, "x", Kind::Boolean, url).contains("ANCHOR_SDK_KEY"));
        }
    }
}

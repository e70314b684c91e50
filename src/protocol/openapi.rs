//! Generates `spec/openapi.json` (OpenAPI 3.1): every HTTP endpoint of
//! [`endpoints::http`] with its parameters, bodies, answers and one response
//! per error status listing the errcodes the spec gives it, and the schemas
//! of the protocol types in `components`. `tests/spec.rs` compares it with
//! the committed file, like the JSON Schemas.

use std::collections::BTreeMap;

use schemars::SchemaGenerator;
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use super::VERSIONS;
use super::endpoints::{self, Auth, Endpoint};
use super::errors::{ErrCode, ErrorBody};
use super::federation::SIGNATURE_SCHEME;

const DESCRIPTION: &str = "The HTTP API of Parlor protocol v1: the client API and the federation \
(server-to-server) API. The full text, with the guarantees behind each answer, is spec/protocol.md; \
the WebSocket frames are in asyncapi.json.\n\n\
- Bodies are JSON objects (`application/json`, UTF-8). Request bodies are strict: not well-formed JSON is \
`malformed_json`; an unknown, missing or mistyped field is `invalid_field`, and `error` names the field. \
Clients must ignore answer fields they do not know.\n\
- Every error answer is an `ErrorBody` `{errcode, error}` with the status of its errcode; each operation \
lists the errcodes the spec gives it. Any request may also get `not_found` (404, no such endpoint), \
`method_not_allowed` (405), or, when it cannot be read as HTTP at all, `malformed_request` (400), \
`uri_too_long` (414) or `headers_too_large` (431).\n\
- When several checks fail, the order is: endpoint and method, body size and JSON, authentication, rate \
limits, parameters, then the endpoint's own checks.\n\
- `rate_limited` (429) carries `retry_after_ms` and a `Retry-After` header (seconds, rounded up).";

/// Settings for schemas inside an OpenAPI 3.1 document: JSON Schema 2020-12,
/// definitions under `components/schemas`.
fn generator() -> SchemaGenerator {
    SchemaSettings::draft2020_12()
        .with(|s| {
            s.definitions_path = "/components/schemas".into();
            s.meta_schema = None;
        })
        .into_generator()
}

/// The whole OpenAPI document.
pub fn document() -> Value {
    let mut generator = generator();
    let error_body = generator.subschema_for::<ErrorBody>().to_value();
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let endpoints = endpoints::http();
    for ep in &endpoints {
        let op = operation(ep, &mut generator, &error_body);
        let previous = paths.entry(ep.path.clone()).or_default().insert(ep.method.as_str().to_lowercase(), op);
        assert!(previous.is_none(), "two endpoints with {} {}", ep.method.as_str(), ep.path);
    }
    let schemas = generator.take_definitions(true);
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Parlor HTTP API",
            "version": VERSIONS.last().expect("a protocol version"),
            "summary": "A small federated chat server with a documented JSON protocol.",
            "description": DESCRIPTION,
            "license": { "name": "MIT OR Apache-2.0", "identifier": "MIT OR Apache-2.0" },
        },
        "servers": [{ "url": "http://127.0.0.1:8008", "description": "`parlor serve` on its default address" }],
        "tags": endpoints::TAGS.iter().map(|(name, d)| json!({ "name": name, "description": d })).collect::<Vec<_>>(),
        "paths": paths,
        "components": {
            "schemas": schemas,
            "examples": error_examples(&endpoints),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "`Authorization: Bearer <access_token>`, the token from `login`.",
                },
                "parlorSignature": {
                    "type": "http",
                    "scheme": SIGNATURE_SCHEME,
                    "description": format!(
                        "`Authorization: {SIGNATURE_SCHEME} origin=\"…\",destination=\"…\",key=\"ed25519:…\",\
                         ts=\"…\",sig=\"…\"`: the origin server's ed25519 signature of the request (spec §11.2)."
                    ),
                },
            },
        },
    })
}

fn operation(ep: &Endpoint, generator: &mut SchemaGenerator, error_body: &Value) -> Value {
    let mut op = Map::new();
    op.insert("operationId".into(), ep.id.into());
    op.insert("tags".into(), json!([ep.tag]));
    op.insert("summary".into(), ep.summary.into());
    op.insert("description".into(), ep.description.into());
    let security = match ep.auth {
        Auth::None => json!([]),
        Auth::Bearer => json!([{ "bearer": [] }]),
        Auth::BearerOrAuthFrame => json!([{}, { "bearer": [] }]),
        Auth::Signature => json!([{ "parlorSignature": [] }]),
    };
    op.insert("security".into(), security);
    if !ep.params.is_empty() {
        let params: Vec<Value> = ep
            .params
            .iter()
            .map(|p| {
                json!({
                    "name": p.name,
                    "in": p.location.as_str(),
                    "required": p.required,
                    "description": p.description,
                    "schema": (p.schema)(generator).to_value(),
                })
            })
            .collect();
        op.insert("parameters".into(), params.into());
    }
    if let Some(body) = &ep.body {
        let description = if body.required { "JSON body." } else { "None, or `{}`." };
        op.insert(
            "requestBody".into(),
            json!({
                "required": body.required,
                "description": description,
                "content": { "application/json": { "schema": (body.schema)(generator).to_value() } },
            }),
        );
    }
    let mut responses = Map::new();
    for answer in &ep.answers {
        let mut r = Map::new();
        r.insert("description".into(), answer.description.into());
        if let Some(schema) = answer.body {
            r.insert("content".into(), json!({ "application/json": { "schema": schema(generator).to_value() } }));
        }
        responses.insert(answer.status.to_string(), r.into());
    }
    let mut by_status: BTreeMap<u16, Vec<ErrCode>> = BTreeMap::new();
    for code in &ep.errors {
        by_status.entry(code.status()).or_default().push(*code);
    }
    for (status, codes) in by_status {
        let key = status.to_string();
        assert!(!responses.contains_key(&key), "{}: an answer and an error share status {status}", ep.id);
        responses.insert(key, error_response(&codes, error_body));
    }
    op.insert("responses".into(), responses.into());
    op.into()
}

/// One response for every errcode of one status: an `ErrorBody` whose
/// `errcode` is one of `codes`, with an example of each.
fn error_response(codes: &[ErrCode], error_body: &Value) -> Value {
    let description = codes.iter().map(|c| format!("- `{c}`: {}", c.describe())).collect::<Vec<_>>().join("\n");
    let examples: Map<String, Value> = codes
        .iter()
        .map(|c| (c.as_str().to_owned(), json!({ "$ref": format!("#/components/examples/{c}") })))
        .collect();
    let mut response = json!({
        "description": description,
        "content": {
            "application/json": {
                "schema": {
                    "allOf": [
                        error_body,
                        {
                            "type": "object",
                            "required": ["errcode"],
                            "properties": { "errcode": { "type": "string", "enum": codes } },
                        },
                    ],
                },
                "examples": examples,
            },
        },
    });
    if codes.contains(&ErrCode::RateLimited) {
        response["headers"] = json!({
            "Retry-After": {
                "description": "Seconds to wait, rounded up (with `rate_limited`).",
                "schema": { "type": "integer", "minimum": 0 },
            },
        });
    }
    response
}

/// An example error body for each errcode some endpoint answers with.
fn error_examples(endpoints: &[Endpoint]) -> Map<String, Value> {
    ErrCode::ALL
        .iter()
        .filter(|c| endpoints.iter().any(|e| e.errors.contains(c)))
        .map(|c| {
            let mut value = json!({ "errcode": c.as_str(), "error": c.describe() });
            if *c == ErrCode::RateLimited {
                value["retry_after_ms"] = 1500.into();
            }
            (c.as_str().to_owned(), json!({ "summary": format!("{c} ({})", c.status()), "value": value }))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::endpoints::ROUTING_ERRORS;

    #[test]
    fn the_description_names_the_routing_errcodes() {
        for code in ROUTING_ERRORS {
            assert!(DESCRIPTION.contains(&format!("`{code}`")), "{code}");
        }
    }
}

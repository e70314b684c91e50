//! The JSON Schemas of `spec/schemas`, embedded at compile time so the binary
//! is self-contained, and the validators built from them. Every `$ref` —
//! local or to another schema by its `$id` — resolves from the embedded
//! files; nothing is ever fetched.

use std::collections::HashMap;

use serde_json::Value;

use crate::failure::Failure;

/// Where the schemas say they live; `$id` is this plus the file name.
pub const ID_PREFIX: &str = "https://parlor.chat/spec/v1/schemas/";

macro_rules! embed {
    ($($name:literal),* $(,)?) => {
        &[$(($name, include_str!(concat!("../../spec/schemas/", $name, ".json")))),*]
    };
}

/// Every schema file of the spec, by name without `.json`.
pub const FILES: &[(&str, &str)] = embed![
    "client_frame",
    "create_room_request",
    "create_room_response",
    "cursor",
    "dm_response",
    "empty",
    "error",
    "event",
    "federation_ephemeral",
    "federation_join_request",
    "federation_join_response",
    "federation_leave_request",
    "federation_reject_request",
    "federation_send_request",
    "federation_server_key",
    "federation_transaction",
    "federation_well_known",
    "health_response",
    "join_response",
    "login_request",
    "login_response",
    "members_response",
    "messages_response",
    "moderation_request",
    "read_request",
    "redact_request",
    "register_request",
    "register_response",
    "role_request",
    "room_update",
    "rooms_response",
    "send_request",
    "send_response",
    "server_frame",
    "user_request",
    "versions_response",
    "whoami_response",
];

/// The schemas could not be turned into validators (a broken spec file).
#[derive(Debug, thiserror::Error)]
pub enum SchemaLoadError {
    #[error("spec/schemas/{file}.json is not JSON: {source}")]
    NotJson { file: &'static str, source: serde_json::Error },
    #[error("spec/schemas/{file}.json has `$id` {found:?}, expected {expected:?}")]
    WrongId { file: &'static str, found: String, expected: String },
    #[error("spec/schemas/{file}.json is not a valid schema: {message}")]
    Invalid { file: &'static str, message: String },
}

/// Serves `https://parlor.chat/spec/v1/schemas/<file>` from the embedded
/// files and refuses every other URI, so validation never touches the network.
struct Embedded;

impl jsonschema::Retrieve for Embedded {
    fn retrieve(&self, uri: &jsonschema::Uri<String>) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let wanted = uri.as_str().split('#').next().unwrap_or_default();
        let file = wanted.strip_prefix(ID_PREFIX).and_then(|f| f.strip_suffix(".json"));
        match FILES.iter().find(|(name, _)| Some(*name) == file) {
            Some((_, text)) => Ok(serde_json::from_str(text)?),
            None => Err(format!("{wanted} is not one of the embedded spec schemas").into()),
        }
    }
}

/// One validator per schema file.
pub struct Schemas {
    validators: HashMap<&'static str, jsonschema::Validator>,
}

impl std::fmt::Debug for Schemas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<_> = self.validators.keys().collect();
        names.sort();
        f.debug_struct("Schemas").field("files", &names).finish()
    }
}

impl Schemas {
    pub fn load() -> Result<Self, SchemaLoadError> {
        let mut validators = HashMap::new();
        for (file, text) in FILES {
            let schema: Value =
                serde_json::from_str(text).map_err(|source| SchemaLoadError::NotJson { file, source })?;
            let expected = format!("{ID_PREFIX}{file}.json");
            let found = schema.get("$id").and_then(Value::as_str).unwrap_or_default();
            if found != expected {
                return Err(SchemaLoadError::WrongId { file, found: found.to_owned(), expected });
            }
            let validator = jsonschema::options()
                .with_retriever(Embedded)
                .build(&schema)
                .map_err(|e| SchemaLoadError::Invalid { file, message: e.to_string() })?;
            validators.insert(*file, validator);
        }
        Ok(Schemas { validators })
    }

    /// Checks `value` against `spec/schemas/<schema>.json`; `what` says where
    /// the value came from, for the failure message.
    pub fn check(&self, schema: &str, what: &str, value: &Value) -> Result<(), Failure> {
        let Some(validator) = self.validators.get(schema) else {
            // A typo in the suite itself must not look like a passing case.
            return Err(Failure::Suite(format!("no schema named {schema}")));
        };
        let errors: Vec<String> = validator
            .iter_errors(value)
            .take(3)
            .map(|e| {
                let at = e.instance_path().to_string();
                if at.is_empty() { e.to_string() } else { format!("at {at}: {e}") }
            })
            .collect();
        if errors.is_empty() {
            return Ok(());
        }
        Err(Failure::Schema {
            what: what.to_owned(),
            schema: format!("{schema}.json"),
            detail: format!("{}; got {}", errors.join("; "), crate::failure::clip(&value.to_string(), 300)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_schema_file_is_embedded() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../spec/schemas");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.unwrap().file_name().into_string().ok())
            .filter_map(|n| n.strip_suffix(".json").map(str::to_owned))
            .collect();
        on_disk.sort();
        let embedded: Vec<String> = FILES.iter().map(|(n, _)| (*n).to_owned()).collect();
        assert_eq!(on_disk, embedded, "conformance/src/schema.rs FILES must list every spec schema");
    }

    #[test]
    fn valid_answers_pass() {
        let s = Schemas::load().unwrap();
        s.check("error", "t", &json!({"errcode": "not_member", "error": "no"})).unwrap();
        s.check(
            "login_response",
            "t",
            &json!({"user_id": "@ann:b.example", "device_id": "D1", "access_token": "x", "device_proof": "p"}),
        )
        .unwrap();
        s.check(
            "server_frame",
            "t",
            &json!({"type": "caught_up", "room_id": "!r:b.example:8008", "epoch": "e", "seq": 3}),
        )
        .unwrap();
        // Server names may be IPv6 literals (spec §2), in every kind of id.
        s.check(
            "login_response",
            "t",
            &json!({"user_id": "@ann:[::1]:8008", "device_id": "D1", "access_token": "x", "device_proof": "p"}),
        )
        .unwrap();
        s.check("join_response", "t", &json!({"room_id": "!r:[2001:db8::1]", "alias": "#lobby:[::1]:8008"})).unwrap();
    }

    #[test]
    fn wrong_answers_are_caught() {
        let s = Schemas::load().unwrap();
        let bad = [
            ("error", json!({"errcode": "not_member"})),
            ("error", json!({"errcode": "no_such_code", "error": "x"})),
            ("login_response", json!({"user_id": "@Ann:b.example", "device_id": "D1", "access_token": "x"})),
            ("login_response", json!({"user_id": "@ann:[::1", "device_id": "D1", "access_token": "x"})),
            ("login_response", json!({"user_id": "@ann:b..example", "device_id": "D1", "access_token": "x"})),
            ("send_response", json!({"event_id": "$e", "seq": "7"})),
            ("send_response", json!({"event_id": "$e", "seq": -1})),
            (
                "messages_response",
                json!({"room_id": "!r:b", "epoch": "e", "earliest_seq": 1, "latest_seq": 1,
                "events": [{"event_id": "$e", "seq": 1, "type": "shout", "sender": "@a:b", "ts": 1}]}),
            ),
            ("server_frame", json!({"type": "ack", "event_id": "$e", "seq": 1})),
            ("server_frame", json!({"type": "hello"})),
            ("empty", json!({"ok": true})),
        ];
        for (schema, value) in bad {
            let err = s.check(schema, "t", &value).expect_err(&format!("{schema} accepted {value}"));
            assert!(matches!(err, Failure::Schema { .. }), "{err}");
        }
    }

    #[test]
    fn refs_to_other_files_resolve_from_the_embedded_copies() {
        let schema = json!({"$ref": format!("{ID_PREFIX}cursor.json")});
        let v = jsonschema::options().with_retriever(Embedded).build(&schema).unwrap();
        assert!(v.is_valid(&json!({"epoch": "e", "seq": 1})));
        assert!(!v.is_valid(&json!({"epoch": "e", "seq": 1, "x": 2})));
        let elsewhere = json!({"$ref": "https://example.com/x.json"});
        assert!(jsonschema::options().with_retriever(Embedded).build(&elsewhere).is_err());
    }
}

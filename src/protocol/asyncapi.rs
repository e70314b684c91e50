//! Generates `spec/asyncapi.json` (AsyncAPI 3.0): the WebSocket at
//! `/_parlor/client/v1/ws` (subprotocol `parlor.v1`) as one channel whose
//! messages are the variants of [`ClientFrame`] and [`ServerFrame`], one
//! operation per client frame (with its answers as the reply and its errcodes
//! from [`endpoints::FRAMES`]) and one per unprompted server frame.
//! `tests/spec.rs` compares it with the committed file.

use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use super::endpoints::{self, ANY_FRAME_ERRORS, CLOSE_CODES, FRAMES, UNPROMPTED_FRAMES};
use super::errors::ErrCode;
use super::ws::{ClientFrame, ServerFrame};
use super::{VERSIONS, WS_SUBPROTOCOL};

const CHANNEL: &str = "parlor";

/// One frame type: its `type`, the component schema holding it, and its doc.
struct Frame {
    kind: String,
    schema: String,
    summary: String,
}

/// Moves each variant of the tagged union `union` (a `oneOf` of objects
/// whose `type` is a `const`) into its own component schema.
fn split_union(schemas: &mut Map<String, Value>, union: &str) -> Vec<Frame> {
    let whole = schemas.remove(union).unwrap_or_else(|| panic!("{union} is generated"));
    let variants = whole["oneOf"].as_array().unwrap_or_else(|| panic!("{union} is a oneOf"));
    variants
        .iter()
        .map(|v| {
            let kind = v["properties"]["type"]["const"]
                .as_str()
                .unwrap_or_else(|| panic!("{union}: a variant without a const type"));
            let schema = format!("{union}{}", camel(kind));
            let summary = v["description"].as_str().unwrap_or_default().to_owned();
            assert!(schemas.insert(schema.clone(), v.clone()).is_none(), "{schema} exists twice");
            Frame { kind: kind.to_owned(), schema, summary }
        })
        .collect()
}

fn message_ref(kind: &str) -> Value {
    json!({ "$ref": format!("#/channels/{CHANNEL}/messages/{kind}") })
}

fn camel(kind: &str) -> String {
    kind.split('_').map(|w| w[..1].to_uppercase() + &w[1..]).collect()
}

/// The whole AsyncAPI document.
pub fn document() -> Value {
    // AsyncAPI's default schema format is a superset of JSON Schema draft 7.
    let mut generator = SchemaSettings::draft07()
        .with(|s| {
            s.definitions_path = "/components/schemas".into();
            s.meta_schema = None;
        })
        .into_generator();
    generator.subschema_for::<ClientFrame>();
    generator.subschema_for::<ServerFrame>();
    let mut schemas = generator.take_definitions(true);
    let client = split_union(&mut schemas, "ClientFrame");
    let server = split_union(&mut schemas, "ServerFrame");

    // A server frame named like a client frame (`typing`) is its own message.
    let client_kinds: Vec<String> = client.iter().map(|f| f.kind.clone()).collect();
    let server_key = |kind: &str| {
        if client_kinds.iter().any(|k| k == kind) { format!("{kind}_from_server") } else { kind.to_owned() }
    };
    let mut messages = Map::new();
    let mut channel_messages = Map::new();
    for (frame, direction, key) in client
        .iter()
        .map(|f| (f, "client → server", f.kind.clone()))
        .chain(server.iter().map(|f| (f, "server → client", server_key(&f.kind))))
    {
        let previous = messages.insert(
            key.clone(),
            json!({
                "name": frame.kind,
                "title": format!("{} ({direction})", frame.kind),
                "summary": frame.summary,
                "contentType": "application/json",
                "payload": { "$ref": format!("#/components/schemas/{}", frame.schema) },
            }),
        );
        assert!(previous.is_none(), "a client and a server frame are both named {}", frame.kind);
        channel_messages.insert(key.clone(), json!({ "$ref": format!("#/components/messages/{key}") }));
    }

    let server_kinds: Vec<&str> = server.iter().map(|f| f.kind.as_str()).collect();
    let channel_ref = json!({ "$ref": format!("#/channels/{CHANNEL}") });
    let mut operations = Map::new();
    for rule in FRAMES {
        let frame =
            client.iter().find(|f| f.kind == rule.frame).unwrap_or_else(|| panic!("no client frame {}", rule.frame));
        let mut errcodes: Vec<ErrCode> = ANY_FRAME_ERRORS.iter().chain(rule.errors).copied().collect();
        errcodes.sort_by_key(|c| ErrCode::ALL.iter().position(|x| x == c));
        errcodes.dedup();
        let mut reply: Vec<Value> = Vec::new();
        for answer in rule.answers.iter().chain(&["error"]) {
            assert!(server_kinds.contains(answer), "{}: no server frame {answer}", rule.frame);
            reply.push(message_ref(&server_key(answer)));
        }
        let answers = rule.answers.iter().map(|a| format!("`{a}`")).collect::<Vec<_>>().join(", ");
        let errors = errcodes.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ");
        let description = if answers.is_empty() {
            format!(
                "Not answered unless it fails: then an `error` frame, echoing the frame's `id`, with one of: {errors}."
            )
        } else {
            format!("Answered by {answers}, echoing the frame's `id`; or by an `error` frame with one of: {errors}.")
        };
        operations.insert(
            format!("receive{}", camel(rule.frame)),
            json!({
                "action": "receive",
                "channel": channel_ref,
                "title": format!("Client sends `{}`", rule.frame),
                "summary": frame.summary,
                "description": description,
                "messages": [message_ref(rule.frame)],
                "reply": { "channel": channel_ref, "messages": reply },
                "x-parlor-errcodes": errcodes,
            }),
        );
    }
    for frame in &server {
        let kind = frame.kind.as_str();
        let answers: Vec<String> =
            FRAMES.iter().filter(|r| r.answers.contains(&kind)).map(|r| format!("`{}`", r.frame)).collect();
        let mut when = Vec::new();
        if !answers.is_empty() {
            when.push(format!("in answer to {}", answers.join(", ")));
        }
        if kind == "error" {
            when.push("in answer to any client frame that failed".to_owned());
        }
        if UNPROMPTED_FRAMES.contains(&kind) {
            when.push("unprompted".to_owned());
        }
        assert!(!when.is_empty(), "server frame {kind} is neither an answer nor unprompted in endpoints.rs");
        let key = server_key(kind);
        operations.insert(
            format!("send{}", camel(&key)),
            json!({
                "action": "send",
                "channel": channel_ref,
                "title": format!("Server sends `{kind}`"),
                "summary": frame.summary,
                "description": format!("Sent {}.", when.join("; and ")),
                "messages": [message_ref(&key)],
            }),
        );
    }

    let ws = endpoints::http().into_iter().find(|e| e.id == "websocket").expect("the WebSocket endpoint");
    let close_codes = CLOSE_CODES.iter().map(|(c, what)| format!("- {c}: {what}")).collect::<Vec<_>>().join("\n");
    let description = format!(
        "The WebSocket of Parlor protocol v1 (spec/protocol.md §8): `GET {path}` with subprotocol \
         `{WS_SUBPROTOCOL}` (the upgrade is in openapi.json). Every message is a JSON text frame with a `type`. \
         A client may put an `id` (a string of at most 64 bytes) in any frame; the answer to that frame echoes it. \
         Authenticate with `Authorization: Bearer <token>` on the upgrade or with an `auth` frame first, within \
         10 s; any other frame before that gets `not_authenticated`. A failed frame gets an `error` frame and \
         the connection stays open. The server pings (control frames) every 30 s.\n\nClose codes:\n{close_codes}",
        path = ws.path
    );
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "Parlor WebSocket API",
            "version": VERSIONS.last().expect("a protocol version"),
            "description": description,
            "license": { "name": "MIT OR Apache-2.0" },
        },
        "defaultContentType": "application/json",
        "servers": {
            "local": {
                "host": "127.0.0.1:8008",
                "protocol": "ws",
                "description": "`parlor serve` on its default address",
                "security": [{ "$ref": "#/components/securitySchemes/bearer" }],
            },
        },
        "channels": {
            CHANNEL: {
                "address": ws.path,
                "title": "The client WebSocket",
                "description": format!("One connection per client, subprotocol `{WS_SUBPROTOCOL}`."),
                "messages": channel_messages,
                "bindings": {
                    "ws": {
                        "method": "GET",
                        "headers": {
                            "type": "object",
                            "properties": {
                                "Sec-WebSocket-Protocol": { "type": "string", "description": format!("Must offer `{WS_SUBPROTOCOL}`.") },
                                "Authorization": { "type": "string", "description": "`Bearer <access_token>`; else send `auth` first." },
                                "Origin": { "type": "string", "description": "Browsers: must be this server or on its allow-list." },
                            },
                            "required": ["Sec-WebSocket-Protocol"],
                        },
                        "bindingVersion": "0.1.0",
                    },
                },
            },
        },
        "operations": operations,
        "components": {
            "schemas": schemas,
            "messages": messages,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The access token from `login`: in the upgrade's `Authorization` header, or in the first frame, `auth {token}`.",
                },
            },
        },
    })
}

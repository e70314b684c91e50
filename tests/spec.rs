//! The spec must not drift from the code: the committed JSON Schemas must be
//! exactly what the protocol types generate, as must `spec/openapi.json` and
//! `spec/asyncapi.json`; `spec/protocol.md` must list every errcode and limit;
//! and the running server must answer every endpoint of the OpenAPI table.
//! Run with `PARLOR_BLESS=1` to rewrite the schemas and API documents.

mod support;

use std::path::Path;

use parlor::protocol::endpoints::{self, Method};
use parlor::protocol::{ErrCode, limits, schemas};

fn spec_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/spec"))
}

#[test]
fn committed_schemas_match_the_protocol_types() {
    let dir = spec_dir().join("schemas");
    let bless = std::env::var_os("PARLOR_BLESS").is_some();
    let mut drifted = Vec::new();
    let generated = schemas::all();
    for (file, schema) in &generated {
        let want = schemas::render(schema);
        let path = dir.join(file);
        if bless {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &want).unwrap();
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(want.as_str()) {
            drifted.push(file.to_string());
        }
    }
    let names: Vec<_> = generated.iter().map(|(f, _)| *f).collect();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if !names.contains(&name.as_str()) {
            drifted.push(format!("{name} (no longer generated)"));
        }
    }
    assert!(
        drifted.is_empty(),
        "spec/schemas drifted from src/protocol: {drifted:?}; run `PARLOR_BLESS=1 cargo test --test spec` and commit"
    );
}

#[test]
fn committed_api_documents_match_the_protocol_types() {
    let bless = std::env::var_os("PARLOR_BLESS").is_some();
    let mut drifted = Vec::new();
    for (file, doc) in schemas::api_documents() {
        let want = schemas::render_document(&doc);
        let path = spec_dir().join(file);
        if bless {
            std::fs::write(&path, &want).unwrap();
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(want.as_str()) {
            drifted.push(file);
        }
    }
    assert!(
        drifted.is_empty(),
        "spec/{drifted:?} drifted from src/protocol; run `PARLOR_BLESS=1 cargo test --test spec` and commit"
    );
}

#[test]
fn protocol_md_lists_every_errcode_with_its_status() {
    let md = std::fs::read_to_string(spec_dir().join("protocol.md")).unwrap();
    for code in ErrCode::ALL {
        let row = format!("| `{}` | {} |", code.as_str(), code.status());
        assert!(md.contains(&row), "spec/protocol.md lacks the errcode row starting {row:?}");
    }
}

#[test]
fn protocol_md_states_every_limit() {
    let md = std::fs::read_to_string(spec_dir().join("protocol.md")).unwrap();
    let fmt = |n: usize| {
        let s = n.to_string();
        let mut out = String::new();
        for (i, ch) in s.chars().enumerate() {
            if i > 0 && (s.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(ch);
        }
        out
    };
    for (what, n) in [
        ("request body", limits::MAX_BODY_BYTES),
        ("WebSocket message", limits::MAX_FRAME_BYTES),
        ("message body", limits::MAX_MESSAGE_BYTES),
        ("username", limits::USERNAME_MAX),
        ("room name", limits::ROOM_NAME_MAX),
        ("password minimum", limits::PASSWORD_MIN),
        ("password maximum", limits::PASSWORD_MAX_BYTES),
        ("txn_id", limits::TXN_ID_MAX),
        ("device_name", limits::DEVICE_NAME_MAX),
        ("history limit maximum", limits::HISTORY_LIMIT_MAX as usize),
        ("history limit default", limits::HISTORY_LIMIT_DEFAULT as usize),
        ("subscriptions per connection", limits::WS_MAX_SUBSCRIPTIONS),
        ("frame id", limits::WS_ID_MAX),
        ("history page size", limits::HISTORY_PAGE_MAX_BYTES),
        ("request target", limits::MAX_TARGET_BYTES),
        ("request head", limits::MAX_HEAD_BYTES),
        ("header fields", limits::MAX_HEADER_FIELDS),
        ("typing timeout", limits::TYPING_TIMEOUT_SECS as usize),
        ("typing frames per room", limits::TYPING_FRAMES_PER_SEC),
        ("unread maximum", limits::UNREAD_MAX),
        ("unread scan", limits::UNREAD_SCAN_MAX),
        ("room display name", limits::ROOM_DISPLAY_NAME_MAX_BYTES),
        ("room topic", limits::ROOM_TOPIC_MAX_BYTES),
        ("moderation reason", limits::REASON_MAX_BYTES),
        ("invites on create", limits::CREATE_INVITES_MAX),
        ("edit window", limits::EDIT_WINDOW),
    ] {
        let row = format!("| {what} | {} |", fmt(n));
        assert!(md.contains(&row), "spec/protocol.md lacks the limit row {row:?}");
    }
}

/// The endpoint table that `spec/openapi.json` is made from and the server's
/// router must agree: every endpoint of the table is routed with its method
/// (whatever else its answer says, it is not `not_found` or
/// `method_not_allowed`), and the other methods on its path are
/// `method_not_allowed`.
#[tokio::test]
async fn the_server_routes_every_endpoint_of_the_openapi_table() {
    let data = tempfile::tempdir().unwrap();
    let server = support::TestServer::start_in(data.path(), |_| {}).await;
    let api = support::Api::new(&server.url);
    let all = endpoints::http();
    let mut wrong = Vec::new();
    for ep in &all {
        let path =
            ep.path.replace("{room}", "lobby").replace("{room_id}", "%21r%3Aother.example").replace("{txn_id}", "t1");
        for method in [Method::Get, Method::Post, Method::Put, Method::Patch] {
            let listed = all.iter().any(|e| e.path == ep.path && e.method == method);
            let (status, body) = api.raw(method.as_str(), &path, None, Vec::new()).await;
            let errcode = body["errcode"].as_str().unwrap_or_default().to_owned();
            let routed = errcode != ErrCode::NotFound.as_str() && errcode != ErrCode::MethodNotAllowed.as_str();
            if listed && !routed {
                wrong.push(format!("{} {path}: {status} {errcode}, but the table lists it", method.as_str()));
            }
            if !listed && errcode != ErrCode::MethodNotAllowed.as_str() {
                wrong.push(format!("{} {path}: {status} {errcode}, not method_not_allowed", method.as_str()));
            }
        }
    }
    server.stop().await;
    assert!(wrong.is_empty(), "src/protocol/endpoints.rs and the router disagree:\n{}", wrong.join("\n"));
}

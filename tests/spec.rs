//! The spec must not drift from the code: the committed JSON Schemas must be
//! exactly what the protocol types generate, and `spec/protocol.md` must list
//! every errcode and limit. Run with `PARLOR_BLESS=1` to rewrite the schemas.

use std::path::Path;

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
            if i > 0 && (s.len() - i) % 3 == 0 {
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
    ] {
        let row = format!("| {what} | {} |", fmt(n));
        assert!(md.contains(&row), "spec/protocol.md lacks the limit row {row:?}");
    }
}

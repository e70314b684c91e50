//! The cases, one module per spec section, and small helpers they share.
//! `all()` lists them in spec order; each module's `cases()` is in the order
//! of its section.

use serde_json::Value;

use crate::runner::Case;

mod accounts;
mod conventions;
mod errors;
mod federation;
mod guarantees;
mod history;
mod limits;
mod live;
mod messages;
mod operation;
mod rate_limits;
mod redactions;
mod rooms;
mod rooms_v11;
mod websocket;

pub fn all() -> Vec<Case> {
    [
        conventions::cases(),
        errors::cases(),
        limits::cases(),
        accounts::cases(),
        rooms::cases(),
        live::http_cases(),
        messages::cases(),
        history::cases(),
        websocket::cases(),
        live::cases(),
        guarantees::cases(),
        operation::cases(),
        federation::cases(),
        rooms_v11::cases(),
        redactions::cases(),
        rate_limits::cases(),
    ]
    .concat()
}

/// A string field, or "" when absent.
pub fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// An integer field, or u64::MAX when absent (so it never matches by accident).
pub fn n(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(u64::MAX)
}

/// The `seq`s of a list of events.
pub fn seqs(events: &Value) -> Vec<u64> {
    events.as_array().map(|a| a.iter().map(|e| n(e, "seq")).collect()).unwrap_or_default()
}

/// `lo..=hi` as a vector, for comparing seq lists.
pub fn range(lo: u64, hi: u64) -> Vec<u64> {
    (lo..=hi).collect()
}

#[cfg(test)]
mod tests {
    /// Every errcode of the spec's table appears in some case, except those
    /// no client can provoke (listed, so the gap is explicit).
    #[test]
    fn every_errcode_is_triggered_somewhere() {
        const SOURCES: &[&str] = &[
            include_str!("conventions.rs"),
            include_str!("errors.rs"),
            include_str!("limits.rs"),
            include_str!("accounts.rs"),
            include_str!("rooms.rs"),
            include_str!("messages.rs"),
            include_str!("history.rs"),
            include_str!("websocket.rs"),
            include_str!("live.rs"),
            include_str!("guarantees.rs"),
            include_str!("operation.rs"),
            include_str!("federation.rs"),
            include_str!("rate_limits.rs"),
            include_str!("rooms_v11.rs"),
            include_str!("redactions.rs"),
        ];
        // Those only the server's operator can bring about (a token issued
        // and used up or expired, a deactivated account, a denied server,
        // the admin channel's own code): tests/admin.rs checks them.
        const UNREACHABLE: &[&str] = &[
            "internal",
            "registration_token_used_up",
            "registration_token_expired",
            "user_deactivated",
            "server_denied",
        ];
        let schema: serde_json::Value = serde_json::from_str(include_str!("../../../spec/schemas/error.json")).unwrap();
        let codes: Vec<&str> = schema["$defs"]["ErrCode"]["oneOf"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["const"].as_str().unwrap())
            .collect();
        assert!(codes.len() > 30);
        let missing: Vec<&&str> = codes
            .iter()
            .filter(|c| !UNREACHABLE.contains(c))
            .filter(|c| !SOURCES.iter().any(|src| src.contains(&format!("\"{c}\""))))
            .collect();
        assert!(missing.is_empty(), "errcodes no case triggers: {missing:?}");
    }
}

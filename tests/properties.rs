//! The properties the cargo-fuzz targets check (fuzz/fuzz_targets: ids,
//! federation_auth, request_body), held on stable in every test run with
//! generated inputs: inputs shaped like the grammar they parse (so most of
//! them get past the first character), plus arbitrary strings and bytes.
//! Fuzzing goes deeper; this keeps the properties from regressing between
//! fuzzing runs.

use parlor::protocol::ErrCode;
use parlor::protocol::accounts::{Empty, LoginRequest, RegisterRequest};
use parlor::protocol::federation::{
    FedJoinRequest, FedLeaveRequest, FedSendRequest, FedTransaction, parse_auth_header, render_auth_header,
};
use parlor::protocol::ids::{RoomAlias, RoomId, RoomName, RoomRef, ServerName, UserId, Username};
use parlor::protocol::parse::{Refusal, parse_json};
use parlor::protocol::rooms::{CreateRoomRequest, ModerationRequest, ReadRequest, RoomUpdate, SendRequest};
use proptest::prelude::*;

/// Strings shaped like ids: a sigil, a local part, a server that may be an
/// IPv6 literal, a port, and now and then a character out of place.
fn id_like() -> impl Strategy<Value = String> {
    prop_oneof![
        "[@#!]?[A-Za-z0-9._~-]{0,34}(:([a-zA-Z0-9.-]{0,20}|\\[[0-9a-fA-F:.]{0,12}\\]?)(:[0-9]{0,6})?){0,2}",
        "[@#!]?[\\PC ]{0,20}(:[\\PC]{0,12}){0,3}",
        any::<String>(),
    ]
}

fn check_ids(s: &str) {
    if let Ok(n) = ServerName::parse(s) {
        assert_eq!(ServerName::parse(n.as_str()).unwrap().as_str(), n.as_str());
    }
    if let Ok(u) = Username::parse(s) {
        assert_eq!(Username::parse(u.as_str()).unwrap().as_str(), u.as_str());
    }
    if let Ok(r) = RoomName::parse(s) {
        assert_eq!(RoomName::parse(r.as_str()).unwrap().as_str(), r.as_str());
    }
    if let Ok(u) = UserId::parse(s) {
        assert_eq!(UserId::parse(u.as_str()).unwrap(), u);
        assert!(u.as_str().ends_with(u.server()) && u.as_str().contains(u.localpart()));
        assert!(ServerName::parse(u.server()).is_ok(), "{u:?}: its server is a server name");
    }
    if let Ok(a) = RoomAlias::parse(s) {
        assert_eq!(RoomAlias::parse(a.as_str()).unwrap(), a);
        assert!(a.as_str().ends_with(a.server()));
    }
    if let Ok(r) = RoomId::parse(s) {
        assert_eq!(RoomId::parse(r.as_str()).unwrap(), r);
        assert!(r.as_str().ends_with(r.server()));
    }
    if let Ok(r) = RoomRef::parse(s) {
        let again = RoomRef::parse(&r.to_string()).expect("a room ref prints as one");
        assert_eq!(again.to_string(), r.to_string());
    }
}

/// Headers shaped like `Parlor-Signature k="v", …`, with their parts
/// dropped, repeated, unquoted or out of range now and then.
fn auth_like() -> impl Strategy<Value = String> {
    let param = prop_oneof![
        "origin=\"[a-z0-9.:-]{0,20}\"",
        "destination=\"[a-z0-9.:-]{0,20}\"",
        "key=\"[a-z0-9:_]{0,12}\"",
        "ts=\"?[0-9]{0,21}\"?",
        "sig=\"[A-Za-z0-9_-]{0,90}\"",
        "[a-z]{1,6}=\"[\\PC]{0,8}\"",
    ];
    ("(Parlor-Signature|parlor-signature|Bearer)? ?", prop::collection::vec(param, 0..8), "[,; ]{1,2}")
        .prop_map(|(scheme, params, sep)| format!("{scheme}{}", params.join(&sep)))
}

fn check_auth(s: &str) {
    if let Ok(p) = parse_auth_header(s) {
        assert!(s.contains(p.origin.as_str()) && s.contains(&p.destination) && s.contains(&p.key));
        let again = render_auth_header(p.origin.as_str(), &p.destination, &p.key, p.ts, &p.sig);
        let q = parse_auth_header(&again).expect("a rendered header parses");
        assert_eq!((q.origin, q.destination, q.key, q.ts, q.sig), (p.origin, p.destination, p.key, p.ts, p.sig));
    }
}

fn body<T: serde::de::DeserializeOwned>(data: &[u8], empty_ok: bool) {
    if let Err(Refusal { code, .. }) = parse_json::<T>(data, empty_ok) {
        assert!(matches!(code, ErrCode::MalformedJson | ErrCode::InvalidField), "{code:?}");
    }
}

/// Bodies shaped like JSON objects with the protocol's field names and
/// values of every JSON type, plus arbitrary bytes.
fn body_like() -> impl Strategy<Value = Vec<u8>> {
    let key = prop_oneof![
        Just("username"),
        Just("password"),
        Just("body"),
        Just("replaces"),
        Just("name"),
        Just("topic"),
        Just("visibility"),
        Just("invite"),
        Just("user_id"),
        Just("reason"),
        Just("seq"),
        Just("room_id"),
        Just("events"),
        Just("x"),
    ];
    let value = prop_oneof![
        "\"[\\PC]{0,12}\"",
        "-?[0-9]{1,22}(\\.[0-9]{1,3})?",
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("[]".to_owned()),
        Just("{}".to_owned()),
        "\\[\"@[a-z]{1,4}:[a-z]{1,4}\"\\]",
        "\"(public|private|owner|moderator|member)\"",
    ];
    prop_oneof![
        prop::collection::vec((key, value), 0..6).prop_map(|kv| {
            let fields: Vec<String> = kv.into_iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            format!("{{{}}}", fields.join(",")).into_bytes()
        }),
        prop::collection::vec(any::<u8>(), 0..64),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn ids_that_parse_print_back_as_themselves(s in id_like()) {
        check_ids(&s);
    }

    #[test]
    fn federation_auth_headers_parse_or_refuse_and_render_back(s in prop_oneof![auth_like(), any::<String>()]) {
        check_auth(&s);
    }

    #[test]
    fn request_bodies_are_values_or_the_specs_refusals(data in body_like()) {
        body::<RegisterRequest>(&data, false);
        body::<LoginRequest>(&data, false);
        body::<SendRequest>(&data, false);
        body::<Empty>(&data, true);
        body::<CreateRoomRequest>(&data, true);
        body::<RoomUpdate>(&data, false);
        body::<ModerationRequest>(&data, false);
        body::<ReadRequest>(&data, false);
        body::<FedJoinRequest>(&data, false);
        body::<FedLeaveRequest>(&data, false);
        body::<FedSendRequest>(&data, false);
        body::<FedTransaction>(&data, false);
    }
}

/// Known-valid inputs (an IPv6 user id, a rendered signature header, a send
/// body) take the accepting branches of the checks above, which generated
/// inputs reach less often.
#[test]
fn the_generators_reach_valid_inputs() {
    assert!(UserId::parse("@ann:[::1]:8008").is_ok());
    let header = render_auth_header("a.example", "b.example:8448", "ed25519:k1", 1_700_000_000_000, &[7u8; 64]);
    check_auth(&header);
    assert!(parse_auth_header(&header).is_ok(), "{header}");
    body::<SendRequest>(br#"{"body":"hi"}"#, false);
    assert!(parse_json::<SendRequest>(br#"{"body":"hi"}"#, false).is_ok());
}

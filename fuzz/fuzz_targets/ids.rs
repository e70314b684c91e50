//! Identifier syntax: whatever parses prints back as itself (already
//! folded) and parses again to the same value, and its parts are parts of it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use parlor::protocol::ids::{RoomAlias, RoomId, RoomName, RoomRef, ServerName, UserId, Username};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
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
});

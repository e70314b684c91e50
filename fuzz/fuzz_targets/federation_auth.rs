//! The federation `Authorization: Parlor-Signature k="v", …` header parser:
//! never a panic, and what it returns was in the header and renders back to
//! a header that parses to the same parameters.
#![no_main]

use libfuzzer_sys::fuzz_target;
use parlor::protocol::federation::{parse_auth_header, render_auth_header};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(p) = parse_auth_header(s) {
        assert!(s.contains(p.origin.as_str()) && s.contains(&p.destination) && s.contains(&p.key));
        let again = render_auth_header(p.origin.as_str(), &p.destination, &p.key, p.ts, &p.sig);
        let q = parse_auth_header(&again).expect("a rendered header parses");
        assert_eq!((q.origin, q.destination, q.key, q.ts, q.sig), (p.origin, p.destination, p.key, p.ts, p.sig));
    }
});

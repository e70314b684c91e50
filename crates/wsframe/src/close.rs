//! Close codes (RFC 6455 §7.4): the ones this crate fails a connection
//! with, and which codes a peer may send at all.

/// A frame broke the protocol.
pub const PROTOCOL_ERROR: u16 = 1002;
/// A text message (or a close reason) was not UTF-8.
pub const INVALID_PAYLOAD: u16 = 1007;
/// A message was larger than the decoder takes.
pub const TOO_BIG: u16 = 1009;

/// Whether a peer may put `code` in a close frame: the codes RFC 6455
/// §7.4.1 defines for use on the wire (1000–1003, 1007–1011), those IANA has
/// registered since (1012–1014), and the ranges for libraries and
/// applications (3000–4999). Anything else (0–999, 1004–1006, 1015,
/// 1016–2999 unassigned, 5000 and up) fails the connection with 1002.
pub fn is_valid(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

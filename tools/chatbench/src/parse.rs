//! Reading server frames cheaply. The hot frames are `event` and `ack`, at
//! up to hundreds of thousands per second; for those we only need `seq`,
//! the ack's `id`, and the tag this tool put at the start of each message
//! body (`cb <msg> <scheduled_us>`), so they are found by byte search instead
//! of building a JSON tree. The search is only trusted for the exact shape
//! the reference server emits (`{"type":"event",…` with the tag first in the
//! object); anything else goes through serde_json, so a server that orders
//! or spaces its JSON differently is still read correctly, only slower.
//! Tests check both paths agree.

use serde_json::Value;

/// What this tool embeds at the start of every message body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tag {
    /// The message's number in the run (its `id` and `txn_id` derive from it).
    pub msg: u64,
    /// Its scheduled send time, microseconds after the run's origin.
    pub sched_us: u64,
}

/// A server frame, as far as the hot path cares.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// An `event`: its seq and, when the body carries our tag, the tag.
    Event { seq: u64, tag: Option<Tag> },
    /// An `ack`: the echoed `id` when it is one of our numeric send ids.
    Ack { id: Option<u64>, seq: u64 },
    /// Any other frame, parsed.
    Control(Value),
    /// Not JSON, or an event/ack missing its seq.
    Malformed,
}

/// Write the tag at the start of a body.
pub fn write_tag(out: &mut Vec<u8>, msg: u64, sched_us: u64) {
    use std::io::Write;
    let _ = write!(out, "cb {msg} {sched_us}");
}

/// Classify a text frame, by byte search when it has the reference shape.
pub fn classify(p: &[u8]) -> Frame {
    if let Some(f) = fast(p) {
        return f;
    }
    slow(p)
}

fn fast(p: &[u8]) -> Option<Frame> {
    const EVENT: &[u8] = b"{\"type\":\"event\",";
    const ACK: &[u8] = b"{\"type\":\"ack\",";
    if p.starts_with(EVENT) {
        // `"seq":` can only be a key: inside a JSON string every `"` is escaped.
        let seq = number_after(p, EVENT.len(), b"\"seq\":")?;
        let tag = match find(&p[EVENT.len()..], b"\"body\":\"") {
            Some(i) => Some(parse_tag(&p[EVENT.len() + i + 8..])?),
            None => None,
        }
        .flatten();
        Some(Frame::Event { seq, tag })
    } else if p.starts_with(ACK) {
        let seq = number_after(p, ACK.len(), b"\"seq\":")?;
        let id = match find(&p[ACK.len()..], b"\"id\":\"") {
            Some(i) => {
                let rest = &p[ACK.len() + i + 6..];
                let (n, used) = digits(rest)?;
                // The id must be exactly the number: "12x" is not ours.
                if rest.get(used) == Some(&b'"') { Some(n) } else { None }
            }
            None => None,
        };
        Some(Frame::Ack { id, seq })
    } else {
        None
    }
}

/// Parse the tag at the start of a body string's content. `Some(None)`: a
/// body that is not ours; `None`: give up and let serde decide.
fn parse_tag(s: &[u8]) -> Option<Option<Tag>> {
    let Some(rest) = s.strip_prefix(b"cb ") else {
        // A body with escapes could still hide our tag behind `\u0063`…; let serde see it.
        return if s.iter().take_while(|&&b| b != b'"').any(|&b| b == b'\\') { None } else { Some(None) };
    };
    let Some((msg, n1)) = digits(rest) else {
        return Some(None);
    };
    if rest.get(n1) != Some(&b' ') {
        return Some(None);
    }
    let Some((sched_us, n2)) = digits(&rest[n1 + 1..]) else {
        return Some(None);
    };
    match rest.get(n1 + 1 + n2) {
        Some(b' ') | Some(b'"') => Some(Some(Tag { msg, sched_us })),
        _ => Some(None),
    }
}

/// Parse a tag from a body string (slow path, already unescaped).
pub fn tag_of(body: &str) -> Option<Tag> {
    let rest = body.as_bytes().strip_prefix(b"cb ")?;
    let (msg, n1) = digits(rest)?;
    if rest.get(n1) != Some(&b' ') {
        return None;
    }
    let (sched_us, n2) = digits(&rest[n1 + 1..])?;
    match rest.get(n1 + 1 + n2) {
        None | Some(b' ') => Some(Tag { msg, sched_us }),
        _ => None,
    }
}

fn number_after(p: &[u8], from: usize, key: &[u8]) -> Option<u64> {
    let i = find(&p[from..], key)? + from + key.len();
    let (n, _) = digits(&p[i..])?;
    Some(n)
}

/// Leading decimal digits (at least one, no overflow).
fn digits(s: &[u8]) -> Option<(u64, usize)> {
    let mut n: u64 = 0;
    let mut i = 0;
    while i < s.len() && s[i].is_ascii_digit() {
        n = n.checked_mul(10)?.checked_add((s[i] - b'0') as u64)?;
        i += 1;
    }
    (i > 0).then_some((n, i))
}

/// First occurrence of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let first = *needle.first()?;
    let last_start = hay.len().checked_sub(needle.len())?;
    let mut i = 0;
    while i <= last_start {
        let k = hay[i..=last_start].iter().position(|&b| b == first)?;
        i += k;
        if &hay[i..i + needle.len()] == needle {
            return Some(i);
        }
        i += 1;
    }
    None
}

fn slow(p: &[u8]) -> Frame {
    let Ok(v) = serde_json::from_slice::<Value>(p) else {
        return Frame::Malformed;
    };
    match v.get("type").and_then(Value::as_str) {
        Some("event") => {
            let ev = v.get("event");
            let Some(seq) = ev.and_then(|e| e.get("seq")).and_then(Value::as_u64) else {
                return Frame::Malformed;
            };
            let tag = ev.and_then(|e| e.get("body")).and_then(Value::as_str).and_then(tag_of);
            Frame::Event { seq, tag }
        }
        Some("ack") => {
            let Some(seq) = v.get("seq").and_then(Value::as_u64) else {
                return Frame::Malformed;
            };
            let id = v.get("id").and_then(Value::as_str).and_then(|s| {
                if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) { None } else { s.parse().ok() }
            });
            Frame::Ack { id, seq }
        }
        _ => Frame::Control(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both(p: &str) -> Frame {
        let s = slow(p.as_bytes());
        let c = classify(p.as_bytes());
        assert_eq!(c, s, "fast and slow disagree on {p}");
        c
    }

    #[test]
    fn reference_shaped_frames_take_the_fast_path_and_agree() {
        let ev = r#"{"type":"event","room_id":"!r:x","epoch":"e","event":{"event_id":"$a","seq":42,"type":"message","sender":"@u:x","body":"cb 7 1234 xxxx","ts":1}}"#;
        assert!(fast(ev.as_bytes()).is_some());
        assert_eq!(both(ev), Frame::Event { seq: 42, tag: Some(Tag { msg: 7, sched_us: 1234 }) });
        let bare = r#"{"type":"event","room_id":"!r:x","epoch":"e","event":{"event_id":"$a","seq":43,"type":"message","sender":"@u:x","body":"cb 8 99","ts":1}}"#;
        assert_eq!(both(bare), Frame::Event { seq: 43, tag: Some(Tag { msg: 8, sched_us: 99 }) });
        let join = r#"{"type":"event","room_id":"!r:x","epoch":"e","event":{"event_id":"$b","seq":1,"type":"join","sender":"@u:x","ts":1}}"#;
        assert_eq!(both(join), Frame::Event { seq: 1, tag: None });
        let ack = r#"{"type":"ack","id":"17","room_id":"!r:x","event_id":"$c","seq":9}"#;
        assert!(fast(ack.as_bytes()).is_some());
        assert_eq!(both(ack), Frame::Ack { id: Some(17), seq: 9 });
    }

    #[test]
    fn other_shapes_fall_back_to_serde_and_still_read_right() {
        // Keys reordered, spaces after colons: not the fast shape.
        let ev = r#"{"epoch": "e", "event": {"body": "cb 5 10 pad", "seq": 3, "type": "message"}, "type": "event"}"#;
        assert!(fast(ev.as_bytes()).is_none());
        assert_eq!(classify(ev.as_bytes()), Frame::Event { seq: 3, tag: Some(Tag { msg: 5, sched_us: 10 }) });
        // Fast shape but a space before the number: fast gives up, slow reads it.
        let spaced = r#"{"type":"event","room_id":"!r:x","epoch":"e","event":{"seq": 4,"body":"cb 1 2"}}"#;
        assert_eq!(classify(spaced.as_bytes()), Frame::Event { seq: 4, tag: Some(Tag { msg: 1, sched_us: 2 }) });
        // An escaped body might hide a tag: the slow path unescapes it.
        let esc = r#"{"type":"event","room_id":"!r:x","epoch":"e","event":{"seq":5,"body":"\u0063b 3 4"}}"#;
        assert_eq!(classify(esc.as_bytes()), Frame::Event { seq: 5, tag: Some(Tag { msg: 3, sched_us: 4 }) });
        let ctl = r#"{"type":"caught_up","room_id":"!r:x","epoch":"e","seq":12}"#;
        assert!(matches!(classify(ctl.as_bytes()), Frame::Control(v) if v["seq"] == 12));
        assert_eq!(classify(b"not json"), Frame::Malformed);
        assert_eq!(classify(br#"{"type":"event","event":{}}"#), Frame::Malformed);
    }

    #[test]
    fn bodies_that_are_not_ours_carry_no_tag() {
        for body in ["hello", "cb", "cb x 1", "cb 1", "cb 1 2x", "cb 1 2\"q", "cb 99999999999999999999999 1", "xcb 1 2"]
        {
            let ev = format!(
                r#"{{"type":"event","room_id":"!r:x","epoch":"e","event":{{"event_id":"$a","seq":2,"type":"message","sender":"@u:x","body":{},"ts":1}}}}"#,
                serde_json::to_string(body).unwrap()
            );
            assert_eq!(both(&ev), Frame::Event { seq: 2, tag: None }, "{body}");
        }
        // Ack ids that are not plain numbers are not our sends.
        assert_eq!(
            both(r#"{"type":"ack","id":"s1","room_id":"!r:x","event_id":"$c","seq":9}"#),
            Frame::Ack { id: None, seq: 9 }
        );
    }

    #[test]
    fn find_handles_edges() {
        assert_eq!(find(b"abcabd", b"abd"), Some(3));
        assert_eq!(find(b"ab", b"abc"), None);
        assert_eq!(find(b"", b"a"), None);
        assert_eq!(find(b"aaa", b"aa"), Some(0));
    }
}

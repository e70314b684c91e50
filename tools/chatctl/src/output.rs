//! Standard output: human lines or `--json` objects (one per line), events
//! rendered as "time <sender> text", and other people's text made safe for a
//! terminal. A reader that goes away (`chatctl tail room | head`) ends the
//! program quietly instead of with a panic.

use std::collections::{HashMap, VecDeque};
use std::io::{self, IsTerminal, Write};

use serde::Serialize;
use serde_json::{Map, Value};

pub use crate::localtime::local_time;
use crate::wire::{Cursor, Event, ServerFrame};

#[derive(Debug, Clone, Copy)]
pub struct Out {
    pub json: bool,
}

impl Out {
    /// Prints one line of human output (ignored in `--json` mode).
    pub fn human(&self, line: &str) {
        if !self.json {
            write_line(line);
        }
    }

    /// Prints one JSON object (ignored in human mode).
    pub fn json<T: Serialize>(&self, value: &T) {
        if self.json {
            write_line(&serde_json::to_string(value).expect("output serializes"));
        }
    }

    /// One event, as history and tail print it. In JSON it is the event's
    /// own object with `room_id` and `epoch` added, so both commands produce
    /// the same lines.
    /// `edit_of` is the seq of the message an edit replaces, when the caller
    /// has seen it (the human line names it; JSON carries `replaces` as is).
    pub fn event(&self, room_id: &str, epoch: &str, event: &Event, edit_of: Option<u64>) {
        if self.json {
            let mut obj = Map::new();
            obj.insert("room_id".into(), Value::String(room_id.into()));
            obj.insert("epoch".into(), Value::String(epoch.into()));
            if let Value::Object(fields) = serde_json::to_value(event).expect("events serialize") {
                obj.extend(fields);
            }
            write_line(&Value::Object(obj).to_string());
        } else {
            write_line(&render_event(event, &local_time(event.ts), edit_of));
        }
    }

    /// A `typing`, `presence` or `receipt` frame (`tail --activity`); in
    /// JSON the frame as the server sent it (`raw`), on one line.
    pub fn activity(&self, frame: &ServerFrame, raw: &str) {
        if self.json {
            if let Ok(v) = serde_json::from_str::<Value>(raw) {
                write_line(&v.to_string());
            }
        } else if let Some(line) = render_activity(frame, &local_time(now_ms())) {
            write_line(&line);
        }
    }

    /// A `gap` from the server: events that will never arrive. This is part
    /// of the stream (a log written from stdout must show the hole), so it
    /// goes to stdout, unlike connection notices.
    pub fn gap(&self, room_id: &str, from: &Cursor, to: &Cursor, reason: &str) {
        if self.json {
            let v = serde_json::json!({"type": "gap", "room_id": room_id, "from": from, "to": to, "reason": reason});
            write_line(&v.to_string());
        } else if from.epoch != to.epoch {
            write_line(&format!(
                "-- gap ({reason}): the room's log was started again; events after seq {} of the old log are lost; \
                 going on from seq {} --",
                from.seq,
                to.seq + 1
            ));
        } else {
            write_line(&format!(
                "-- gap ({reason}): events {}..{} are no longer available; going on from seq {} --",
                from.seq + 1,
                to.seq,
                to.seq + 1
            ));
        }
    }
}

/// A `typing`, `presence` or `receipt` frame (`tail --activity`): not part
/// of the room log, so marked `~` rather than `*`, with the time it arrived.
pub fn render_activity(frame: &ServerFrame, time: &str) -> Option<String> {
    let text = match frame {
        ServerFrame::Typing { user_ids, .. } => {
            let who: Vec<String> = user_ids.iter().map(|u| sanitize(u)).collect();
            match who.as_slice() {
                [] => "nobody is typing".to_owned(),
                [one] => format!("{one} is typing"),
                [rest @ .., last] => format!("{} and {last} are typing", rest.join(", ")),
            }
        }
        ServerFrame::Presence { user_id, presence } => format!("{} is {}", sanitize(user_id), sanitize(presence)),
        ServerFrame::Receipt { user_id, seq, .. } => format!("{} read up to seq {seq}", sanitize(user_id)),
        _ => return None,
    };
    Some(format!("{time} ~ {text}"))
}

/// The seqs of the events printed last, so that an edit can name the
/// message it replaces. The server accepts edits of the room's newest 1,000
/// events only (spec §12), so remembering that many is enough.
#[derive(Debug, Default)]
pub struct RecentIds {
    order: VecDeque<String>,
    seqs: HashMap<String, u64>,
}

impl RecentIds {
    const KEEP: usize = 1000;

    /// Remembers `event` and answers the seq of the message it edits (or,
    /// for a `redaction`, deletes), if any and if seen.
    pub fn note(&mut self, event: &Event) -> Option<u64> {
        let refers = event.extra.get("replaces").or_else(|| event.extra.get("redacts"));
        let edit_of = refers.and_then(Value::as_str).and_then(|id| self.seqs.get(id).copied());
        if self.seqs.insert(event.event_id.clone(), event.seq).is_none() {
            self.order.push_back(event.event_id.clone());
            if self.order.len() > Self::KEEP
                && let Some(old) = self.order.pop_front()
            {
                self.seqs.remove(&old);
            }
        }
        edit_of
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A notice for the person at the terminal (progress, hints); never data.
pub fn notice(line: &str) {
    eprintln!("chatctl: {line}");
}

/// Whether hints meant for a person are worth printing.
pub fn stderr_is_terminal() -> bool {
    io::stderr().is_terminal()
}

fn write_line(line: &str) {
    write_raw(format!("{line}\n").as_bytes());
}

/// Writes to stdout, ending the program quietly if the reader is gone.
pub fn write_raw(bytes: &[u8]) {
    let mut out = io::stdout().lock();
    let res = out.write_all(bytes).and_then(|()| out.flush());
    if let Err(e) = res {
        if e.kind() == io::ErrorKind::BrokenPipe {
            // Whoever read our output has what they wanted.
            std::process::exit(0);
        }
        eprintln!("chatctl: writing to standard output: {e}");
        std::process::exit(crate::failure::Exit::Local as i32);
    }
}

/// `2025-11-25 15:40:12 <@ann:b.example> hello`; joins, leaves and the
/// v1.1 room events as `* @ann:b.example joined`, `* @ann:b.example kicked
/// @bob:b.example: spam`. An edit (v1.1 `replaces`) is its own line,
/// `<@ann:b.example> (edited seq 5) new text`, naming the original by seq
/// when `edit_of` knows it, else by event id. A v1.1 redaction is `*
/// @ann:b.example deleted seq 5: reason`, and the message it deleted reads
/// `<@bob:b.example> (deleted)` from then on. Continuation lines of a
/// multi-line message are indented so every message still starts at the
/// left margin.
pub fn render_event(event: &Event, time: &str, edit_of: Option<u64>) -> String {
    let sender = sanitize(&event.sender);
    let field = |name: &str| event.extra.get(name).and_then(Value::as_str).map(sanitize);
    let target = field("target").unwrap_or_else(|| "someone".into());
    let reason = field("reason").map(|r| format!(": {}", one_line(&r))).unwrap_or_default();
    match (event.kind.as_str(), &event.body) {
        ("message", Some(body)) => {
            let body = sanitize(body).replace('\n', "\n    ");
            match (field("replaces"), edit_of) {
                (Some(_), Some(seq)) => format!("{time} <{sender}> (edited seq {seq}) {body}"),
                (Some(id), None) => format!("{time} <{sender}> (edited {id}) {body}"),
                (None, _) => format!("{time} <{sender}> {body}"),
            }
        }
        ("message", None) if event.extra.get("redacted") == Some(&Value::Bool(true)) => match field("replaces") {
            Some(_) => format!("{time} <{sender}> (edit deleted)"),
            None => format!("{time} <{sender}> (deleted)"),
        },
        ("redaction", _) => match (field("redacts"), edit_of) {
            (_, Some(seq)) => format!("{time} * {sender} deleted seq {seq}{reason}"),
            (Some(id), None) => format!("{time} * {sender} deleted {id}{reason}"),
            (None, None) => format!("{time} * {sender} deleted a message{reason}"),
        },
        ("join", _) => format!("{time} * {sender} joined"),
        ("leave", _) => format!("{time} * {sender} left"),
        ("room", _) => {
            let mut state = Vec::new();
            match field("name") {
                Some(n) => state.push(format!("name {:?}", one_line(&n))),
                None => state.push("no name".into()),
            }
            match field("topic") {
                Some(t) => state.push(format!("topic {:?}", one_line(&t))),
                None => state.push("no topic".into()),
            }
            if let Some(v) = field("visibility") {
                state.push(v);
            }
            format!("{time} * {sender} set the room: {}", state.join(", "))
        }
        ("invite", _) => format!("{time} * {sender} invited {target}"),
        ("reject", _) => format!("{time} * {sender} rejected the invite"),
        ("kick", _) => format!("{time} * {sender} kicked {target}{reason}"),
        ("ban", _) => format!("{time} * {sender} banned {target}{reason}"),
        ("unban", _) => format!("{time} * {sender} unbanned {target}{reason}"),
        ("role", _) => {
            let role = field("role").unwrap_or_else(|| "?".into());
            format!("{time} * {sender} made {target} {role}")
        }
        (other, body) => {
            let body =
                body.as_deref().map(|b| format!(": {}", sanitize(b).replace('\n', "\n    "))).unwrap_or_default();
            format!("{time} * {sender} ({}){body}", sanitize(other))
        }
    }
}

/// A reason or name is shown inside one `*` line.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// Text from other people must not drive the terminal: control characters
/// (escape sequences), and bidi overrides that make text read differently
/// than it is, become U+FFFD. Newlines and tabs are kept.
pub fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\n' | '\t' => c,
            c if c.is_control() => '\u{FFFD}',
            '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' => '\u{FFFD}',
            c => c,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: &str, body: Option<&str>) -> Event {
        Event {
            event_id: "$e".into(),
            seq: 1,
            kind: kind.into(),
            sender: "@ann:h".into(),
            body: body.map(Into::into),
            ts: 0,
            extra: Map::new(),
        }
    }

    #[test]
    fn events_render_with_time_sender_and_text() {
        assert_eq!(render_event(&ev("message", Some("hi")), "T", None), "T <@ann:h> hi");
        assert_eq!(render_event(&ev("message", Some("a\nb")), "T", None), "T <@ann:h> a\n    b");
        assert_eq!(render_event(&ev("join", None), "T", None), "T * @ann:h joined");
        assert_eq!(render_event(&ev("leave", None), "T", None), "T * @ann:h left");
        assert_eq!(render_event(&ev("topic", Some("x")), "T", None), "T * @ann:h (topic): x");
    }

    fn with(mut e: Event, fields: &[(&str, &str)]) -> Event {
        for (k, v) in fields {
            e.extra.insert((*k).into(), Value::String((*v).into()));
        }
        e
    }

    #[test]
    fn v1_1_events_render_as_star_lines_and_edits_name_the_original() {
        let edit = with(ev("message", Some("new")), &[("replaces", "$orig")]);
        assert_eq!(render_event(&edit, "T", Some(4)), "T <@ann:h> (edited seq 4) new");
        assert_eq!(render_event(&edit, "T", None), "T <@ann:h> (edited $orig) new");
        let redaction = with(ev("redaction", None), &[("redacts", "$orig"), ("reason", "oops")]);
        assert_eq!(render_event(&redaction, "T", Some(4)), "T * @ann:h deleted seq 4: oops");
        assert_eq!(render_event(&redaction, "T", None), "T * @ann:h deleted $orig: oops");
        let mut gone = ev("message", None);
        gone.extra.insert("redacted".into(), Value::Bool(true));
        assert_eq!(render_event(&gone, "T", None), "T <@ann:h> (deleted)");
        let kick = with(ev("kick", None), &[("target", "@bob:h"), ("reason", "spam\nmore")]);
        assert_eq!(render_event(&kick, "T", None), "T * @ann:h kicked @bob:h: spam more");
        let ban = with(ev("ban", None), &[("target", "@bob:h")]);
        assert_eq!(render_event(&ban, "T", None), "T * @ann:h banned @bob:h");
        let unban = with(ev("unban", None), &[("target", "@bob:h")]);
        assert_eq!(render_event(&unban, "T", None), "T * @ann:h unbanned @bob:h");
        let invite = with(ev("invite", None), &[("target", "@bob:h")]);
        assert_eq!(render_event(&invite, "T", None), "T * @ann:h invited @bob:h");
        assert_eq!(render_event(&ev("reject", None), "T", None), "T * @ann:h rejected the invite");
        let role = with(ev("role", None), &[("target", "@bob:h"), ("role", "moderator")]);
        assert_eq!(render_event(&role, "T", None), "T * @ann:h made @bob:h moderator");
        let room = with(ev("room", None), &[("name", "Garden"), ("visibility", "private")]);
        assert_eq!(render_event(&room, "T", None), "T * @ann:h set the room: name \"Garden\", no topic, private");
    }

    #[test]
    fn activity_frames_render_as_tilde_lines() {
        let typing = |ids: &[&str]| ServerFrame::Typing { user_ids: ids.iter().map(|s| (*s).to_owned()).collect() };
        assert_eq!(render_activity(&typing(&[]), "T").unwrap(), "T ~ nobody is typing");
        assert_eq!(render_activity(&typing(&["@a:h"]), "T").unwrap(), "T ~ @a:h is typing");
        assert_eq!(
            render_activity(&typing(&["@a:h", "@b:h", "@c:h"]), "T").unwrap(),
            "T ~ @a:h, @b:h and @c:h are typing"
        );
        let online = ServerFrame::Presence { user_id: "@a:h".into(), presence: "online".into() };
        assert_eq!(render_activity(&online, "T").unwrap(), "T ~ @a:h is online");
        let receipt = ServerFrame::Receipt { user_id: "@a:h".into(), seq: 7 };
        assert_eq!(render_activity(&receipt, "T").unwrap(), "T ~ @a:h read up to seq 7");
        assert!(render_activity(&ServerFrame::Other, "T").is_none());
    }

    #[test]
    fn terminal_escapes_are_neutralized() {
        assert_eq!(sanitize("a\u{1b}[2Jb\tc\n"), "a\u{FFFD}[2Jb\tc\n");
        assert_eq!(sanitize("x\u{202E}y"), "x\u{FFFD}y");
    }

    #[test]
    fn times_are_formatted() {
        let t = local_time(1_764_000_000_000);
        assert_eq!(t.len(), "2025-11-24 16:00:00".len(), "{t}");
        assert!(t.starts_with("2025-11-2"), "{t}");
    }
}

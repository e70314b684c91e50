//! Standard output: human lines or `--json` objects (one per line), events
//! rendered as "time <sender> text", and other people's text made safe for a
//! terminal. A reader that goes away (`chatctl tail room | head`) ends the
//! program quietly instead of with a panic.

use std::io::{self, IsTerminal, Write};

use serde::Serialize;
use serde_json::{Map, Value};

pub use crate::localtime::local_time;
use crate::wire::{Cursor, Event};

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
    pub fn event(&self, room_id: &str, epoch: &str, event: &Event) {
        if self.json {
            let mut obj = Map::new();
            obj.insert("room_id".into(), Value::String(room_id.into()));
            obj.insert("epoch".into(), Value::String(epoch.into()));
            if let Value::Object(fields) = serde_json::to_value(event).expect("events serialize") {
                obj.extend(fields);
            }
            write_line(&Value::Object(obj).to_string());
        } else {
            write_line(&render_event(event, &local_time(event.ts)));
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

/// `2025-11-25 15:40:12 <@ann:b.example> hello`; joins and leaves as
/// `* @ann:b.example joined`. Continuation lines of a multi-line message are
/// indented so every message still starts at the left margin.
pub fn render_event(event: &Event, time: &str) -> String {
    let sender = sanitize(&event.sender);
    match (event.kind.as_str(), &event.body) {
        ("message", Some(body)) => {
            let body = sanitize(body).replace('\n', "\n    ");
            format!("{time} <{sender}> {body}")
        }
        ("join", _) => format!("{time} * {sender} joined"),
        ("leave", _) => format!("{time} * {sender} left"),
        (other, body) => {
            let body =
                body.as_deref().map(|b| format!(": {}", sanitize(b).replace('\n', "\n    "))).unwrap_or_default();
            format!("{time} * {sender} ({}){body}", sanitize(other))
        }
    }
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
        assert_eq!(render_event(&ev("message", Some("hi")), "T"), "T <@ann:h> hi");
        assert_eq!(render_event(&ev("message", Some("a\nb")), "T"), "T <@ann:h> a\n    b");
        assert_eq!(render_event(&ev("join", None), "T"), "T * @ann:h joined");
        assert_eq!(render_event(&ev("leave", None), "T"), "T * @ann:h left");
        assert_eq!(render_event(&ev("topic", Some("x")), "T"), "T * @ann:h (topic): x");
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

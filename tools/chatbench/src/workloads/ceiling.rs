//! `ceiling`: what this machine can do at all for the shape `fanout`
//! measures, with no server logic in the way (issue 17, item 4). A writer
//! thread plays a server that does the least any server must: each room
//! event is one pre-encoded WebSocket frame of the shape Parlor sends, and
//! every member's socket gets it with one `write` per batch of `--batch`
//! events (Parlor coalesces queued frames into one `writev` the same way).
//! The reading side is `fanout`'s own: chatbench's WebSocket reader and
//! frame classification on its one thread, with the same per-member checks
//! (every event once, seqs contiguous). Both sides share the machine as
//! Parlor and chatbench do, so Parlor's `deliveries_per_s` divided by this
//! run's is how close the server comes to the box.
//!
//! No server is involved: `--server` is not needed.

use std::cell::{Cell, RefCell};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::rc::Rc;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use serde_json::{Map, json};

use crate::cli::{CeilingArgs, Outcome};
use crate::clock::now_ns;
use crate::parse::{self, Frame};
use crate::stats::{Lat, round3};
use crate::ws::{self, ReadOutcome};

const SERVER: &str = "ceiling.test";

/// CPU time of the calling thread, in seconds.
fn thread_cpu_s() -> f64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// One event frame as Parlor encodes it (server frames are unmasked), with
/// the tool's tag at the start of the body.
fn event_frame(out: &mut Vec<u8>, room: usize, seq: u64, msg: u64, sched_us: u64, body_bytes: usize) {
    let mut json = Vec::with_capacity(256 + body_bytes);
    let _ = write!(
        json,
        r#"{{"type":"event","room":"!ceiling{room:04}:{SERVER}","epoch":"Y2VpbGluZ2Vw","event":{{"event_id":"$Y2VpbGluZ2V2ZW50aWQ{seq:08}:{SERVER}","seq":{seq},"type":"message","sender":"@member{room:04}:{SERVER}","body":""#
    );
    let body_start = json.len();
    parse::write_tag(&mut json, msg, sched_us);
    let tag_len = json.len() - body_start;
    if body_bytes > tag_len {
        json.push(b' ');
        json.resize(body_start + body_bytes, b'x');
    }
    let _ = write!(json, r#"","ts":1764800000000}}}}"#);
    let len = json.len();
    out.push(0x81);
    if len < 126 {
        out.push(len as u8);
    } else if len < 65536 {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&json);
}

/// Answers one WebSocket upgrade on `s` (blocking).
fn handshake(s: &mut TcpStream) -> Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut byte = [0u8; 512];
    while parse::find(&head, b"\r\n\r\n").is_none() {
        let n = s.read(&mut byte)?;
        if n == 0 {
            bail!("the reader closed during its upgrade");
        }
        head.extend_from_slice(&byte[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let key = text
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.trim().eq_ignore_ascii_case("sec-websocket-key")))
        .map(|(_, v)| v.trim().to_owned())
        .context("upgrade without Sec-WebSocket-Key")?;
    write!(
        s,
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: parlor.v1\r\n\r\n",
        ws::accept_key(&key)
    )?;
    s.set_nodelay(true)?;
    Ok(())
}

/// What the writer thread reports.
struct Written {
    cpu_s: f64,
    writes: u64,
}

/// The writer: accepts `rooms × members` upgrades (member i of room r is
/// connection `r × members + i`, as the reader connects them in order),
/// waits for `go`, then sends `per_room` events to every room, `batch` at a
/// time, round-robin over the rooms.
fn writer(listener: TcpListener, a: CeilingArgs, per_room: u64, go: mpsc::Receiver<u64>) -> Result<Written> {
    let mut socks = Vec::with_capacity(a.rooms * a.members);
    for _ in 0..a.rooms * a.members {
        let (mut s, _) = listener.accept()?;
        handshake(&mut s)?;
        socks.push(s);
    }
    let Ok(t0) = go.recv() else { bail!("the reader went away") };
    let cpu0 = thread_cpu_s();
    let (mut writes, mut msg) = (0u64, 0u64);
    let mut frames = Vec::with_capacity(a.batch * (300 + a.body_bytes));
    let batch = a.batch.max(1) as u64;
    let mut seq = 0u64;
    while seq < per_room {
        let n = batch.min(per_room - seq);
        for (room, members) in socks.chunks_mut(a.members).enumerate() {
            frames.clear();
            let sched_us = (now_ns().saturating_sub(t0)) / 1000;
            for k in 0..n {
                event_frame(&mut frames, room, seq + k + 1, msg, sched_us, a.body_bytes);
                msg += 1;
            }
            for s in members.iter_mut() {
                s.write_all(&frames)?;
                writes += 1;
            }
        }
        seq += n;
    }
    Ok(Written { cpu_s: thread_cpu_s() - cpu0, writes })
}

/// One member's checks.
#[derive(Default)]
struct Member {
    received: Cell<u64>,
    last_seq: Cell<u64>,
    out_of_order: Cell<u64>,
    malformed: Cell<u64>,
}

pub async fn run(a: &CeilingArgs) -> Result<Outcome> {
    let per_room = (a.messages / a.rooms as u64).max(1);
    let total = per_room * (a.rooms * a.members) as u64;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr: SocketAddr = listener.local_addr()?;
    let (go_tx, go_rx) = mpsc::channel();
    let args = a.clone();
    let writer = std::thread::Builder::new()
        .name("ceiling-writer".into())
        .spawn(move || writer(listener, args, per_room, go_rx))?;

    let mut readers = Vec::with_capacity(a.rooms * a.members);
    for _ in 0..a.rooms * a.members {
        let (_shared, reader) = ws::connect(addr, SERVER, "/", None, 64 * 1024).await?;
        readers.push(reader);
    }

    let members: Rc<Vec<Member>> = Rc::new((0..readers.len()).map(|_| Member::default()).collect());
    let lat = Rc::new(RefCell::new(Lat::default()));
    let done = Rc::new(Cell::new(0u64));
    let last_arrival = Rc::new(Cell::new(0u64));
    let t0 = now_ns();
    let cpu0 = thread_cpu_s();
    go_tx.send(t0).ok();
    let mut tasks = Vec::with_capacity(readers.len());
    for (i, mut reader) in readers.into_iter().enumerate() {
        let (members, lat, done, last_arrival) = (members.clone(), lat.clone(), done.clone(), last_arrival.clone());
        tasks.push(tokio::task::spawn_local(async move {
            let m = &members[i];
            let mut on_text = |p: &[u8], now: u64| match parse::classify(p) {
                Frame::Event { seq, tag } => {
                    if seq != m.last_seq.get() + 1 {
                        m.out_of_order.set(m.out_of_order.get() + 1);
                    }
                    m.last_seq.set(seq);
                    m.received.set(m.received.get() + 1);
                    done.set(done.get() + 1);
                    last_arrival.set(now);
                    if let Some(tag) = tag {
                        lat.borrow_mut().record_ns(now.saturating_sub(t0 + tag.sched_us * 1000));
                    }
                }
                _ => m.malformed.set(m.malformed.get() + 1),
            };
            while m.received.get() < per_room {
                match reader.read_frames(&mut on_text).await {
                    Ok(ReadOutcome::Data) => {}
                    Ok(ReadOutcome::Closed(_)) | Err(_) => break,
                }
            }
        }));
    }
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(600), t).await;
    }
    let reader_cpu = thread_cpu_s() - cpu0;
    let written = writer.join().map_err(|_| anyhow::anyhow!("the writer thread panicked"))??;

    let elapsed_s = (last_arrival.get().saturating_sub(t0)) as f64 / 1e9;
    let delivered = done.get();
    let lost = total.saturating_sub(delivered);
    let out_of_order: u64 = members.iter().map(|m| m.out_of_order.get()).sum();
    let malformed: u64 = members.iter().map(|m| m.malformed.get()).sum();
    let (reads, messages) = ws::io_counts();
    let mut j = Map::new();
    j.insert("workload".into(), json!("ceiling"));
    j.insert("rooms".into(), json!(a.rooms));
    j.insert("members".into(), json!(a.members));
    j.insert("batch".into(), json!(a.batch));
    j.insert("body_bytes".into(), json!(a.body_bytes));
    j.insert("expected".into(), json!(total));
    j.insert("delivered".into(), json!(delivered));
    j.insert("lost".into(), json!(lost));
    j.insert("out_of_order".into(), json!(out_of_order));
    j.insert("malformed".into(), json!(malformed));
    j.insert("deliveries_per_s".into(), json!(round3(delivered as f64 / elapsed_s.max(1e-9))));
    j.insert("elapsed_s".into(), json!(round3(elapsed_s)));
    j.insert("writer_cpu_pct".into(), json!(round3(100.0 * written.cpu_s / elapsed_s.max(1e-9))));
    j.insert("reader_cpu_pct".into(), json!(round3(100.0 * reader_cpu / elapsed_s.max(1e-9))));
    j.insert("writes".into(), json!(written.writes));
    j.insert("frames_per_read".into(), json!(round3(messages as f64 / reads.max(1) as f64)));
    lat.borrow().put(&mut j, "");
    let ok = lost == 0 && out_of_order == 0 && malformed == 0;
    Ok(Outcome { json: j, ok })
}

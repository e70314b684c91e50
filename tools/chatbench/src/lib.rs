//! chatbench: the load tool of issue 8. It speaks only Parlor's public v1
//! protocol (HTTP + WebSocket), runs every workload on one thread so it costs
//! far less CPU than the server it shares the machine with, schedules sends
//! open-loop, and checks every delivery (expected, delivered, lost,
//! duplicates, out of order).
//!
//! Map: `cli` (flags, runtime, output) → `workloads::*` (one per workload) →
//! `engine` (rooms, members, phases) → `ws` / `http` (the wire), with
//! `parse` (cheap frame reading), `check` (delivery accounting), `pacer`
//! (precise open-loop timing), `stats` (histograms), `sys` (CPU, memory,
//! limits), `users` (accounts) and `clock`.

// System calls go through rustix; the one `unsafe` left is `pacer::Pacer::new`.
#![deny(unsafe_code)]

pub mod check;
pub mod cli;
pub mod clock;
pub mod engine;
pub mod http;
pub mod pacer;
pub mod parse;
pub mod stats;
pub mod sys;
pub mod users;
pub mod workloads;
pub mod ws;

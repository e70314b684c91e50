//! The one clock every timestamp in the tool is taken from: CLOCK_MONOTONIC
//! in nanoseconds, so schedules, arrival stamps and the pacer's timerfd
//! deadlines are directly comparable.

/// Nanoseconds on CLOCK_MONOTONIC.
pub fn now_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Milliseconds as f64, for reports.
pub fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

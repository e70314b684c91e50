//! Local wall-clock time for display: the crate's one `unsafe` (it denies
//! `unsafe_code` everywhere else), because the time zone rules live in libc
//! (`localtime_r` reads TZ and /etc/localtime) and rustix has no wrapper.

#![allow(unsafe_code)]

/// Milliseconds since the epoch as local `YYYY-MM-DD HH:MM:SS`.
pub fn local_time(ts_ms: u64) -> String {
    let secs = (ts_ms / 1000) as libc::time_t;
    // SAFETY: localtime_r writes only into `tm`, which outlives the call.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&secs, &mut tm).is_null() };
    if !ok {
        return format!("@{ts_ms}");
    }
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

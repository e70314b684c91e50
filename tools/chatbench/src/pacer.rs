//! Waiting until an absolute CLOCK_MONOTONIC instant with microsecond
//! precision. Tokio's timer wheel rounds every sleep up to the next
//! millisecond, which would add up to 1 ms of our own lateness to every
//! open-loop send and blur a 5 ms p99; a timerfd armed with an absolute
//! deadline and awaited through the reactor costs one epoll event per wake.

use std::io;
use std::os::fd::OwnedFd;

use rustix::time::{Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec};
use tokio::io::unix::AsyncFd;

use crate::clock::now_ns;

pub struct Pacer {
    fd: AsyncFd<OwnedFd>,
}

impl Pacer {
    /// The crate's one `unsafe` (it denies `unsafe_code` everywhere else):
    /// tokio 1.54 offers no safe way to register a descriptor with its reactor.
    #[allow(unsafe_code)]
    pub fn new() -> io::Result<Self> {
        let fd =
            rustix::time::timerfd_create(TimerfdClockId::Monotonic, TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC)?;
        // SAFETY: OwnedFd keeps the descriptor open and unchanged for as long as the AsyncFd owns it.
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Self { fd })
    }

    /// Return at or just after `deadline_ns` (CLOCK_MONOTONIC), at once if it has passed.
    pub async fn wait_until(&self, deadline_ns: u64) -> io::Result<()> {
        if now_ns() >= deadline_ns {
            return Ok(());
        }
        let spec = Itimerspec {
            it_interval: Timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: Timespec {
                tv_sec: (deadline_ns / 1_000_000_000) as i64,
                tv_nsec: (deadline_ns % 1_000_000_000) as _,
            },
        };
        rustix::time::timerfd_settime(self.fd.get_ref(), TimerfdTimerFlags::ABSTIME, &spec)?;
        loop {
            let mut guard = self.fd.readable().await?;
            let mut expirations = [0u8; 8];
            match rustix::io::read(self.fd.get_ref(), &mut expirations) {
                Ok(8) => return Ok(()),
                Ok(n) => return Err(io::Error::other(format!("timerfd read {n} bytes, not 8"))),
                Err(rustix::io::Errno::AGAIN) => guard.clear_ready(),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

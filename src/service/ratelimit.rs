//! Token-bucket rate limits keyed by client address, username or user.
//! Buckets live in memory (a restart forgives everyone) and idle full
//! buckets are swept so the map cannot grow without bound.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One limit: `burst` tokens, refilled one per `every`.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub burst: u32,
    pub every: Duration,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// A set of buckets under one rule.
pub struct Limiter {
    rule: Rule,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Limiter {
    pub fn new(rule: Rule) -> Self {
        Self { rule, buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes a token for `key`, or says how many ms until one is available.
    pub fn check(&self, key: &str) -> Result<(), u64> {
        self.check_at(key, Instant::now())
    }

    fn check_at(&self, key: &str, now: Instant) -> Result<(), u64> {
        let per_sec = 1.0 / self.rule.every.as_secs_f64();
        let burst = f64::from(self.rule.burst);
        let mut map = self.buckets.lock().expect("limiter lock");
        if map.len() > 100_000 {
            let full_after = self.rule.every.mul_f64(burst);
            map.retain(|_, b| now.duration_since(b.at) < full_after);
        }
        let b = map.entry(key.to_owned()).or_insert(Bucket { tokens: burst, at: now });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * per_sec).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err((((1.0 - b.tokens) / per_sec) * 1000.0).ceil().max(1.0) as u64)
        }
    }
}

/// Parlor's limits (spec §4), or none when rate limiting is off.
pub struct RateLimits {
    pub register_by_addr: Option<Limiter>,
    pub login_by_addr: Option<Limiter>,
    pub login_by_name: Option<Limiter>,
    pub send_by_user: Option<Limiter>,
}

impl RateLimits {
    pub fn new(on: bool) -> Self {
        let l = |burst, every_ms| on.then(|| Limiter::new(Rule { burst, every: Duration::from_millis(every_ms) }));
        Self {
            register_by_addr: l(10, 6000),
            login_by_addr: l(20, 1000),
            login_by_name: l(10, 6000),
            send_by_user: l(300, 20),
        }
    }
}

/// Applies an optional limiter.
pub fn check(limiter: &Option<Limiter>, key: &str) -> Result<(), crate::service::Error> {
    match limiter {
        Some(l) => l.check(key).map_err(|retry_after_ms| crate::service::Error::RateLimited { retry_after_ms }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let l = Limiter::new(Rule { burst: 3, every: Duration::from_secs(1) });
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.check_at("a", t0).is_ok());
        }
        let wait = l.check_at("a", t0).unwrap_err();
        assert!((900..=1000).contains(&wait), "{wait}");
        assert!(l.check_at("b", t0).is_ok(), "keys are independent");
        assert!(l.check_at("a", t0 + Duration::from_millis(1001)).is_ok());
    }
}

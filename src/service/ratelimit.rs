//! Token-bucket rate limits keyed by client address, username, (username,
//! origin) or user, and the login policy built from them (spec §4).
//!
//! Without Redis, buckets live in memory (a restart forgives everyone) in
//! maps of bounded size: a full map first forgets the buckets that have refilled (a full
//! bucket is the same as none), then the fullest eighth. So flooding a map
//! with fresh keys cannot reset a bucket somebody is draining: to push a
//! drained bucket out, an attacker would have to hold seven eighths of the
//! map in buckets emptier still, each costing a burst of requests that the
//! other limits count too.
//!
//! Logins follow OWASP's advice against online guessing without handing a
//! guesser a way to lock owners out: a tight limit per (account, origin), a
//! looser cap per account that only attempts from unknown origins count
//! against, and a limit per address. An origin is known when the account
//! logged in successfully from that address before (remembered in memory)
//! or when the attempt carries a device proof of the account (see
//! `service/accounts.rs`). A successful login gives its account tokens back:
//! only failures slow an account down.
//!
//! With Redis ([`RateLimits::shared`]), the register and login buckets and
//! the memory of known addresses are shared by every process of the server
//! (`storage::ratelimit`: one script per check, keys that expire), so a
//! burst is counted whichever processes serve it. Message sends stay limited
//! per process (a user sending through N processes gets N times the rate):
//! a send is the hot path, and a shared bucket would put one more Redis
//! round trip (a script call, ahead of the append) on every one of them,
//! on behalf of a limit whose job, holding back one flooding user, a
//! per-process bucket still does.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::storage::StorageError;
use crate::storage::ratelimit::SharedBuckets;

/// Keys one limit's map holds at most.
pub const MAX_KEYS: usize = 65_536;
/// How long a successful login makes its (account, address) known.
pub const KNOWN_ADDRESS_FOR: Duration = Duration::from_secs(30 * 24 * 3600);

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

impl Bucket {
    /// Tokens at `now`, refill included.
    fn level(&self, rule: Rule, now: Instant) -> f64 {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() / rule.every.as_secs_f64();
        (self.tokens + refill).min(f64::from(rule.burst))
    }
}

/// A set of buckets under one rule, at most `capacity` of them.
pub struct Limiter<K = String> {
    rule: Rule,
    capacity: usize,
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K: Hash + Eq> Limiter<K> {
    pub fn new(rule: Rule) -> Self {
        Self::with_capacity(rule, MAX_KEYS)
    }

    pub fn with_capacity(rule: Rule, capacity: usize) -> Self {
        Self { rule, capacity: capacity.max(8), buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes a token for `key`, or says how many ms until one is available.
    pub fn check<Q>(&self, key: &Q) -> Result<(), u64>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.check_at(key, Instant::now())
    }

    /// Gives one token back to `key` (never above the burst).
    pub fn refund<Q>(&self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let now = Instant::now();
        let mut map = self.buckets.lock().expect("limiter lock");
        if let Some(b) = map.get_mut(key) {
            b.tokens = (b.level(self.rule, now) + 1.0).min(f64::from(self.rule.burst));
            b.at = now;
        }
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.buckets.lock().expect("limiter lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn check_at<Q>(&self, key: &Q, now: Instant) -> Result<(), u64>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let rule = self.rule;
        let mut map = self.buckets.lock().expect("limiter lock");
        if !map.contains_key(key) {
            if map.len() >= self.capacity {
                self.make_room(&mut map, now);
            }
            map.insert(key.to_owned(), Bucket { tokens: f64::from(rule.burst), at: now });
        }
        let b = map.get_mut(key).expect("inserted above");
        b.tokens = b.level(rule, now);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            let per_sec = 1.0 / rule.every.as_secs_f64();
            Err((((1.0 - b.tokens) / per_sec) * 1000.0).ceil().max(1.0) as u64)
        }
    }

    /// Brings a full map down to seven eighths of its capacity: refilled
    /// buckets go first (forgetting them changes nothing), then the fullest
    /// (forgetting them changes least). One pass frees room for an eighth of
    /// the capacity, so the cost per new key stays constant.
    fn make_room(&self, map: &mut HashMap<K, Bucket>, now: Instant) {
        let (rule, burst) = (self.rule, f64::from(self.rule.burst));
        map.retain(|_, b| b.level(rule, now) < burst);
        let target = self.capacity - self.capacity / 8;
        if map.len() <= target {
            return;
        }
        let excess = map.len() - target;
        let mut levels: Vec<f64> = map.values().map(|b| b.level(rule, now)).collect();
        let cut = levels.len() - excess;
        levels.select_nth_unstable_by(cut, f64::total_cmp);
        let threshold = levels[cut];
        let above = levels[cut + 1..].iter().filter(|l| **l > threshold).count();
        let mut at_threshold = excess - above;
        map.retain(|_, b| {
            let l = b.level(rule, now);
            if l > threshold {
                false
            } else if l == threshold && at_threshold > 0 {
                at_threshold -= 1;
                false
            } else {
                true
            }
        });
    }
}

/// How a limit's key is named in shared buckets.
pub trait KeyText {
    fn key_text(&self) -> String;
}

impl KeyText for str {
    fn key_text(&self) -> String {
        self.to_owned()
    }
}

impl KeyText for AddrKey {
    fn key_text(&self) -> String {
        match self {
            AddrKey::V4(a) => std::net::Ipv4Addr::from(*a).to_string(),
            AddrKey::V6Net(n) => n.iter().map(|b| format!("{b:02x}")).collect::<String>() + "/64",
        }
    }
}

impl KeyText for (String, Origin) {
    fn key_text(&self) -> String {
        match &self.1 {
            Origin::Addr(a) => format!("{}:a:{}", self.0, a.key_text()),
            Origin::Device(id) => format!("{}:d:{}", self.0, id.iter().map(|b| format!("{b:02x}")).collect::<String>()),
        }
    }
}

/// One limit, in this process's memory or in buckets shared with the
/// server's other processes (under `name`).
pub enum Limit<K = String> {
    Local(Limiter<K>),
    Shared { name: &'static str, rule: Rule, buckets: Arc<dyn SharedBuckets> },
}

impl<K: Hash + Eq + Send + Sync> Limit<K> {
    fn new(name: &'static str, rule: Rule, shared: Option<&Arc<dyn SharedBuckets>>) -> Self {
        match shared {
            Some(b) => Limit::Shared { name, rule, buckets: b.clone() },
            None => Limit::Local(Limiter::new(rule)),
        }
    }

    /// Takes a token for `key`, or says how many ms until one is available.
    pub async fn check<Q>(&self, key: &Q) -> Result<Result<(), u64>, StorageError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + KeyText + Sync + ?Sized,
    {
        match self {
            Limit::Local(l) => Ok(l.check(key)),
            Limit::Shared { name, rule, buckets } => {
                let k = format!("{name}:{}", key.key_text());
                Ok(match buckets.take(&k, rule.burst, rule.every).await? {
                    None => Ok(()),
                    Some(ms) => Err(ms),
                })
            }
        }
    }

    /// Gives one token back to `key` (never above the burst).
    pub async fn refund<Q>(&self, key: &Q) -> Result<(), StorageError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + KeyText + Sync + ?Sized,
    {
        match self {
            Limit::Local(l) => {
                l.refund(key);
                Ok(())
            }
            Limit::Shared { name, rule, buckets } => {
                buckets.refund(&format!("{name}:{}", key.key_text()), rule.burst, rule.every).await
            }
        }
    }
}

/// A client address as the limits see it: IPv4 addresses one by one, IPv6
/// by /64 network (one subscriber usually holds a whole /64, so keying by
/// address would give them 2^64 buckets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddrKey {
    V4([u8; 4]),
    V6Net([u8; 8]),
}

impl From<IpAddr> for AddrKey {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::V4(v4.octets()),
                None => Self::V6Net(v6.octets()[..8].try_into().expect("8 bytes")),
            },
        }
    }
}

/// What a login attempt's origin proves, decided by `service/accounts.rs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// A device proof of the account: `id` names the proof.
    Device { id: [u8; 16] },
    /// The account logged in successfully from this address before.
    KnownAddress,
    /// Neither: a new address without a proof.
    Unknown,
}

impl Trust {
    pub fn is_known(self) -> bool {
        self != Trust::Unknown
    }
}

/// The origin half of the per-(account, origin) key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Origin {
    Addr(AddrKey),
    Device([u8; 16]),
}

/// The tokens one admitted login attempt took, to give back on success.
pub struct Admitted {
    username: String,
    addr: AddrKey,
    origin: Origin,
    took_account: bool,
}

/// The three login limits (when rate limiting is on).
struct LoginBuckets {
    by_addr: Limit<AddrKey>,
    by_origin: Limit<(String, Origin)>,
    by_account: Limit<String>,
}

/// Where the known (account, address) pairs are remembered.
enum Known {
    Local(Mutex<HashMap<(String, AddrKey), Instant>>),
    Shared(Arc<dyn SharedBuckets>),
}

/// The login policy: limits plus the memory of known (account, address) pairs.
pub struct LoginLimits {
    buckets: Option<LoginBuckets>,
    known: Known,
}

impl LoginLimits {
    fn new(on: bool, shared: Option<&Arc<dyn SharedBuckets>>) -> Self {
        let rule = |burst, every_ms| Rule { burst, every: Duration::from_millis(every_ms) };
        Self {
            buckets: on.then(|| LoginBuckets {
                by_addr: Limit::new("login_addr", rule(20, 1_000), shared),
                by_origin: Limit::new("login_origin", rule(5, 30_000), shared),
                by_account: Limit::new("login_account", rule(10, 15_000), shared),
            }),
            known: match shared {
                Some(b) => Known::Shared(b.clone()),
                None => Known::Local(Mutex::new(HashMap::new())),
            },
        }
    }

    /// Whether `username` logged in successfully from `addr` recently.
    pub async fn is_known(&self, username: &str, addr: AddrKey) -> Result<bool, StorageError> {
        match &self.known {
            Known::Local(known) => {
                let known = known.lock().expect("known lock");
                Ok(known.get(&(username.to_owned(), addr)).is_some_and(|t| t.elapsed() < KNOWN_ADDRESS_FOR))
            }
            Known::Shared(b) => b.remembers(&format!("{username}:{}", addr.key_text())).await,
        }
    }

    /// Takes the tokens an attempt needs, or says how many ms to wait. A
    /// known origin is limited only per (account, origin); an unknown one
    /// per address, per (account, address) and per account, in that order.
    pub async fn admit(
        &self,
        username: &str,
        addr: AddrKey,
        trust: Trust,
    ) -> Result<Result<Admitted, u64>, StorageError> {
        let origin = match trust {
            Trust::Device { id } => Origin::Device(id),
            Trust::KnownAddress | Trust::Unknown => Origin::Addr(addr),
        };
        let took_account = !trust.is_known();
        let admitted = Admitted { username: username.to_owned(), addr, origin, took_account };
        let Some(b) = &self.buckets else { return Ok(Ok(admitted)) };
        if took_account && let Err(ms) = b.by_addr.check(&addr).await? {
            return Ok(Err(ms));
        }
        if let Err(ms) = b.by_origin.check(&(admitted.username.clone(), admitted.origin.clone())).await? {
            return Ok(Err(ms));
        }
        if took_account && let Err(ms) = b.by_account.check(username).await? {
            return Ok(Err(ms));
        }
        Ok(Ok(admitted))
    }

    /// After a successful login: the account's tokens come back (only
    /// failures count) and the address becomes known for the account.
    pub async fn succeeded(&self, a: Admitted) -> Result<(), StorageError> {
        if let Some(b) = &self.buckets {
            b.by_origin.refund(&(a.username.clone(), a.origin)).await?;
            if a.took_account {
                b.by_account.refund(a.username.as_str()).await?;
            }
        }
        let known = match &self.known {
            Known::Local(known) => known,
            Known::Shared(b) => {
                return b.remember(&format!("{}:{}", a.username, a.addr.key_text()), KNOWN_ADDRESS_FOR).await;
            }
        };
        let now = Instant::now();
        let mut known = known.lock().expect("known lock");
        if known.len() >= MAX_KEYS && !known.contains_key(&(a.username.clone(), a.addr)) {
            forget_oldest(&mut known, now);
        }
        known.insert((a.username, a.addr), now);
        Ok(())
    }
}

/// Brings the known-address memory down to seven eighths of `MAX_KEYS`:
/// expired entries first, then the longest unused.
fn forget_oldest(known: &mut HashMap<(String, AddrKey), Instant>, now: Instant) {
    known.retain(|_, t| now.saturating_duration_since(*t) < KNOWN_ADDRESS_FOR);
    let target = MAX_KEYS - MAX_KEYS / 8;
    if known.len() > target {
        let mut times: Vec<Instant> = known.values().copied().collect();
        let cut = times.len() - target;
        times.select_nth_unstable(cut);
        let oldest_kept = times[cut];
        known.retain(|_, t| *t >= oldest_kept);
    }
}

/// Parlor's limits (spec §4); with rate limiting off only the memory of
/// known addresses (which orders the hashing queue) is kept.
pub struct RateLimits {
    pub register_by_addr: Option<Limit<AddrKey>>,
    pub login: LoginLimits,
    /// Per process even with shared buckets (see the module doc).
    pub send_by_user: Option<Limiter>,
}

impl RateLimits {
    /// Limits in this process's memory (one process, no Redis).
    pub fn new(on: bool) -> Self {
        Self::with(on, None)
    }

    /// Register and login limits (and known addresses) in `buckets`, shared
    /// with the server's other processes; send limits per process.
    pub fn shared(on: bool, buckets: Arc<dyn SharedBuckets>) -> Self {
        Self::with(on, Some(&buckets))
    }

    fn with(on: bool, shared: Option<&Arc<dyn SharedBuckets>>) -> Self {
        let rule = |burst, every_ms| Rule { burst, every: Duration::from_millis(every_ms) };
        Self {
            register_by_addr: on.then(|| Limit::new("register_addr", rule(10, 6000), shared)),
            login: LoginLimits::new(on, shared),
            send_by_user: on.then(|| Limiter::new(rule(300, 20))),
        }
    }
}

/// Applies an optional limit that may be shared.
pub async fn check_limit<K, Q>(limit: &Option<Limit<K>>, key: &Q) -> Result<(), crate::service::Error>
where
    K: Hash + Eq + Send + Sync + Borrow<Q>,
    Q: Hash + Eq + ToOwned<Owned = K> + KeyText + Sync + ?Sized,
{
    match limit {
        Some(l) => l.check(key).await?.map_err(|retry_after_ms| crate::service::Error::RateLimited { retry_after_ms }),
        None => Ok(()),
    }
}

/// Applies an optional limiter.
pub fn check<K, Q>(limiter: &Option<Limiter<K>>, key: &Q) -> Result<(), crate::service::Error>
where
    K: Hash + Eq + Borrow<Q>,
    Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
{
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

    #[test]
    fn a_flood_of_fresh_keys_stays_bounded_and_does_not_reset_a_drained_bucket() {
        let l: Limiter = Limiter::with_capacity(Rule { burst: 10, every: Duration::from_secs(6) }, 1000);
        let t0 = Instant::now();
        // The victim's bucket, drained by a guesser.
        while l.check_at("victim", t0).is_ok() {}
        // An attacker floods the map with fresh keys, one request each.
        for i in 0..100_000 {
            let _ = l.check_at(format!("fresh{i}").as_str(), t0 + Duration::from_micros(i));
            assert!(l.len() <= 1000);
        }
        assert!(l.check_at("victim", t0 + Duration::from_millis(200)).is_err(), "the flood reset the victim's bucket");
    }

    #[test]
    fn refunds_give_back_at_most_the_burst() {
        let l: Limiter = Limiter::new(Rule { burst: 2, every: Duration::from_secs(60) });
        assert!(l.check("a").is_ok());
        assert!(l.check("a").is_ok());
        assert!(l.check("a").is_err());
        l.refund("a");
        assert!(l.check("a").is_ok());
        l.refund("a");
        l.refund("a");
        l.refund("a");
        assert!(l.check("a").is_ok() && l.check("a").is_ok() && l.check("a").is_err());
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(AddrKey::from(a), AddrKey::from(b));
        assert_ne!(AddrKey::from(a), AddrKey::from(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(AddrKey::from(mapped), AddrKey::from("192.0.2.7".parse::<IpAddr>().unwrap()));
    }

    #[tokio::test]
    async fn guesses_from_many_addresses_slow_strangers_but_not_a_known_origin() {
        let limits = LoginLimits::new(true, None);
        let addr = |i: u8| AddrKey::V4([10, 0, 0, i]);
        // The owner logs in once from home.
        let home = addr(1);
        limits.succeeded(limits.admit("ann", home, Trust::Unknown).await.unwrap().unwrap()).await.unwrap();
        assert!(limits.is_known("ann", home).await.unwrap());
        assert!(!limits.is_known("ann", addr(2)).await.unwrap());
        // A guesser, one wrong guess from each of many addresses.
        let mut refused = 0;
        for i in 10..60 {
            refused += usize::from(limits.admit("ann", addr(i), Trust::Unknown).await.unwrap().is_err());
        }
        assert!(refused >= 39, "the account cap let {} of 50 guesses through", 50 - refused);
        assert!(limits.admit("ann", addr(200), Trust::Unknown).await.unwrap().is_err(), "a stranger is slowed");
        assert!(limits.admit("ann", home, Trust::KnownAddress).await.unwrap().is_ok(), "the owner at home is not");
        assert!(
            limits.admit("ann", addr(201), Trust::Device { id: [7; 16] }).await.unwrap().is_ok(),
            "nor with a device proof"
        );
        // Successes give the account its tokens back; failures from the
        // known origin are limited there, tightly.
        let mut ok = 0;
        for _ in 0..10 {
            ok += usize::from(limits.admit("ann", home, Trust::KnownAddress).await.unwrap().is_ok());
        }
        assert_eq!(ok, 4, "5 per (account, origin), one used above");
    }
}

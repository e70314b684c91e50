//! Password hashing: argon2id (m = 19 MiB, t = 2, p = 1) on a small pool of
//! dedicated threads, never on the async workers.
//!
//! The pool's size bounds how many hashes run at once (a login storm cannot
//! starve chat), its threads run at a lower CPU priority (when chat and
//! logins compete for a core, chat wins), and each thread reuses one 19 MiB
//! work area for every hash. That last point is about memory: hashes that
//! allocate their own area on whatever thread runs them leave a freed 19 MiB
//! in every malloc arena they touch, which on a busy server added up to
//! hundreds of MiB of resident memory.
//!
//! Jobs wait in two bounded lanes: `Known` (logins from an origin the
//! account knows: its usual address or a device proof) is always taken
//! before `Other` (everything else). A full lane refuses the job at once
//! with [`Busy`] and an estimate of when to retry, so a storm costs the
//! server a fixed amount of memory and the account owner waits for the hash
//! in progress, not for the storm. A job whose asker has gone away (the
//! client hung up) is dropped unhashed.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use argon2::{Algorithm, Argon2, Block, Params, Version};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::oneshot;

const SALT_LEN: usize = 16;
const OUTPUT_LEN: usize = 32;
/// A first guess at one hash's time, until the pool has timed its own.
const FIRST_GUESS_US: u64 = 50_000;

/// Which lane a job waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// A login from an origin the account knows; served first.
    Known,
    /// Every other login, and registrations.
    Other,
}

/// The lane was full: nothing was queued. Retry after `retry_after_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the password-hashing queue is full; retry in {retry_after_ms} ms")]
pub struct Busy {
    pub retry_after_ms: u64,
}

/// Why the pool could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start password-hashing thread {index} of {threads}: {source}")]
pub struct StartError {
    pub index: usize,
    pub threads: usize,
    #[source]
    pub source: std::io::Error,
}

enum Work {
    Hash { password: Vec<u8>, reply: oneshot::Sender<String> },
    Verify { password: Vec<u8>, phc: String, reply: oneshot::Sender<bool> },
}

impl Work {
    /// The asker stopped waiting (its request was dropped).
    fn abandoned(&self) -> bool {
        match self {
            Work::Hash { reply, .. } => reply.is_closed(),
            Work::Verify { reply, .. } => reply.is_closed(),
        }
    }
}

#[derive(Default)]
struct Lanes {
    known: VecDeque<Work>,
    other: VecDeque<Work>,
    closed: bool,
}

struct Shared {
    lanes: Mutex<Lanes>,
    ready: Condvar,
    /// Jobs one lane may hold waiting.
    per_lane: usize,
    threads: usize,
    /// Moving average of one job's time, in µs (for `retry_after_ms`).
    job_us: AtomicU64,
}

/// The hashing pool. Dropping it lets its threads finish what is queued and exit.
pub struct Hasher {
    shared: Arc<Shared>,
    dummy: String,
}

impl Hasher {
    /// Starts `threads` hashing threads (at least one), each lane holding at
    /// most `per_lane` waiting jobs (at least one), and makes the dummy hash.
    pub async fn start(threads: usize, per_lane: usize) -> Result<Self, StartError> {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            lanes: Mutex::new(Lanes::default()),
            ready: Condvar::new(),
            per_lane: per_lane.max(1),
            threads,
            job_us: AtomicU64::new(FIRST_GUESS_US),
        });
        for index in 0..threads {
            let s = shared.clone();
            if let Err(source) =
                std::thread::Builder::new().name(format!("parlor-hash-{index}")).spawn(move || worker(&s))
            {
                close(&shared);
                return Err(StartError { index, threads, source });
            }
        }
        let mut pool = Self { shared, dummy: String::new() };
        // Logins for unknown users are checked against this, so that they
        // cost one hash like a wrong password does.
        let mut pw = [0u8; 24];
        SystemRandom::new().fill(&mut pw).expect("system randomness");
        pool.dummy = pool.hash(&pw, Lane::Known).await.expect("an empty queue takes the first job");
        Ok(pool)
    }

    /// Jobs waiting now in each lane: `(known, other)`.
    pub fn queued(&self) -> (usize, usize) {
        let lanes = self.shared.lanes.lock().expect("hash queue lock");
        (lanes.known.len(), lanes.other.len())
    }

    /// A PHC string with today's parameters for a random password nobody knows.
    pub fn dummy(&self) -> &str {
        &self.dummy
    }

    /// A PHC string (`$argon2id$v=19$m=19456,t=2,p=1$salt$hash`) for `password`.
    pub async fn hash(&self, password: &[u8], lane: Lane) -> Result<String, Busy> {
        let (reply, answer) = oneshot::channel();
        self.submit(Work::Hash { password: password.to_vec(), reply }, lane)?;
        Ok(answer.await.expect("hashing threads answer every job they take"))
    }

    /// Whether `password` matches the PHC string `phc`.
    pub async fn verify(&self, password: &[u8], phc: &str, lane: Lane) -> Result<bool, Busy> {
        let (reply, answer) = oneshot::channel();
        self.submit(Work::Verify { password: password.to_vec(), phc: phc.to_owned(), reply }, lane)?;
        Ok(answer.await.expect("hashing threads answer every job they take"))
    }

    fn submit(&self, work: Work, lane: Lane) -> Result<(), Busy> {
        let s = &self.shared;
        let mut lanes = s.lanes.lock().expect("hash queue lock");
        let waiting = lanes.known.len() + lanes.other.len();
        let queue = match lane {
            Lane::Known => &mut lanes.known,
            Lane::Other => &mut lanes.other,
        };
        if queue.len() >= s.per_lane {
            // Roughly when what waits now will be done.
            let us = s.job_us.load(Ordering::Relaxed) * (waiting + s.threads) as u64 / s.threads as u64;
            return Err(Busy { retry_after_ms: us.div_ceil(1000).max(1) });
        }
        queue.push_back(work);
        drop(lanes);
        s.ready.notify_one();
        Ok(())
    }
}

impl Drop for Hasher {
    fn drop(&mut self) {
        close(&self.shared);
    }
}

fn close(shared: &Shared) {
    shared.lanes.lock().expect("hash queue lock").closed = true;
    shared.ready.notify_all();
}

fn worker(shared: &Shared) {
    lower_thread_priority();
    let rng = SystemRandom::new();
    let mut area = vec![Block::new(); Params::DEFAULT.block_count()];
    loop {
        let job = {
            let mut lanes = shared.lanes.lock().expect("hash queue lock");
            loop {
                if let Some(job) = lanes.known.pop_front().or_else(|| lanes.other.pop_front()) {
                    break job;
                }
                if lanes.closed {
                    return;
                }
                lanes = shared.ready.wait(lanes).expect("hash queue lock");
            }
        };
        if job.abandoned() {
            continue;
        }
        let t = Instant::now();
        match job {
            Work::Hash { password, reply } => {
                let _ = reply.send(hash(&rng, &password, &mut area));
            }
            Work::Verify { password, phc, reply } => {
                let _ = reply.send(verify(&password, &phc, &mut area));
            }
        }
        let took = t.elapsed().as_micros() as u64;
        let avg = shared.job_us.load(Ordering::Relaxed);
        shared.job_us.store(avg - avg / 8 + took / 8, Ordering::Relaxed);
    }
}

/// Nices the calling thread (Linux threads have their own nice value).
fn lower_thread_priority() {
    // Failure only leaves the default priority. Elsewhere a thread id is
    // not a process id, and setpriority would nice the whole process.
    #[cfg(target_os = "linux")]
    let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 10);
}

fn argon2(params: Params) -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

fn hash(rng: &SystemRandom, password: &[u8], area: &mut [Block]) -> String {
    let mut salt = [0u8; SALT_LEN];
    rng.fill(&mut salt).expect("system randomness");
    let mut out = [0u8; OUTPUT_LEN];
    let p = Params::DEFAULT;
    argon2(p.clone())
        .hash_password_into_with_memory(password, &salt, &mut out, &mut area[..p.block_count()])
        .expect("argon2 accepts any password up to 4 GiB and a 16-byte salt");
    format!(
        "$argon2id$v=19$m={},t={},p={}${}${}",
        p.m_cost(),
        p.t_cost(),
        p.p_cost(),
        B64.encode(salt),
        B64.encode(out)
    )
}

/// Recomputes the hash with the parameters stored in `phc` and compares in
/// constant time. Anything unparseable simply does not match.
fn verify(password: &[u8], phc: &str, area: &mut Vec<Block>) -> bool {
    let Some((params, salt, expected)) = parse(phc) else { return false };
    if area.len() < params.block_count() {
        // Hashes made with heavier parameters than today's still verify.
        area.resize(params.block_count(), Block::new());
    }
    let mut out = vec![0u8; expected.len()];
    let n = params.block_count();
    if argon2(params).hash_password_into_with_memory(password, &salt, &mut out, &mut area[..n]).is_err() {
        return false;
    }
    out.iter().zip(&expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

fn parse(phc: &str) -> Option<(Params, Vec<u8>, Vec<u8>)> {
    let mut parts = phc.split('$');
    let (Some(""), Some("argon2id"), Some("v=19"), Some(costs), Some(salt), Some(hash), None) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let (mut m, mut t, mut p) = (None, None, None);
    for kv in costs.split(',') {
        let (k, v) = kv.split_once('=')?;
        let v: u32 = v.parse().ok()?;
        match k {
            "m" => m = Some(v),
            "t" => t = Some(v),
            "p" => p = Some(v),
            _ => return None,
        }
    }
    let salt = B64.decode(salt).ok()?;
    let hash = B64.decode(hash).ok()?;
    let params = Params::new(m?, t?, p?, Some(hash.len())).ok()?;
    Some((params, salt, hash))
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::PasswordVerifier as _;

    #[test]
    fn hashes_are_standard_phc_strings_with_owasp_parameters() {
        let rng = SystemRandom::new();
        let mut area = vec![Block::new(); Params::DEFAULT.block_count()];
        let phc = hash(&rng, b"correct horse", &mut area);
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        // Any argon2 implementation reads it, and ours reads the crate's.
        assert!(Argon2::default().verify_password(b"correct horse", phc.as_str()).is_ok());
        assert!(verify(b"correct horse", &phc, &mut area));
        assert!(!verify(b"correct horsf", &phc, &mut area));
        use argon2::PasswordHasher as _;
        let theirs = Argon2::default().hash_password_with_salt(b"pw", b"0123456789abcdef").unwrap().to_string();
        assert!(verify(b"pw", &theirs, &mut area));
        assert!(!verify(b"pw", "$argon2id$v=19$garbage", &mut area));
        assert!(!verify(b"pw", "", &mut area));
    }

    #[tokio::test]
    async fn the_pool_answers_from_its_threads() {
        let pool = Hasher::start(2, 4).await.unwrap();
        let phc = pool.hash(b"secret words", Lane::Other).await.unwrap();
        assert!(pool.verify(b"secret words", &phc, Lane::Other).await.unwrap());
        assert!(!pool.verify(b"other words", &phc, Lane::Known).await.unwrap());
        assert!(!pool.verify(b"", pool.dummy(), Lane::Other).await.unwrap());
    }

    #[tokio::test]
    async fn a_full_lane_refuses_at_once_and_the_known_lane_goes_first() {
        let pool = Hasher::start(1, 3).await.unwrap();
        let phc = pool.dummy().to_owned();
        // Hold the one thread's attention: fill the other lane.
        let mut other = Vec::new();
        let mut busy = None;
        for _ in 0..50 {
            let (reply, answer) = oneshot::channel();
            match pool.submit(Work::Verify { password: b"x".to_vec(), phc: phc.clone(), reply }, Lane::Other) {
                Ok(()) => other.push(answer),
                Err(b) => {
                    busy = Some(b);
                    break;
                }
            }
        }
        let busy = busy.expect("a lane of 3 refused nothing");
        assert!(busy.retry_after_ms >= 1);
        assert!(other.len() <= 4, "{} jobs queued in a lane of 3 (plus one running)", other.len());
        let (known, waiting) = pool.queued();
        assert_eq!(known, 0);
        assert!((1..=3).contains(&waiting), "{waiting} waiting in a full lane of 3 while 50 ms jobs run");
        // A known login jumps the queue: it is answered before the other lane's last job.
        let (reply, known) = oneshot::channel();
        pool.submit(Work::Verify { password: b"y".to_vec(), phc: phc.clone(), reply }, Lane::Known).unwrap();
        let last = other.pop().unwrap();
        tokio::select! {
            biased;
            r = known => assert!(!r.unwrap()),
            _ = last => panic!("the known lane waited behind the other lane"),
        }
    }
}

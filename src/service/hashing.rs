//! Password hashing: argon2id (m = 19 MiB, t = 2, p = 1) on a small pool of
//! dedicated threads, never on the async workers.
//!
//! The pool's size bounds how many hashes run at once (a login storm queues
//! here and cannot starve chat), its threads run at a lower CPU priority (when
//! chat and logins compete for a core, chat wins), and each thread reuses one
//! 19 MiB work area for every hash. That last point is about memory: hashes
//! that allocate their own area on whatever thread runs them leave a freed
//! 19 MiB in every malloc arena they touch, which on a busy server added up to
//! hundreds of MiB of resident memory.

use std::sync::{Arc, Mutex, mpsc};

use argon2::{Algorithm, Argon2, Block, Params, Version};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::oneshot;

const SALT_LEN: usize = 16;
const OUTPUT_LEN: usize = 32;

enum Work {
    Hash { password: Vec<u8>, reply: oneshot::Sender<String> },
    Verify { password: Vec<u8>, phc: String, reply: oneshot::Sender<bool> },
}

/// The hashing pool. Dropping it lets its threads finish and exit.
pub struct Hasher {
    work: mpsc::Sender<Work>,
}

impl Hasher {
    /// Starts `threads` hashing threads (at least one).
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let (work, rx) = mpsc::channel::<Work>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new().name(format!("parlor-hash-{i}")).spawn(move || worker(&rx))?;
        }
        Ok(Self { work })
    }

    /// A PHC string (`$argon2id$v=19$m=19456,t=2,p=1$salt$hash`) for `password`.
    pub async fn hash(&self, password: &[u8]) -> String {
        let (reply, answer) = oneshot::channel();
        self.work
            .send(Work::Hash { password: password.to_vec(), reply })
            .expect("hashing threads live as long as the pool");
        answer.await.expect("hashing threads answer every job")
    }

    /// Whether `password` matches the PHC string `phc`.
    pub async fn verify(&self, password: &[u8], phc: &str) -> bool {
        let (reply, answer) = oneshot::channel();
        self.work
            .send(Work::Verify { password: password.to_vec(), phc: phc.to_owned(), reply })
            .expect("hashing threads live as long as the pool");
        answer.await.expect("hashing threads answer every job")
    }
}

fn worker(rx: &Mutex<mpsc::Receiver<Work>>) {
    lower_thread_priority();
    let rng = SystemRandom::new();
    let mut area = vec![Block::new(); Params::DEFAULT.block_count()];
    loop {
        let job = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        match job {
            Err(_) => return, // the pool was dropped
            Ok(Work::Hash { password, reply }) => {
                let _ = reply.send(hash(&rng, &password, &mut area));
            }
            Ok(Work::Verify { password, phc, reply }) => {
                let _ = reply.send(verify(&password, &phc, &mut area));
            }
        }
    }
}

/// Nices the calling thread (Linux threads have their own nice value).
fn lower_thread_priority() {
    // SAFETY: setpriority on our own thread id; failure only leaves the default priority.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10);
    }
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
        let pool = Hasher::new(2).unwrap();
        let phc = pool.hash(b"secret words").await;
        assert!(pool.verify(b"secret words", &phc).await);
        assert!(!pool.verify(b"other words", &phc).await);
    }
}

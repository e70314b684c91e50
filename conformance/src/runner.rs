//! Running cases: which ones (filter, modes), in what order, with what time
//! limits, and how results are reported (one line or one JSON object each,
//! then `N passed, M failed`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use serde_json::{Value, json};

use crate::ctx::Ctx;
use crate::failure::Failure;
use crate::schema::{SchemaLoadError, Schemas};

/// What a case needs from the server beyond the protocol itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    Nothing,
    /// The server runs with rate limits on (`--rate-limited`).
    RateLimits,
    /// The server's room log is unreachable right now (`--storage-down`).
    StorageDown,
    /// The server keeps only the last N events per room (`--retention N`).
    Retention,
    /// The server pings WebSockets every N seconds (`--ws-ping-secs N`).
    PingInterval,
}

pub type CaseFn = for<'a> fn(&'a Ctx) -> BoxFuture<'a, Result<(), Failure>>;

/// One conformance case.
#[derive(Clone)]
pub struct Case {
    /// `section::behaviour`.
    pub name: &'static str,
    /// The spec section it checks, e.g. `5` or `8`.
    pub section: &'static str,
    pub needs: Needs,
    /// How long it may take before it fails as timed out.
    pub limit: Duration,
    /// Mostly waiting on server timers: started at once, alongside the others.
    pub background: bool,
    pub run: CaseFn,
}

impl Case {
    pub const fn new(name: &'static str, section: &'static str, run: CaseFn) -> Case {
        Case { name, section, needs: Needs::Nothing, limit: Duration::from_secs(60), background: false, run }
    }
    pub const fn needs(mut self, needs: Needs) -> Case {
        self.needs = needs;
        self
    }
    pub const fn limit(mut self, secs: u64) -> Case {
        self.limit = Duration::from_secs(secs);
        self
    }
    pub const fn background(mut self) -> Case {
        self.background = true;
        self
    }
}

/// Wraps an `async fn(&Ctx) -> Result<(), Failure>` as a [`CaseFn`].
#[macro_export]
#[doc(hidden)]
macro_rules! case {
    ($name:literal, $section:literal, $f:path) => {
        $crate::runner::Case::new($name, $section, |ctx| Box::pin($f(ctx)))
    };
}

/// How a case ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail(String),
    /// Not run against this server in this mode; never counted as passed.
    NotRun(String),
}

#[derive(Clone, Debug)]
pub struct CaseResult {
    pub name: &'static str,
    pub section: &'static str,
    pub outcome: Outcome,
    pub duration: Duration,
}

impl CaseResult {
    /// `PASS  accounts::register_folds_case  §5  12ms`, with the reason on failures.
    pub fn line(&self) -> String {
        let (tag, reason) = match &self.outcome {
            Outcome::Pass => ("PASS", String::new()),
            Outcome::Fail(r) => ("FAIL", format!("  {r}")),
            Outcome::NotRun(r) => ("SKIP", format!("  not run: {r}")),
        };
        format!("{tag}  {:<52} §{:<3} {:>6}ms{reason}", self.name, self.section, self.duration.as_millis())
    }

    pub fn to_json(&self) -> Value {
        let (outcome, reason) = match &self.outcome {
            Outcome::Pass => ("pass", Value::Null),
            Outcome::Fail(r) => ("fail", json!(r)),
            Outcome::NotRun(r) => ("not_run", json!(r)),
        };
        json!({
            "name": self.name,
            "section": self.section,
            "outcome": outcome,
            "reason": reason,
            "duration_ms": self.duration.as_millis() as u64,
        })
    }
}

/// What to run against which server.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// `http://HOST:PORT` (a trailing `/` is fine).
    pub server: String,
    /// Only cases whose name contains this.
    pub filter: Option<String>,
    /// The server has rate limits on: run the rate-limit cases.
    pub rate_limited: bool,
    /// The server's room log is down on purpose: run the cases that need that.
    pub storage_down: bool,
    /// The server runs with `--retention N`: run the `trimmed` cases.
    pub retention: Option<u64>,
    /// The server pings WebSockets every N seconds: run the heartbeat case
    /// (it stays silent for about 3 intervals).
    pub ws_ping_secs: Option<u64>,
    /// Where the fake federation peer listens (its server name is this
    /// address). A server reaches private addresses such as 127.0.0.1 only
    /// for servers named with `--federation-peer` (§11.1), so start it with
    /// `--federation-peer ADDR=http://ADDR` for this listener's address.
    /// `None`: the peer binds 127.0.0.1:0, which only a server that reaches
    /// any loopback port can use.
    pub peer_listener: Option<std::sync::Arc<std::net::TcpListener>>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("--server must look like http://HOST:PORT, got {0:?}")]
    BadServer(String),
    #[error(transparent)]
    Schemas(#[from] SchemaLoadError),
    #[error("--filter {0:?} matches no case")]
    NothingSelected(String),
}

#[derive(Clone, Debug, Default)]
pub struct Report {
    pub results: Vec<CaseResult>,
}

impl Report {
    pub fn passed(&self) -> usize {
        self.results.iter().filter(|r| r.outcome == Outcome::Pass).count()
    }
    pub fn failed(&self) -> usize {
        self.results.iter().filter(|r| matches!(r.outcome, Outcome::Fail(_))).count()
    }
    pub fn not_run(&self) -> usize {
        self.results.iter().filter(|r| matches!(r.outcome, Outcome::NotRun(_))).count()
    }
    pub fn failures(&self) -> Vec<&CaseResult> {
        self.results.iter().filter(|r| matches!(r.outcome, Outcome::Fail(_))).collect()
    }
    /// `N passed, M failed`, plus `, K skipped` when some cases were not run.
    pub fn summary(&self) -> String {
        let mut s = format!("{} passed, {} failed", self.passed(), self.failed());
        if self.not_run() > 0 {
            s.push_str(&format!(", {} skipped", self.not_run()));
        }
        s
    }
}

/// Every case, in spec order.
pub fn all_cases() -> Vec<Case> {
    crate::cases::all()
}

/// `host:port` from `http://host:port[/]`.
pub fn authority_of(server: &str) -> Result<String, RunError> {
    let rest = server.trim().strip_prefix("http://").ok_or_else(|| RunError::BadServer(server.to_owned()))?;
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') || !rest.contains(':') {
        return Err(RunError::BadServer(server.to_owned()));
    }
    Ok(rest.to_owned())
}

/// Runs the selected cases against `cfg.server`, calling `on_result` for each
/// in spec order as soon as it and every case before it are done.
pub async fn run(cfg: &Config, mut on_result: impl FnMut(&CaseResult)) -> Result<Report, RunError> {
    let authority = authority_of(&cfg.server)?;
    let schemas = Arc::new(Schemas::load()?);
    let cases: Vec<Case> =
        all_cases().into_iter().filter(|c| cfg.filter.as_deref().is_none_or(|f| c.name.contains(f))).collect();
    if cases.is_empty() {
        return Err(RunError::NothingSelected(cfg.filter.clone().unwrap_or_default()));
    }
    let mut ctx = Ctx::new(authority, schemas, cfg.clone());
    // Without the server name most checks cannot be exact; the failure itself
    // is reported by the versions cases, so here it only leaves the default.
    let _ = ctx.discover().await;
    let ctx = Arc::new(ctx);

    let mut background: Vec<Option<tokio::task::JoinHandle<CaseResult>>> = cases
        .iter()
        .map(|c| (c.background && skip_reason(c, cfg).is_none()).then(|| tokio::spawn(run_one(c.clone(), ctx.clone()))))
        .collect();

    let mut report = Report::default();
    for (i, case) in cases.into_iter().enumerate() {
        let result = if let Some(reason) = skip_reason(&case, cfg) {
            CaseResult {
                name: case.name,
                section: case.section,
                outcome: Outcome::NotRun(reason),
                duration: Duration::ZERO,
            }
        } else if let Some(handle) = background[i].take() {
            match handle.await {
                Ok(r) => r,
                Err(e) => CaseResult {
                    name: case.name,
                    section: case.section,
                    outcome: Outcome::Fail(format!("case panicked: {e}")),
                    duration: Duration::ZERO,
                },
            }
        } else {
            run_one(case, ctx.clone()).await
        };
        on_result(&result);
        report.results.push(result);
    }
    Ok(report)
}

fn skip_reason(case: &Case, cfg: &Config) -> Option<String> {
    match case.needs {
        Needs::RateLimits if !cfg.rate_limited => {
            Some("needs a server with rate limits on; pass --rate-limited".into())
        }
        Needs::StorageDown if !cfg.storage_down => {
            Some("needs a server whose room log is unreachable; pass --storage-down".into())
        }
        Needs::Retention if cfg.retention.is_none() => {
            Some("needs a server with retention; pass --retention N (as the server's)".into())
        }
        Needs::PingInterval if cfg.ws_ping_secs.is_none() => {
            Some("waits out the server's WebSocket ping interval; pass --ws-ping-secs N (as the server's)".into())
        }
        _ => None,
    }
}

async fn run_one(mut case: Case, ctx: Arc<Ctx>) -> CaseResult {
    if ctx.cfg.rate_limited && case.needs != Needs::RateLimits {
        // Against a rate-limited server every registration waits its turn
        // (one per 6 s after the burst), so ordinary cases get more time.
        case.limit *= 6;
    }
    let started = Instant::now();
    // Spawned so that a panic in a case (a suite bug) fails that case only.
    let task = tokio::spawn({
        let ctx = ctx.clone();
        async move { tokio::time::timeout(case.limit, (case.run)(&ctx)).await }
    });
    let outcome = match task.await {
        Ok(Ok(Ok(()))) => Outcome::Pass,
        Ok(Ok(Err(Failure::NotRun(r)))) => Outcome::NotRun(r),
        Ok(Ok(Err(e))) => Outcome::Fail(e.to_string()),
        Ok(Err(_)) => Outcome::Fail(format!("did not finish within {:?}", case.limit)),
        Err(e) => Outcome::Fail(format!("suite bug: case panicked: {e}")),
    };
    CaseResult { name: case.name, section: case.section, outcome, duration: started.elapsed() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_are_many_uniquely_named_and_in_spec_order() {
        let cases = all_cases();
        assert!(cases.len() >= 60, "only {} cases", cases.len());
        let mut names: Vec<&str> = cases.iter().map(|c| c.name).collect();
        for n in &names {
            let (section, behaviour) = n.split_once("::").expect("section::behaviour");
            assert!(!section.is_empty() && !behaviour.is_empty() && !behaviour.contains("::"), "{n}");
        }
        names.sort();
        names.dedup();
        assert_eq!(names.len(), cases.len(), "duplicate case names");
        // Sections appear in the spec's order, except the rate-limit cases
        // (§4), which drain the server's buckets and so come last on purpose.
        let first_rl = cases.iter().position(|c| c.needs == Needs::RateLimits).unwrap_or(cases.len());
        assert!(cases[first_rl..].iter().all(|c| c.needs == Needs::RateLimits), "rate-limit cases must come last");
        let seq: Vec<u32> = cases[..first_rl].iter().map(|c| c.section.parse().expect("numeric section")).collect();
        assert!(seq.windows(2).all(|w| w[0] <= w[1]), "cases not in spec order: {seq:?}");
    }

    #[test]
    fn server_urls() {
        assert_eq!(authority_of("http://127.0.0.1:8008/").unwrap(), "127.0.0.1:8008");
        assert!(authority_of("https://x:1").is_err());
        assert!(authority_of("127.0.0.1:1").is_err());
    }

    #[test]
    fn summary_counts_not_run_visibly() {
        let r = |outcome| CaseResult { name: "a::b", section: "1", outcome, duration: Duration::ZERO };
        let rep =
            Report { results: vec![r(Outcome::Pass), r(Outcome::Fail("x".into())), r(Outcome::NotRun("y".into()))] };
        assert_eq!(rep.summary(), "1 passed, 1 failed, 1 skipped");
        assert!(rep.results[2].line().starts_with("SKIP"));
        assert_eq!(rep.results[1].to_json()["outcome"], "fail");
    }
}

//! The machine-readable spec, checked by real validators from npm:
//! `redocly lint` (OpenAPI 3.1, every rule of `recommended-strict`) on
//! `spec/openapi.json` and `asyncapi validate` (AsyncAPI 3.0, failing on
//! warnings) on `spec/asyncapi.json`, each also fed a broken copy that it must
//! refuse; and the typed client of `spec/clients.md`: TypeScript types
//! generated from both documents (openapi-typescript, AsyncAPI Modelina) and
//! `tests/spec-tools/client.ts` type-checked against them by `tsc`.
//!
//! The npm packages are pinned by `tests/spec-tools/package-lock.json`;
//! `scripts/setup` installs them, and this test runs `npm ci` itself when
//! they are missing or stale. Nothing is sent anywhere: both CLIs' telemetry
//! is turned off.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Bounds a tool that hangs; a normal run takes seconds.
const DEADLINE: Duration = Duration::from_secs(300);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn tools_dir() -> PathBuf {
    repo().join("tests/spec-tools")
}

fn json_file(path: &Path) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// The tools folder with its npm packages installed as the lock file pins
/// them (once per test binary), and a scratch folder for the tools' settings.
struct Tools {
    dir: PathBuf,
    home: tempfile::TempDir,
}

fn tools() -> &'static Tools {
    static TOOLS: OnceLock<Tools> = OnceLock::new();
    TOOLS.get_or_init(|| {
        let dir = tools_dir();
        let lock = json_file(&dir.join("package-lock.json")).expect("tests/spec-tools/package-lock.json is JSON");
        let manifest = json_file(&dir.join("package.json")).expect("tests/spec-tools/package.json is JSON");
        let stale = manifest["devDependencies"].as_object().expect("devDependencies").keys().any(|name| {
            let wanted = &lock["packages"][format!("node_modules/{name}")]["version"];
            let installed = json_file(&dir.join("node_modules").join(name).join("package.json"));
            installed.is_none_or(|p| &p["version"] != wanted)
        });
        if stale {
            let status = Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(&dir)
                .status()
                .unwrap_or_else(|e| panic!("cannot run npm ({e}): run `scripts/setup`, which installs it"));
            assert!(status.success(), "`npm ci` in tests/spec-tools failed");
        }
        let home = tempfile::tempdir().unwrap();
        // The AsyncAPI CLI reads (and otherwise creates in $HOME) this file
        // before every command; with it, it records and sends nothing.
        std::fs::write(
            home.path().join("asyncapi-analytics.json"),
            json!({"analyticsEnabled": "false", "infoMessageShown": "true", "userID": "parlor-tests"}).to_string(),
        )
        .unwrap();
        Tools { dir, home }
    })
}

struct Run {
    ok: bool,
    output: String,
}

/// Runs an npm-installed tool from `node_modules/.bin` in `cwd`, with its
/// output captured and a deadline.
fn run(tool: &str, args: &[&str], cwd: &Path) -> Run {
    let t = tools();
    let bin = t.dir.join("node_modules/.bin").join(tool);
    let out = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(&bin)
        .args(args)
        .current_dir(cwd)
        .env("REDOCLY_TELEMETRY", "off")
        .env("REDOCLY_SUPPRESS_UPDATE_NOTICE", "true")
        .env("ASYNCAPI_METRICS_CONFIG_PATH", t.home.path().join("asyncapi-analytics.json"))
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(out.reopen().unwrap())
        .stderr(out.reopen().unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {} ({e})", bin.display()));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("{tool} {args:?} did not finish within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = String::from_utf8_lossy(&std::fs::read(out.path()).unwrap()).into_owned();
    Run { ok: status.success(), output }
}

fn spec_file(name: &str) -> PathBuf {
    repo().join("spec").join(name)
}

fn redocly_lint(file: &Path) -> Run {
    let config = tools_dir().join("lint/redocly.yaml");
    run("redocly", &["lint", "--config", config.to_str().unwrap(), file.to_str().unwrap()], &tools_dir())
}

fn asyncapi_validate(file: &Path) -> Run {
    run("asyncapi", &["validate", file.to_str().unwrap(), "--fail-severity", "warn"], &tools_dir())
}

/// Writes a copy of a spec document with `corrupt` applied.
fn broken_copy(dir: &Path, name: &str, corrupt: impl FnOnce(&mut Value)) -> PathBuf {
    let mut doc = json_file(&spec_file(name)).unwrap();
    corrupt(&mut doc);
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    path
}

#[test]
fn openapi_json_passes_redocly_lint() {
    let r = redocly_lint(&spec_file("openapi.json"));
    assert!(r.ok, "`redocly lint` refuses spec/openapi.json:\n{}", r.output);
}

#[test]
fn redocly_lint_refuses_a_broken_openapi_document() {
    let dir = tempfile::tempdir().unwrap();
    type Corruption = fn(&mut Value);
    // Each case names the rule that must catch it: the copy also breaks the
    // three rules tests/spec-tools/lint/.redocly.lint-ignore.yaml waives
    // for the real file only, so failing alone proves nothing.
    let cases: [(&str, &str, Corruption); 3] = [
        ("a reference to no schema", "no-unresolved-refs", |d| {
            d["paths"]["/_parlor/client/v1/login"]["post"]["requestBody"]["content"]["application/json"]["schema"] =
                json!({"$ref": "#/components/schemas/NoSuchSchema"});
        }),
        ("a parameter in the body", "struct", |d| {
            d["paths"]["/_parlor/client/v1/rooms/{room}/join"]["post"]["parameters"][0]["in"] = json!("body");
        }),
        ("a path parameter that is not declared", "path-parameters-defined", |d| {
            d["paths"]["/_parlor/client/v1/rooms/{room}/join"]["post"].as_object_mut().unwrap().remove("parameters");
        }),
    ];
    for (what, mentions, corrupt) in cases {
        let file = broken_copy(dir.path(), "openapi.json", corrupt);
        let r = redocly_lint(&file);
        assert!(!r.ok, "`redocly lint` accepts openapi.json with {what}:\n{}", r.output);
        let rule = format!("generated by the {mentions} rule");
        assert!(r.output.contains(&rule), "`redocly lint` on {what} does not report {rule:?}:\n{}", r.output);
    }
}

#[test]
fn asyncapi_json_passes_asyncapi_validate() {
    let r = asyncapi_validate(&spec_file("asyncapi.json"));
    assert!(r.ok, "`asyncapi validate` refuses spec/asyncapi.json:\n{}", r.output);
}

#[test]
fn asyncapi_validate_refuses_a_broken_document() {
    let dir = tempfile::tempdir().unwrap();
    type Corruption = fn(&mut Value);
    let cases: [(&str, &str, Corruption); 3] = [
        ("an unknown operation action", "operations.receiveAuth.action", |d| {
            d["operations"]["receiveAuth"]["action"] = json!("shout")
        }),
        ("a message payload referring to no schema", "'#/components/schemas/NoSuchSchema' does not exist", |d| {
            d["components"]["messages"]["auth"]["payload"] = json!({"$ref": "#/components/schemas/NoSuchSchema"});
        }),
        ("a payload schema that is not a JSON Schema", "components.schemas.ClientFrameAuth.type", |d| {
            d["components"]["schemas"]["ClientFrameAuth"]["type"] = json!(5);
        }),
    ];
    for (what, mentions, corrupt) in cases {
        let file = broken_copy(dir.path(), "asyncapi.json", corrupt);
        let r = asyncapi_validate(&file);
        assert!(!r.ok, "`asyncapi validate` accepts asyncapi.json with {what}:\n{}", r.output);
        assert!(
            r.output.contains(mentions),
            "`asyncapi validate` on {what} does not mention {mentions:?}:\n{}",
            r.output
        );
    }
}

/// Generates the TypeScript types of spec/clients.md into `dir/generated`
/// and type-checks `dir/client.ts` against them.
fn generate_and_type_check(dir: &Path) -> Run {
    let generated = dir.join("generated");
    // Run from `dir`, so that openapi-typescript uses its default lint rules
    // (the strict ones in tests/spec-tools/lint are for `redocly lint`).
    let openapi = spec_file("openapi.json");
    let r = run("openapi-typescript", &[openapi.to_str().unwrap(), "-o", "generated/parlor.d.ts"], dir);
    assert!(r.ok, "openapi-typescript failed on spec/openapi.json:\n{}", r.output);
    let asyncapi = spec_file("asyncapi.json");
    let ws = generated.join("ws");
    let r = run(
        "asyncapi",
        &[
            "generate",
            "models",
            "typescript",
            asyncapi.to_str().unwrap(),
            "-o",
            ws.to_str().unwrap(),
            "--tsModelType=interface",
            "--tsEnumType=union",
            "--tsExportType=named",
            "--tsRawPropertyNames",
            "--tsIncludeComments",
            "--no-interactive",
        ],
        dir,
    );
    assert!(r.ok, "asyncapi generate models failed on spec/asyncapi.json:\n{}", r.output);
    run("tsc", &["-p", dir.join("tsconfig.json").to_str().unwrap()], dir)
}

#[test]
fn a_typescript_client_generated_from_the_spec_type_checks() {
    let dir = tempfile::tempdir().unwrap();
    for file in ["client.ts", "tsconfig.json"] {
        std::fs::copy(tools_dir().join(file), dir.path().join(file)).unwrap();
    }
    let r = generate_and_type_check(dir.path());
    assert!(r.ok, "tests/spec-tools/client.ts does not type-check against the generated client:\n{}", r.output);

    // The same client, reading a field the spec does not have, must not.
    let client = std::fs::read_to_string(dir.path().join("client.ts")).unwrap();
    let wrong = client.replace("answer.access_token", "answer.accessToken");
    assert_ne!(wrong, client, "client.ts reads answer.access_token");
    std::fs::write(dir.path().join("client.ts"), wrong).unwrap();
    let r = run("tsc", &["-p", dir.path().join("tsconfig.json").to_str().unwrap()], dir.path());
    assert!(
        !r.ok && r.output.contains("accessToken"),
        "tsc accepts a client that reads a missing field:\n{}",
        r.output
    );
}

//! §5 Accounts: versions, registration (username rules and folding, every
//! password rule and their order, what a digit is), login (its field checks,
//! device proofs), no user enumeration, devices, logout, logout-all and whoami.

use std::time::Duration;

use serde_json::{Value, json};

use super::s;
use crate::ctx::{Ctx, GOOD_PASSWORD};
use crate::failure::Result;
use crate::http::Request;
use crate::runner::Case;
use crate::{case, check, check_eq};

pub fn cases() -> Vec<Case> {
    vec![
        case!("versions::lists_v1", "5", versions_lists_v1),
        case!("versions::server_name_is_valid", "5", versions_server_name_is_valid),
        case!("registration::follows_the_announced_mode", "5", registration_follows_the_announced_mode),
        case!("accounts::register_returns_user_id", "5", register_returns_user_id),
        case!("accounts::register_folds_case", "5", register_folds_case),
        case!("accounts::register_taken_name", "5", register_taken_name),
        case!("accounts::register_username_length", "5", register_username_length),
        case!("accounts::register_username_bad_characters", "5", register_username_bad_characters),
        case!("accounts::register_username_never_folds_non_ascii", "5", register_username_never_folds_non_ascii),
        case!("accounts::register_password_too_short", "5", register_password_too_short),
        case!("accounts::register_password_too_long", "5", register_password_too_long),
        case!("accounts::register_password_length_bounds_accepted", "5", register_password_length_bounds_accepted),
        case!("accounts::register_password_too_similar", "5", register_password_too_similar),
        case!("accounts::register_password_too_similar_to_part", "5", register_password_too_similar_to_part),
        case!("accounts::register_password_too_common", "5", register_password_too_common),
        case!("accounts::register_password_entirely_numeric", "5", register_password_entirely_numeric),
        case!("accounts::register_password_rules_in_order", "5", register_password_rules_in_order),
        case!(
            "accounts::register_password_numeric_means_decimal_digits",
            "5",
            register_password_numeric_means_decimal_digits
        ),
        case!("accounts::login_returns_token", "5", login_returns_token),
        case!("accounts::login_folds_case", "5", login_folds_case),
        case!("accounts::login_new_device_each_time", "5", login_new_device_each_time),
        case!("accounts::login_device_name_limit", "5", login_device_name_limit),
        case!("accounts::login_wrong_password", "5", login_wrong_password),
        case!("accounts::login_no_user_enumeration", "5", login_no_user_enumeration),
        case!("accounts::login_fields_checked_before_the_password", "5", login_fields_checked_before_the_password),
        case!("accounts::login_device_proof", "5", login_device_proof),
        case!("accounts::whoami", "5", whoami),
        case!("accounts::missing_token", "5", missing_token),
        case!("accounts::unknown_token", "5", unknown_token),
        case!("accounts::logout_revokes_only_this_token", "5", logout_revokes_only_this_token),
        case!("accounts::logout_all_revokes_every_token", "5", logout_all_revokes_every_token),
    ]
}

/// Is `name` a server name as §2 defines it (lower case host[:port])?
fn valid_server_name(name: &str) -> bool {
    let (host, port) = if let Some(rest) = name.strip_prefix('[') {
        match rest.split_once(']') {
            Some((h, p)) => (h, p.strip_prefix(':')),
            None => return false,
        }
    } else {
        match name.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (name, None),
        }
    };
    let host_ok =
        !host.is_empty() && host.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b".-:".contains(&c));
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|c| c.is_ascii_digit()));
    host_ok && port_ok
}

async fn versions_lists_v1(ctx: &Ctx) -> Result<()> {
    let v = ctx.http.send(Request::get("/_parlor/versions")).await?.ok(200, "versions_response")?;
    let versions: Vec<&str> = v["versions"].as_array().into_iter().flatten().filter_map(|x| x.as_str()).collect();
    check!(versions.contains(&"v1"), "versions does not list v1: {v}");
    check!(!s(&v["server"], "version").is_empty(), "server.version is empty: {v}");
    Ok(())
}

async fn versions_server_name_is_valid(ctx: &Ctx) -> Result<()> {
    let v = ctx.http.send(Request::get("/_parlor/versions")).await?.ok(200, "versions_response")?;
    let name = s(&v["server"], "name");
    check!(valid_server_name(name), "server.name {name:?} is not a lower-case host[:port]");
    Ok(())
}

/// `GET /_parlor/versions` says who may register, and `/register` does as
/// it says: `open` ignores a `registration_token`; `token` refuses a request
/// without one or with one never issued; `closed` refuses every request,
/// token or not. (A valid token needs the operator: tests/admin.rs.)
async fn registration_follows_the_announced_mode(ctx: &Ctx) -> Result<()> {
    let v = ctx.http.send(Request::get("/_parlor/versions")).await?.ok(200, "versions_response")?;
    let with_token = |name: &str, token: &str| {
        Request::post(Ctx::api("/register")).json(&json!({
            "username": name, "password": GOOD_PASSWORD, "registration_token": token
        }))
    };
    match s(&v, "registration") {
        "open" => {
            let name = ctx.username("open");
            ctx.send_patiently(with_token(&name, "anything")).await?.ok(201, "register_response")?;
        }
        "token" => {
            ctx.register_raw(&ctx.username("tok"), GOOD_PASSWORD).await?.err(403, "registration_token_required")?;
            let bogus = with_token(&ctx.username("tok"), "never-issued-token");
            ctx.send_patiently(bogus).await?.err(403, "invalid_registration_token")?;
        }
        "closed" => {
            ctx.register_raw(&ctx.username("closed"), GOOD_PASSWORD).await?.err(403, "registration_closed")?;
            let any = with_token(&ctx.username("closed"), "never-issued-token");
            ctx.send_patiently(any).await?.err(403, "registration_closed")?;
        }
        other => check!(false, "registration is {other:?}, not open, token or closed: {v}"),
    }
    Ok(())
}

async fn register_returns_user_id(ctx: &Ctx) -> Result<()> {
    let name = ctx.username("reg");
    let v = ctx.register_raw(&name, GOOD_PASSWORD).await?.ok(201, "register_response")?;
    check_eq!(s(&v, "user_id"), ctx.user_id(&name).as_str(), "user_id");
    // The account is on disk before the answer: logging in works at once.
    ctx.login(&name, GOOD_PASSWORD).await?;
    Ok(())
}

async fn register_folds_case(ctx: &Ctx) -> Result<()> {
    let lower = ctx.username("fold");
    let mixed: String =
        lower.chars().enumerate().map(|(i, c)| if i % 2 == 0 { c.to_ascii_uppercase() } else { c }).collect();
    let v = ctx.register_raw(&mixed, GOOD_PASSWORD).await?.ok(201, "register_response")?;
    check_eq!(s(&v, "user_id"), ctx.user_id(&lower).as_str(), "user_id of {mixed}");
    Ok(())
}

async fn register_taken_name(ctx: &Ctx) -> Result<()> {
    let name = ctx.username("taken");
    ctx.register_raw(&name, GOOD_PASSWORD).await?.ok(201, "register_response")?;
    ctx.register_raw(&name, GOOD_PASSWORD).await?.err(409, "username_taken")?;
    // Another case of the same name is the same account.
    ctx.register_raw(&name.to_ascii_uppercase(), GOOD_PASSWORD).await?.err(409, "username_taken")?;
    Ok(())
}

async fn register_username_length(ctx: &Ctx) -> Result<()> {
    ctx.register_raw("", GOOD_PASSWORD).await?.err(400, "invalid_username")?;
    let long = format!("{}{}", ctx.username("l"), "x".repeat(32));
    ctx.register_raw(&long[..33], GOOD_PASSWORD).await?.err(400, "invalid_username")?;
    // 32 characters is fine.
    let max = format!("{}{}", ctx.username("m"), "x".repeat(32));
    let v = ctx.register_raw(&max[..32], GOOD_PASSWORD).await?.ok(201, "register_response")?;
    check_eq!(s(&v, "user_id"), ctx.user_id(&max[..32]).as_str(), "user_id");
    Ok(())
}

async fn register_username_bad_characters(ctx: &Ctx) -> Result<()> {
    let base = ctx.username("bad");
    for bad in [" ", "!", "@", ":", "#", "/", "+", "\u{0}"] {
        let name = format!("{}{bad}x", &base[..base.len().min(28)]);
        ctx.register_raw(&name, GOOD_PASSWORD).await?.err(400, "invalid_username")?;
    }
    // Every allowed character together is fine.
    let good = format!("{}._-9", &base[..base.len().min(27)]);
    ctx.register_raw(&good, GOOD_PASSWORD).await?.ok(201, "register_response")?;
    Ok(())
}

async fn register_username_never_folds_non_ascii(ctx: &Ctx) -> Result<()> {
    let base = ctx.username("na");
    // Á lower-cases to á (not ASCII); K (Kelvin sign) lower-cases to ASCII `k`
    // under Unicode rules: both must be refused, never folded.
    for odd in ["\u{c1}", "\u{212a}", "\u{e9}"] {
        let name = format!("{odd}{}", &base[..base.len().min(28)]);
        ctx.register_raw(&name, GOOD_PASSWORD).await?.err(400, "invalid_username")?;
    }
    Ok(())
}

async fn register_password_too_short(ctx: &Ctx) -> Result<()> {
    let name = ctx.username("ps");
    ctx.register_raw(&name, "#Vq!8%Z").await?.err(400, "password_too_short")?;
    ctx.register_raw(&name, "").await?.err(400, "password_too_short")?;
    // Characters, not bytes: 7 two-byte characters are still too short.
    ctx.register_raw(&name, "\u{e9}\u{e8}\u{ea}\u{eb}\u{f4}\u{f6}\u{fb}").await?.err(400, "password_too_short")?;
    Ok(())
}

async fn register_password_too_long(ctx: &Ctx) -> Result<()> {
    let name = ctx.username("pl");
    ctx.register_raw(&name, &format!("{GOOD_PASSWORD}{}", "#".repeat(1025 - GOOD_PASSWORD.len())))
        .await?
        .err(400, "password_too_long")?;
    // Bytes, not characters: 513 two-byte characters are 1,026 bytes.
    ctx.register_raw(&name, &"\u{e9}".repeat(513)).await?.err(400, "password_too_long")?;
    Ok(())
}

async fn register_password_length_bounds_accepted(ctx: &Ctx) -> Result<()> {
    // Exactly 8 characters, and exactly 1,024 bytes.
    ctx.register_raw(&ctx.username("p8"), "#Vq!8%Zr").await?.ok(201, "register_response")?;
    let long = format!("{GOOD_PASSWORD}{}", "#".repeat(1024 - GOOD_PASSWORD.len()));
    ctx.register_raw(&ctx.username("p1k"), &long).await?.ok(201, "register_response")?;
    Ok(())
}

async fn register_password_too_similar(ctx: &Ctx) -> Result<()> {
    let name = ctx.username("sim");
    ctx.register_raw(&name, &format!("{name}!!")).await?.err(400, "password_too_similar")?;
    // Compared lower-cased.
    ctx.register_raw(&name, &format!("{}#", name.to_ascii_uppercase())).await?.err(400, "password_too_similar")?;
    Ok(())
}

/// A username whose whole is not like the password but one `.`/`-` part is:
/// a 20-character prefix, then `.wombatly`; the password `wombatly#7`.
/// Whole: 2·M/(10+29) ≤ 20/39 < 0.7; the part: 2·8/(10+8) = 0.89 ≥ 0.7.
async fn register_password_too_similar_to_part(ctx: &Ctx) -> Result<()> {
    let prefix = ctx.unique("partpartpartpartpart", 20);
    for sep in [".", "-"] {
        let name = format!("{prefix}{sep}wombatly");
        ctx.register_raw(&name, "wombatly#7").await?.err(400, "password_too_similar")?;
    }
    Ok(())
}

async fn register_password_too_common(ctx: &Ctx) -> Result<()> {
    let name = ctx.username("com");
    ctx.register_raw(&name, "sunshine").await?.err(400, "password_too_common")?;
    // Case-insensitive.
    ctx.register_raw(&name, "TrustNo1").await?.err(400, "password_too_common")?;
    Ok(())
}

async fn register_password_entirely_numeric(ctx: &Ctx) -> Result<()> {
    let name = ctx.username("num");
    ctx.register_raw(&name, "83920571946").await?.err(400, "password_entirely_numeric")?;
    Ok(())
}

async fn register_password_rules_in_order(ctx: &Ctx) -> Result<()> {
    let name = ctx.username("ord");
    // Short, numeric and common: length comes first.
    ctx.register_raw(&name, "1234567").await?.err(400, "password_too_short")?;
    // Common and numeric: common comes before numeric.
    ctx.register_raw(&name, "12345678").await?.err(400, "password_too_common")?;
    // Common and like the username: similarity comes before common.
    // 2·8/(8+13) = 0.76 ≥ 0.7.
    let similar_name = format!("iloveyou{}", &ctx.unique("", 6)[1..]);
    ctx.register_raw(&similar_name, "iloveyou").await?.err(400, "password_too_similar")?;
    Ok(())
}

/// "Digits" are decimal digits of any script (Unicode `Nd`), and nothing else.
async fn register_password_numeric_means_decimal_digits(ctx: &Ctx) -> Result<()> {
    let name = ctx.username("nd");
    for digits in [
        "\u{663}\u{664}\u{665}\u{666}\u{667}\u{668}\u{669}\u{660}\u{661}\u{662}", // Arabic-Indic
        "\u{ff18}\u{ff13}\u{ff19}\u{ff12}\u{ff10}\u{ff15}\u{ff17}\u{ff11}\u{ff19}\u{ff14}", // full-width
        "\u{96e}\u{96f}\u{966}\u{967}\u{968}\u{969}\u{96a}\u{96b}\u{96c}",        // Devanagari
        "83\u{669}2\u{ff10}5719",                                                 // mixed scripts
    ] {
        ctx.register_raw(&name, digits).await?.err(400, "password_entirely_numeric")?;
    }
    // Numeric characters that are not decimal digits: fractions, Roman
    // numerals, superscripts, circled digits.
    for (tag, other) in [
        ("ndf", "\u{bd}\u{bc}\u{be}\u{bd}\u{bc}\u{be}\u{bd}\u{bc}\u{be}"),
        ("ndr", "\u{216b}\u{2167}\u{2163}\u{216b}\u{2167}\u{2163}\u{216b}\u{2167}"),
        ("nds", "\u{b2}\u{b3}\u{b9}\u{2074}\u{2075}\u{2076}\u{2077}\u{2078}"),
        ("ndc", "\u{2460}\u{2461}\u{2462}\u{2463}\u{2464}\u{2465}\u{2466}\u{2467}"),
    ] {
        ctx.register_raw(&ctx.username(tag), other).await?.ok(201, "register_response")?;
    }
    Ok(())
}

async fn login_returns_token(ctx: &Ctx) -> Result<()> {
    let name = ctx.username("lg");
    ctx.register_raw(&name, GOOD_PASSWORD).await?.ok(201, "register_response")?;
    let v = ctx.login_raw(&name, GOOD_PASSWORD, Some("laptop")).await?.ok(200, "login_response")?;
    check_eq!(s(&v, "user_id"), ctx.user_id(&name).as_str(), "user_id");
    let token = s(&v, "access_token");
    check!(
        token.len() == 43 && token.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'),
        "access_token {token:?} is not 43 characters of unpadded base64url (256 bits)"
    );
    check!(!s(&v, "device_id").is_empty(), "device_id is empty");
    Ok(())
}

async fn login_folds_case(ctx: &Ctx) -> Result<()> {
    let user = ctx.shared(2).await?;
    let v = ctx.login_raw(&user.username.to_ascii_uppercase(), GOOD_PASSWORD, None).await?.ok(200, "login_response")?;
    check_eq!(s(&v, "user_id"), user.user_id.as_str(), "user_id when logging in upper-cased");
    Ok(())
}

async fn login_new_device_each_time(ctx: &Ctx) -> Result<()> {
    let a = ctx.user("dev").await?;
    let b = ctx.login(&a.username, GOOD_PASSWORD).await?;
    check!(a.device_id != b.device_id, "two logins gave one device_id {}", a.device_id);
    check!(a.token != b.token, "two logins gave one token");
    for u in [&a, &b] {
        let w = ctx
            .http
            .send(Request::get(Ctx::api("/account/whoami")).token(&u.token))
            .await?
            .ok(200, "whoami_response")?;
        check_eq!(s(&w, "device_id"), u.device_id.as_str(), "whoami device_id");
    }
    Ok(())
}

async fn login_device_name_limit(ctx: &Ctx) -> Result<()> {
    let user = ctx.shared(2).await?;
    ctx.login_raw(&user.username, GOOD_PASSWORD, Some(&"d".repeat(65))).await?.err(400, "invalid_field")?;
    // 64 characters (of two bytes each) is fine.
    ctx.login_raw(&user.username, GOOD_PASSWORD, Some(&"\u{e9}".repeat(64))).await?.ok(200, "login_response")?;
    Ok(())
}

async fn login_wrong_password(ctx: &Ctx) -> Result<()> {
    let user = ctx.shared(2).await?;
    ctx.login_raw(&user.username, "#Wrong!pass%9", None).await?.err(401, "invalid_credentials")?;
    Ok(())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn login_no_user_enumeration(ctx: &Ctx) -> Result<()> {
    let user = ctx.shared(2).await?;
    let ghost = ctx.username("ghost");
    let (mut wrong_t, mut ghost_t) = (Vec::new(), Vec::new());
    let mut answers = Vec::new();
    for _ in 0..3 {
        let w = ctx.login_raw(&user.username, "#Wrong!pass%9", None).await?;
        let g = ctx.login_raw(&ghost, "#Wrong!pass%9", None).await?;
        wrong_t.push(w.elapsed);
        ghost_t.push(g.elapsed);
        answers.push((w, g));
    }
    for (w, g) in &answers {
        let (wv, gv) = (w.err(401, "invalid_credentials")?, g.err(401, "invalid_credentials")?);
        check_eq!(gv, wv, "the answer for an unknown user differs from the one for a wrong password (it tells which)");
    }
    // Loose timing: an unknown user must cost a hash too. Only a gap of 5x or
    // more is called out, so a busy machine does not fail the case.
    let (mw, mg) = (median(wrong_t), median(ghost_t));
    check!(
        mw < Duration::from_millis(20) || mg * 5 >= mw,
        "an unknown username is answered much faster ({mg:?}) than a wrong password ({mw:?}): the timing tells which"
    );
    Ok(())
}

/// A username that is not valid syntax and a password over 1,024 bytes are
/// refused as such (they cannot name an account or match one), not with
/// `invalid_credentials` after a hash.
async fn login_fields_checked_before_the_password(ctx: &Ctx) -> Result<()> {
    let user = ctx.shared(2).await?;
    for bad in ["a".repeat(60_000), "no spaces".into(), String::new(), "x".repeat(33)] {
        ctx.login_raw(&bad, GOOD_PASSWORD, None).await?.err(400, "invalid_username")?;
    }
    ctx.login_raw(&user.username, &"p".repeat(1025), None).await?.err(400, "password_too_long")?;
    let login = |proof: Value| {
        Request::post(Ctx::api("/login"))
            .json(&json!({"username": user.username, "password": GOOD_PASSWORD, "device_proof": proof}))
    };
    ctx.send_patiently(login(json!(42))).await?.err(400, "invalid_field")?;
    Ok(())
}

/// Every login answers with a `device_proof`; sent back, it keeps it; a
/// made-up one is ignored; `logout` keeps proofs and `logout/all` forgets them.
async fn login_device_proof(ctx: &Ctx) -> Result<()> {
    let name = ctx.username("dp");
    ctx.register_raw(&name, GOOD_PASSWORD).await?.ok(201, "register_response")?;
    let login = |proof: Option<&str>| {
        let mut body = json!({"username": name, "password": GOOD_PASSWORD});
        if let Some(p) = proof {
            body["device_proof"] = json!(p);
        }
        ctx.send_patiently(Request::post(Ctx::api("/login")).json(&body))
    };
    let first = login(None).await?.ok(200, "login_response")?;
    let proof = s(&first, "device_proof").to_owned();
    check!(
        proof.len() == 43 && proof.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'),
        "device_proof {proof:?} is not 43 characters of unpadded base64url (256 bits)"
    );
    let again = login(Some(&proof)).await?.ok(200, "login_response")?;
    check_eq!(s(&again, "device_proof"), proof.as_str(), "the proof a login with a valid proof answers with");
    let made_up = login(Some(&"A".repeat(43))).await?.ok(200, "login_response")?;
    check!(
        s(&made_up, "device_proof") != proof && s(&made_up, "device_proof") != "A".repeat(43),
        "a login with a made-up proof did not get a new one: {made_up}"
    );
    // `logout` keeps the proof.
    ctx.http.send(Request::post(Ctx::api("/logout")).token(s(&first, "access_token"))).await?.ok(200, "empty")?;
    let kept = login(Some(&proof)).await?.ok(200, "login_response")?;
    check_eq!(s(&kept, "device_proof"), proof.as_str(), "the proof after logout");
    // `logout/all` forgets it: the next login gets a new one.
    ctx.http.send(Request::post(Ctx::api("/logout/all")).token(s(&kept, "access_token"))).await?.ok(200, "empty")?;
    let after = login(Some(&proof)).await?.ok(200, "login_response")?;
    check!(s(&after, "device_proof") != proof, "logout/all did not forget the device proof");
    Ok(())
}

async fn whoami(ctx: &Ctx) -> Result<()> {
    let user = ctx.shared(0).await?;
    let v = ctx
        .http
        .send(Request::get(Ctx::api("/account/whoami")).token(&user.token))
        .await?
        .ok(200, "whoami_response")?;
    check_eq!(s(&v, "user_id"), user.user_id.as_str(), "user_id");
    check_eq!(s(&v, "device_id"), user.device_id.as_str(), "device_id");
    Ok(())
}

async fn missing_token(ctx: &Ctx) -> Result<()> {
    for path in ["/account/whoami", "/rooms"] {
        ctx.http.send(Request::get(Ctx::api(path))).await?.err(401, "missing_token")?;
    }
    ctx.http.send(Request::post(Ctx::api("/logout"))).await?.err(401, "missing_token")?;
    Ok(())
}

async fn unknown_token(ctx: &Ctx) -> Result<()> {
    let made_up = "A".repeat(43);
    for token in [made_up.as_str(), "short", "not base64 at all!"] {
        ctx.http.send(Request::get(Ctx::api("/account/whoami")).token(token)).await?.err(401, "unknown_token")?;
    }
    Ok(())
}

async fn logout_revokes_only_this_token(ctx: &Ctx) -> Result<()> {
    let a = ctx.user("lo").await?;
    let b = ctx.login(&a.username, GOOD_PASSWORD).await?;
    let c = ctx.login(&a.username, GOOD_PASSWORD).await?;
    // Without a body, and with `{}`.
    ctx.http.send(Request::post(Ctx::api("/logout")).token(&a.token)).await?.ok(200, "empty")?;
    ctx.http.send(Request::post(Ctx::api("/logout")).token(&b.token).json(&json!({}))).await?.ok(200, "empty")?;
    for gone in [&a, &b] {
        ctx.http.send(Request::get(Ctx::api("/account/whoami")).token(&gone.token)).await?.err(401, "unknown_token")?;
    }
    ctx.http.send(Request::post(Ctx::api("/logout")).token(&a.token)).await?.err(401, "unknown_token")?;
    ctx.http.send(Request::get(Ctx::api("/account/whoami")).token(&c.token)).await?.ok(200, "whoami_response")?;
    Ok(())
}

async fn logout_all_revokes_every_token(ctx: &Ctx) -> Result<()> {
    let a = ctx.user("la").await?;
    let b = ctx.login(&a.username, GOOD_PASSWORD).await?;
    ctx.http.send(Request::post(Ctx::api("/logout/all")).token(&a.token)).await?.ok(200, "empty")?;
    for gone in [&a, &b] {
        ctx.http.send(Request::get(Ctx::api("/account/whoami")).token(&gone.token)).await?.err(401, "unknown_token")?;
    }
    // The account itself lives on.
    let c = ctx.login(&a.username, GOOD_PASSWORD).await?;
    ctx.http.send(Request::get(Ctx::api("/account/whoami")).token(&c.token)).await?.ok(200, "whoami_response")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::valid_server_name;

    /// Python's `SequenceMatcher.quick_ratio`, to prove the fixtures above
    /// sit on the side of 0.7 they claim.
    fn quick_ratio(a: &str, b: &str) -> f64 {
        let mut counts = std::collections::HashMap::new();
        for c in b.chars() {
            *counts.entry(c).or_insert(0i32) += 1;
        }
        let mut m = 0;
        for c in a.chars() {
            let e = counts.entry(c).or_insert(0);
            if *e > 0 {
                *e -= 1;
                m += 1;
            }
        }
        2.0 * m as f64 / (a.chars().count() + b.chars().count()) as f64
    }

    #[test]
    fn similarity_fixtures_are_on_the_right_side() {
        // Worst case for the whole name: the 20-character prefix shares every character.
        let whole = "wombatly#7wombatly#7.wombatly";
        assert!(2.0 * 10.0 / (10.0 + whole.len() as f64) < 0.7);
        assert!(quick_ratio("wombatly#7", "wombatly") >= 0.7);
        assert!(quick_ratio("iloveyou", "iloveyouab3x9") >= 0.7);
        // The good password against a worst-case username of 32 characters.
        let pw = crate::ctx::GOOD_PASSWORD.to_ascii_lowercase();
        assert!(quick_ratio(&pw, "vq8zrpl2vq8zrpl2vq8zrpl2vq8zrpl2") < 0.7);
        assert!(quick_ratio("#vq!8%zr", "c0123456789") < 0.7);
    }

    #[test]
    fn server_names() {
        for ok in ["localhost:8008", "b.example", "127.0.0.1:40213", "[::1]:8008"] {
            assert!(valid_server_name(ok), "{ok}");
        }
        for bad in ["", "B.example", "b.example:", "b.example:123456", "a b"] {
            assert!(!valid_server_name(bad), "{bad}");
        }
    }
}

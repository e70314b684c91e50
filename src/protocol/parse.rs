//! Turning request bytes into protocol types, the same way for an HTTP body
//! and a WebSocket text frame: UTF-8, well-formed JSON, an object, then the
//! fields, each failure sorted into the spec's errcode. Also the syntax of
//! the `Authorization` header. Pure functions: no I/O, no services.

use serde::de::DeserializeOwned;

use super::ErrCode;

/// Why bytes could not become a protocol value: an errcode and a message
/// naming what was wrong. The service layer's error converts from it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub code: ErrCode,
    pub message: String,
}

impl Refusal {
    pub fn new(code: ErrCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

/// Parses a JSON body into a request type; `empty_ok` treats no body as `{}`.
pub fn parse_json<T: DeserializeOwned>(body: &[u8], empty_ok: bool) -> Result<T, Refusal> {
    let body: &[u8] = if empty_ok && body.iter().all(u8::is_ascii_whitespace) { b"{}" } else { body };
    parse_object(body)
}

/// Parses one JSON object into `T`, sorting failures into the spec's codes:
/// not JSON at all is `malformed_json` (even when serde would have stopped
/// earlier at an unknown field), anything else is `invalid_field` naming
/// the field.
pub fn parse_object<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Refusal> {
    check_object(bytes)?;
    parse_fields(bytes)
}

/// The checks of [`parse_object`] that come before the fields: UTF-8,
/// well-formed JSON, an object.
pub fn check_object(bytes: &[u8]) -> Result<(), Refusal> {
    std::str::from_utf8(bytes)
        .map_err(|e| Refusal::new(ErrCode::MalformedJson, format!("the body is not UTF-8: {e}")))?;
    serde_json::from_slice::<serde::de::IgnoredAny>(bytes).map_err(json_error)?;
    // serde's derived structs would also take `["ann", "pw"]`.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(Refusal::new(ErrCode::InvalidField, "the body must be a JSON object"));
    }
    Ok(())
}

/// Deserializes bytes that passed [`check_object`], naming the bad field on error.
pub fn parse_fields<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Refusal> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let msg = if path == "." { inner.to_string() } else { format!("{path}: {inner}") };
        Refusal::new(ErrCode::InvalidField, msg)
    })
}

/// serde_json's error, sorted into malformed JSON and wrong fields.
pub fn json_error(e: serde_json::Error) -> Refusal {
    use serde_json::error::Category;
    match e.classify() {
        Category::Data => Refusal::new(ErrCode::InvalidField, e.to_string()),
        Category::Syntax | Category::Eof | Category::Io => Refusal::new(ErrCode::MalformedJson, e.to_string()),
    }
}

/// The token of an `Authorization: Bearer <token>` header value. `value` is
/// `None` when the header is not visible ASCII text. The scheme is
/// case-insensitive and followed by one or more spaces (RFC 9110 §11.4);
/// another scheme (e.g. `Basic`), or the scheme without a token, is no
/// bearer token at all.
pub fn bearer_token(value: Option<&str>) -> Result<&str, Refusal> {
    let v = value.ok_or_else(|| Refusal::new(ErrCode::UnknownToken, "the Authorization header is not text"))?;
    let not_bearer = || Refusal::new(ErrCode::MissingToken, "use Authorization: Bearer <access_token>");
    let (scheme, token) = v.trim_start().split_once(' ').ok_or_else(not_bearer)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(not_bearer());
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Req {
        #[allow(dead_code)]
        room: String,
    }

    #[test]
    fn failures_are_sorted_into_errcodes() {
        assert_eq!(parse_object::<Req>(b"{").unwrap_err().code, ErrCode::MalformedJson);
        assert_eq!(parse_object::<Req>(b"[1]").unwrap_err().code, ErrCode::InvalidField);
        assert_eq!(parse_object::<Req>(b"\xff").unwrap_err().code, ErrCode::MalformedJson);
        let e = parse_object::<Req>(br#"{"room":5}"#).unwrap_err();
        assert_eq!(e.code, ErrCode::InvalidField);
        assert!(e.message.starts_with("room:"), "{}", e.message);
        assert!(parse_json::<Req>(b" ", true).is_err());
    }

    #[test]
    fn bearer_tokens() {
        assert_eq!(bearer_token(Some("Bearer abc")).unwrap(), "abc");
        assert_eq!(bearer_token(Some("bearer abc")).unwrap(), "abc");
        assert_eq!(bearer_token(Some("BEARER   abc")).unwrap(), "abc");
        assert_eq!(bearer_token(Some("Bearer  ")).unwrap_err().code, ErrCode::MissingToken);
        assert_eq!(bearer_token(Some("Basic abc")).unwrap_err().code, ErrCode::MissingToken);
        assert_eq!(bearer_token(Some("Bearerabc")).unwrap_err().code, ErrCode::MissingToken);
        assert_eq!(bearer_token(Some("Bearer")).unwrap_err().code, ErrCode::MissingToken);
        assert_eq!(bearer_token(None).unwrap_err().code, ErrCode::UnknownToken);
    }
}

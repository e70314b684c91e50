//! The demo page: plain HTML, CSS and JavaScript from `web/`, embedded in the
//! binary and served at `/` with a Content-Security-Policy that allows only
//! this origin (no inline script, nothing from other hosts).

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;

use super::Resp;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; \
                   base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `(path, file name, content type, bytes)` of every asset.
const ASSETS: &[(&str, &str, &str, &str)] = &[
    ("/", "index.html", "text/html; charset=utf-8", include_str!("../../web/index.html")),
    ("/index.html", "index.html", "text/html; charset=utf-8", include_str!("../../web/index.html")),
    ("/app.js", "app.js", "text/javascript; charset=utf-8", include_str!("../../web/app.js")),
    ("/style.css", "style.css", "text/css; charset=utf-8", include_str!("../../web/style.css")),
];

/// The asset served at `path`, if any.
pub fn asset_name(path: &str) -> Option<&'static str> {
    ASSETS.iter().find(|a| a.0 == path).map(|a| a.0)
}

pub fn serve(path: &str) -> Resp {
    let (_, _, ctype, body) = ASSETS.iter().find(|a| a.0 == path).expect("routed assets exist");
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

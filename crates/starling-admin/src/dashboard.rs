//! The dashboard: `GET /` (the page) and `GET /assets/{file}` (its script,
//! its style sheet and the vendored uPlot with its licence). This module owns
//! serving those files, which are compiled into the binary from `assets/`,
//! and the headers they go out with; nothing else.
//!
//! The page holds no data and no secret: in the browser it reads
//! `/api/v1` (with the operator's bearer token, if the API needs one) and
//! `/metrics` once a second, like any other API client, so it is served to
//! anyone who reaches the listener. Its Content-Security-Policy lets it load
//! and fetch from this listener only.

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::error::ApiError;
use crate::Ctx;

/// A file compiled into the binary.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
    etag: u64,
}

impl Asset {
    const fn new(name: &'static str, content_type: &'static str, body: &'static str) -> Asset {
        Asset {
            name,
            content_type,
            body,
            etag: fnv1a(body.as_bytes()),
        }
    }
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

const INDEX: Asset = Asset::new(
    "index.html",
    "text/html; charset=utf-8",
    include_str!("../assets/index.html"),
);

/// What `/assets/{file}` serves.
const ASSETS: &[Asset] = &[
    Asset::new("dashboard.js", JS, include_str!("../assets/dashboard.js")),
    Asset::new(
        "dashboard.css",
        CSS,
        include_str!("../assets/dashboard.css"),
    ),
    Asset::new(
        "uPlot.iife.min.js",
        JS,
        include_str!("../assets/uPlot.iife.min.js"),
    ),
    Asset::new(
        "uPlot.min.css",
        CSS,
        include_str!("../assets/uPlot.min.css"),
    ),
    Asset::new(
        "uPlot.LICENSE",
        TEXT,
        include_str!("../assets/uPlot.LICENSE"),
    ),
];

/// The page loads scripts, styles and data from this listener only, and is
/// not to be framed (its kick buttons act).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

pub(crate) fn routes() -> Router<Ctx> {
    Router::new()
        .route("/", get(index))
        .route("/assets/{*file}", get(asset))
}

async fn index(request: HeaderMap) -> Response {
    let mut response = serve(&INDEX, &request);
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

async fn asset(
    file: Result<Path<String>, axum::extract::rejection::PathRejection>,
    request: HeaderMap,
) -> Response {
    match file
        .ok()
        .and_then(|Path(file)| ASSETS.iter().find(|a| a.name == file))
    {
        Some(asset) => serve(asset, &request),
        None => ApiError::not_found("no such dashboard file").into_response(),
    }
}

/// The file, or 304 when the browser's copy (`If-None-Match`) is current.
/// Browsers revalidate on every load (`no-cache`), so a new binary's page is
/// never mixed with an old script.
fn serve(asset: &Asset, request: &HeaderMap) -> Response {
    let etag = format!("\"{:016x}\"", asset.etag);
    let current = request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == etag || tag == "*");
    let headers: [(HeaderName, HeaderValue); 4] = [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        ),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::ETAG,
            HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"0\"")),
        ),
    ];
    if current {
        (StatusCode::NOT_MODIFIED, headers).into_response()
    } else {
        (headers, asset.body).into_response()
    }
}

/// FNV-1a, 64 bits: the files' entity tags, computed at compile time.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_the_page_names_is_served() {
        for asset in ASSETS {
            assert!(
                INDEX.body.contains(&format!("\"assets/{}\"", asset.name)),
                "{} is served but the page does not name it",
                asset.name
            );
        }
        for part in INDEX.body.split("\"assets/").skip(1) {
            let name = part.split('"').next().unwrap_or_default();
            assert!(
                ASSETS.iter().any(|a| a.name == name),
                "the page names assets/{name}, which is not served"
            );
        }
    }

    #[test]
    fn entity_tags_differ_between_files() {
        let mut tags: Vec<u64> = ASSETS.iter().map(|a| a.etag).collect();
        tags.push(INDEX.etag);
        tags.sort_unstable();
        tags.dedup();
        assert_eq!(tags.len(), ASSETS.len() + 1);
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}

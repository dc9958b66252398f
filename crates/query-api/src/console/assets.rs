//! The console's files, compiled into the binary: `/` is the page, `/console/<file>` the rest.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

/// Only this origin's scripts, styles and connections; no framing.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// Every file under `/console/`, with its content type.
const FILES: &[(&str, &str, &str)] = &[
    ("app.js", "text/javascript; charset=utf-8", include_str!("assets/app.js")),
    ("api.js", "text/javascript; charset=utf-8", include_str!("assets/api.js")),
    ("pages.js", "text/javascript; charset=utf-8", include_str!("assets/pages.js")),
    ("style.css", "text/css; charset=utf-8", include_str!("assets/style.css")),
];

const INDEX: &str = include_str!("assets/index.html");

fn file(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // The files change only with the binary: revalidate, cheaply.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// The page every console address loads.
pub async fn index() -> Response {
    file("text/html; charset=utf-8", INDEX)
}

/// One of the console's files, or a JSON `404`.
pub async fn asset(axum::extract::Path(name): axum::extract::Path<String>) -> Response {
    match FILES.iter().find(|(file_name, ..)| *file_name == name) {
        Some((_, content_type, body)) => file(content_type, body),
        None => common::ApiError::not_found(format!("console file {name}")).into_response(),
    }
}

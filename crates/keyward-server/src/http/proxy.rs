//! `/proxy/{service}/{path}`: hands the request to the data plane and streams its answer.
//! Keyward's own refusals are the API's JSON errors; upstream answers pass through as sent.
//! Served outside axum's router (see `super::dispatch`).

use std::net::SocketAddr;

use axum::http::{Request, Response};
use axum::response::IntoResponse;
use http_body_util::BodyExt;
use keyward_proxy::{Inbound, ProxyBody};

use super::error::ApiError;
use keyward_app::App;

/// Where the proxy's paths start.
pub const PREFIX: &str = "/proxy/";

pub async fn proxy(
    app: &App,
    peer: SocketAddr,
    lane: usize,
    request: Request<hyper::body::Incoming>,
) -> Response<ProxyBody> {
    let (parts, body) = request.into_parts();
    let Ok(source) = super::client_ip::resolve(peer.ip(), &parts.headers, &app.trusted_proxies)
    else {
        return ApiError::from(keyward_core::Error::new(
            keyward_core::ErrorKind::Malformed,
            "invalid_forwarded_for",
            "X-Forwarded-For is not a comma-separated list of IP addresses",
        ))
        .into_response()
        .map(|body| body.map_err(Into::into).boxed_unsync());
    };
    // The raw, still percent-encoded path: the data plane checks it for traversal itself.
    let rest = parts.uri.path().strip_prefix(PREFIX).unwrap_or_default();
    let (service, path) = match rest.split_once('/') {
        Some((service, path)) => (service.to_owned(), format!("/{path}")),
        None => (rest.to_owned(), "/".to_owned()),
    };
    let inbound = Inbound {
        method: parts.method,
        service,
        path,
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers,
        body: http_body_util::BodyDataStream::new(body),
        source,
        lane,
    };
    match app.proxy.forward(inbound).await {
        Ok(response) => response,
        Err(e) => ApiError::from(e)
            .into_response()
            .map(|body| body.map_err(Into::into).boxed_unsync()),
    }
}

//! `/proxy/{service}/{path}`: hands the request to the data plane and streams its answer.
//! Keyward's own refusals are the API's JSON errors; upstream answers pass through as sent.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use keyward_proxy::Inbound;

use super::error::ApiError;
use crate::app::App;

pub async fn proxy(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    // The raw, still percent-encoded path: the data plane checks it for traversal itself.
    let rest = parts.uri.path().strip_prefix("/proxy/").unwrap_or_default();
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
        body: body.into_data_stream(),
        source: peer.ip(),
    };
    match app.proxy.forward(inbound).await {
        Ok(response) => response.map(axum::body::Body::new),
        Err(e) => ApiError::from(e).into_response(),
    }
}

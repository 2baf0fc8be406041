//! Our own stylesheet and script, served from the binary under names that change with
//! their content, so browsers may cache them forever.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

const CSS: &str = include_str!("../../static/app.css");
const JS: &str = include_str!("../../static/app.js");

/// Static files under names that change with their content, so they can be cached forever.
pub(super) struct Assets {
    pub(super) css: String,
    pub(super) js: String,
}

pub(super) static ASSETS: LazyLock<Assets> = LazyLock::new(|| {
    let name = |stem: &str, ext: &str, content: &str| {
        let hash = keyward_crypto::token::secret_hash(content);
        format!("{stem}.{}.{ext}", hex::encode(&hash[..6]))
    };
    Assets {
        css: name("app", "css", CSS),
        js: name("app", "js", JS),
    }
});

pub(crate) async fn asset(Path(file): Path<String>) -> Response {
    let (body, content_type) = if file == ASSETS.css {
        (CSS, "text/css; charset=utf-8")
    } else if file == ASSETS.js {
        (JS, "text/javascript; charset=utf-8")
    } else {
        return (StatusCode::NOT_FOUND, "no such file").into_response();
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        body,
    )
        .into_response()
}

//! The web root's static files (the browser demo): `tower_http`'s `ServeDir`, behind a check
//! that what a request names is a visible file inside the root. `ServeDir` alone follows
//! symlinks wherever they lead and serves hidden files (`.env`, `.git/`).
//!
//! The check resolves the path as the file system does (symlinks included) before the file
//! is served; someone who can change the web root's files between the two could still slip
//! a symlink in — the web root is the operator's, not the clients'.

use std::convert::Infallible;
use std::path::{Component, Path, PathBuf};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use percent_encoding::percent_decode_str;
use tower::ServiceExt;
use tower_http::services::ServeDir;

#[derive(Debug, Clone)]
pub(crate) struct WebRoot {
    /// The root with every symlink resolved.
    root: PathBuf,
    files: ServeDir,
}

impl WebRoot {
    pub(crate) fn new(root: &Path) -> WebRoot {
        let root = root.canonicalize().unwrap_or_else(|error| {
            // Served as it is: every request gets 404 until the directory exists.
            tracing::warn!(root = %root.display(), %error, "the web root cannot be resolved");
            root.to_path_buf()
        });
        WebRoot { files: ServeDir::new(&root), root }
    }
}

/// Answers a request for a static file: 404 unless it names a visible file inside the root.
pub(crate) async fn serve(State(web): State<WebRoot>, request: Request) -> Response {
    let Some(candidate) = candidate(&web.root, request.uri().path()) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let root = web.root.clone();
    let visible = tokio::task::spawn_blocking(move || visible_inside(&root, &candidate));
    if !visible.await.unwrap_or(false) {
        return StatusCode::NOT_FOUND.into_response();
    }
    let response: Result<_, Infallible> = web.files.oneshot(request).await;
    match response {
        Ok(response) => response.map(Body::new),
        Err(never) => match never {},
    }
}

/// The path a request names under `root`, decoded as `ServeDir` decodes it; `None` if a
/// segment is hidden (this covers `..`) or not a plain name.
fn candidate(root: &Path, path: &str) -> Option<PathBuf> {
    let decoded = percent_decode_str(path).decode_utf8().ok()?;
    let mut candidate = root.to_path_buf();
    for segment in decoded.split('/').filter(|s| !s.is_empty()) {
        if segment.starts_with('.') || segment.contains(['\\', '\0']) {
            return None;
        }
        candidate.push(segment);
    }
    Some(candidate)
}

/// Whether `candidate`, with every symlink resolved, exists inside `root` with no hidden
/// component; for a directory, whether its `index.html` (what `ServeDir` serves) is.
fn visible_inside(root: &Path, candidate: &Path) -> bool {
    let Ok(resolved) = candidate.canonicalize() else { return false };
    let Ok(relative) = resolved.strip_prefix(root) else { return false };
    let hidden = relative.components().any(|component| match component {
        Component::Normal(name) => name.as_encoded_bytes().starts_with(b"."),
        _ => true,
    });
    if hidden {
        return false;
    }
    if resolved.is_dir() {
        // The index of a directory is a file, or nothing is served.
        let index = resolved.join("index.html");
        return index.is_file() && visible_inside(root, &index);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_and_traversing_segments_are_refused_however_spelled() {
        let root = Path::new("/srv/web");
        assert_eq!(candidate(root, "/app.js"), Some(root.join("app.js")));
        assert_eq!(candidate(root, "/"), Some(root.to_path_buf()));
        for path in ["/.env", "/a/.git/config", "/%2eenv", "/..", "/a/%2E%2E/b", "/a%5cb"] {
            assert_eq!(candidate(root, path), None, "{path}");
        }
    }
}

//! The demo room at `/demo`: a streamer page and a viewer page, built on the TypeScript SDK, so
//! anyone can watch giftd work in a browser with nothing but `giftd serve`.
//!
//! The pages and their one script are compiled into the binary (`clients/demo/assets/`; the
//! script is a bundle of `clients/demo/src/` and the SDK, committed so that `cargo build` needs
//! no npm, and checked against its sources by `npm run check-bundle` in CI).
//!
//! For development the pages can also mint tokens and top up wallets (`POST /demo/dev/token`,
//! `POST /demo/dev/topup`). These are off unless `demo.dev_tools` is set, answer only peers on a
//! loopback address, and need the admin token, because together they print money and identities.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::{to_bytes, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::app::App;
use crate::auth::Role;
use crate::bounds::ADMIN_BODY_BYTES_MAX;
use crate::error::Error;
use crate::http::{check_admin, error_response, top_up};

const INDEX_HTML: &str = include_str!("../clients/demo/assets/index.html");
const STREAMER_HTML: &str = include_str!("../clients/demo/assets/streamer.html");
const VIEWER_HTML: &str = include_str!("../clients/demo/assets/viewer.html");
const DEMO_CSS: &str = include_str!("../clients/demo/assets/demo.css");
/// Built from `clients/demo/src/` by `npm run build` in `clients/demo`.
const DEMO_JS: &str = include_str!("../clients/demo/assets/demo.js");

/// The pages only load their own script and style and talk to this origin's `/ws` and `/demo`.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'";

/// The demo's routes, to merge into the public router.
pub fn router<S: Clone + Send + Sync + 'static>(app: Arc<App>) -> Router<S> {
    Router::new()
        .route("/demo", get(|| async { asset("text/html", INDEX_HTML) }))
        .route("/demo/", get(|| async { asset("text/html", INDEX_HTML) }))
        .route(
            "/demo/streamer",
            get(|| async { asset("text/html", STREAMER_HTML) }),
        )
        .route(
            "/demo/viewer",
            get(|| async { asset("text/html", VIEWER_HTML) }),
        )
        .route(
            "/demo/demo.css",
            get(|| async { asset("text/css", DEMO_CSS) }),
        )
        .route(
            "/demo/demo.js",
            get(|| async { asset("text/javascript", DEMO_JS) }),
        )
        .route("/demo/dev/token", post(dev_token))
        .route("/demo/dev/topup", post(dev_topup))
        .with_state(app)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut res = body.into_response();
    let h = res.headers_mut();
    let with_charset = format!("{content_type}; charset=utf-8");
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&with_charset).expect("a valid content type"),
    );
    // The assets change with the binary, so browsers must revalidate rather than keep old ones.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    res
}

/// A development request, once it passed every guard: its headers and body.
struct DevRequest {
    headers: HeaderMap,
    body: Bytes,
}

/// The guards of every development tool, in order: switched on, from a loopback peer, with the
/// admin token, with a body within the admin bound.
async fn dev_request(app: &App, req: Request) -> Result<DevRequest, Error> {
    if !app.config.demo.dev_tools {
        return Err(Error::DevToolsDisabled);
    }
    // Set by the accept loop on every connection; absent (an in-process caller) is not loopback.
    let loopback = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .is_some_and(|ConnectInfo(peer)| peer.ip().to_canonical().is_loopback());
    if !loopback {
        return Err(Error::LoopbackOnly);
    }
    check_admin(app, req.headers())?;
    let (parts, body) = req.into_parts();
    let body = to_bytes(body, ADMIN_BODY_BYTES_MAX)
        .await
        .map_err(|_| Error::MessageTooLarge {
            limit_bytes: ADMIN_BODY_BYTES_MAX,
        })?;
    Ok(DevRequest {
        headers: parts.headers,
        body,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    user: String,
    role: Role,
}

/// `POST /demo/dev/token` `{"user","role"}` → `{"token","user","role"}`: a client token signed
/// like `giftd token` does, valid for `auth.token_ttl_secs`.
async fn dev_token(State(app): State<Arc<App>>, req: Request) -> Response {
    let dev = match dev_request(&app, req).await {
        Ok(dev) => dev,
        Err(e) => return error_response(&e),
    };
    let parsed: TokenBody = match serde_json::from_slice(&dev.body) {
        Ok(b) => b,
        Err(e) if e.is_syntax() || e.is_eof() => {
            return error_response(&Error::BadJson(e.to_string()))
        }
        Err(e) => return error_response(&Error::InvalidMessage(e.to_string())),
    };
    let ttl_secs = app.config.auth.token_ttl_secs;
    match app.auth.mint(&parsed.user, parsed.role, None, ttl_secs) {
        Ok(token) => Json(json!({
            "token": token,
            "user": parsed.user,
            "role": parsed.role,
        }))
        .into_response(),
        // A bad user id: the request is wrong, not a token.
        Err(Error::InvalidToken(why)) => error_response(&Error::InvalidMessage(why)),
        Err(e) => error_response(&e),
    }
}

/// `POST /demo/dev/topup`: the admin top-up (`POST /admin/topup`, same body and answer) for the
/// demo pages, which cannot reach the admin listener.
async fn dev_topup(State(app): State<Arc<App>>, req: Request) -> Response {
    match dev_request(&app, req).await {
        Ok(dev) => top_up(State(app), dev.headers, Ok(dev.body)).await,
        Err(e) => error_response(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::testing::app;
    use crate::config::DEV_ADMIN_TOKEN;
    use axum::body::Body;
    use tower::ServiceExt;

    async fn call(
        app: &Arc<App>,
        path: &str,
        peer: Option<&str>,
        admin: bool,
        body: &str,
    ) -> (u16, serde_json::Value) {
        let mut req = Request::post(path)
            .body(Body::from(body.to_owned()))
            .unwrap();
        if let Some(peer) = peer {
            let peer: SocketAddr = peer.parse().unwrap();
            req.extensions_mut().insert(ConnectInfo(peer));
        }
        if admin {
            req.headers_mut().insert(
                header::AUTHORIZATION,
                format!("Bearer {DEV_ADMIN_TOKEN}").parse().unwrap(),
            );
        }
        let res = router::<()>(app.clone()).oneshot(req).await.unwrap();
        let status = res.status().as_u16();
        let bytes = to_bytes(res.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    const TOPUP: &str = r#"{"user":"bob","channel":"ios","coins":500,"purchase_id":"p1"}"#;

    #[tokio::test]
    async fn pages_and_script_are_served_with_their_types() {
        let app = app(|_| {});
        for (path, ty, needle) in [
            ("/demo", "text/html", "/demo/viewer"),
            ("/demo/streamer", "text/html", "demo.js"),
            ("/demo/viewer", "text/html", "demo.js"),
            ("/demo/demo.js", "text/javascript", "GiftdClient"),
            ("/demo/demo.css", "text/css", "body"),
        ] {
            let req = Request::get(path).body(Body::empty()).unwrap();
            let res = router::<()>(app.app.clone()).oneshot(req).await.unwrap();
            assert_eq!(res.status(), 200, "{path}");
            let content_type = res.headers()[header::CONTENT_TYPE].to_str().unwrap();
            assert!(content_type.starts_with(ty), "{path}: {content_type}");
            let text = to_bytes(res.into_body(), 1 << 22).await.unwrap();
            let text = String::from_utf8(text.to_vec()).unwrap();
            assert!(text.contains(needle), "{path} lacks {needle}");
        }
    }

    #[tokio::test]
    async fn dev_tools_are_refused_while_off() {
        let app = app(|_| {});
        for path in ["/demo/dev/token", "/demo/dev/topup"] {
            let (status, body) = call(&app, path, Some("127.0.0.1:5000"), true, TOPUP).await;
            assert_eq!((status, &body["code"]), (403, &json!(12007)), "{path}");
            assert_eq!(body["reason"], "dev_tools_disabled");
        }
    }

    #[tokio::test]
    async fn dev_tools_answer_only_loopback_peers() {
        let app = app(|c| c.demo.dev_tools = true);
        for peer in [Some("192.0.2.7:5000"), Some("[2001:db8::1]:5000"), None] {
            for path in ["/demo/dev/token", "/demo/dev/topup"] {
                let (status, body) = call(&app, path, peer, true, TOPUP).await;
                assert_eq!(
                    (status, &body["code"]),
                    (403, &json!(12008)),
                    "{path} {peer:?}"
                );
                assert_eq!(body["reason"], "loopback_only");
            }
        }
        // Nothing was topped up by the refused calls.
        assert_eq!(app.ledger.wallet("bob").await.unwrap().total_coins(), 0);
    }

    #[tokio::test]
    async fn dev_tools_need_the_admin_token() {
        let app = app(|c| c.demo.dev_tools = true);
        for path in ["/demo/dev/token", "/demo/dev/topup"] {
            let (status, body) = call(&app, path, Some("127.0.0.1:5000"), false, TOPUP).await;
            assert_eq!((status, &body["code"]), (401, &json!(12001)), "{path}");
        }
    }

    #[tokio::test]
    async fn dev_tools_mint_tokens_and_top_up_on_loopback() {
        let app = app(|c| c.demo.dev_tools = true);
        let (status, body) = call(
            &app,
            "/demo/dev/token",
            Some("[::1]:5000"),
            true,
            r#"{"user":"bob","role":"viewer"}"#,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let identity = app.auth.verify(body["token"].as_str().unwrap()).unwrap();
        assert_eq!(
            (identity.user.as_str(), identity.role),
            ("bob", Role::Viewer)
        );

        let (status, body) = call(&app, "/demo/dev/topup", Some("127.0.0.1:1"), true, TOPUP).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["balance_coins"], 500);
        assert_eq!(app.ledger.wallet("bob").await.unwrap().total_coins(), 500);
    }

    #[tokio::test]
    async fn dev_token_bad_input_gets_a_clear_error() {
        let app = app(|c| c.demo.dev_tools = true);
        let peer = Some("127.0.0.1:1");
        for (body, code) in [
            ("{", 11001),
            (r#"{"user":"bob","role":"admin"}"#, 11003),
            (r#"{"user":"b o b","role":"viewer"}"#, 11003),
            (r#"{"user":"bob","role":"viewer","x":1}"#, 11003),
        ] {
            let (status, reply) = call(&app, "/demo/dev/token", peer, true, body).await;
            assert_eq!((status, &reply["code"]), (400, &json!(code)), "{body}");
        }
        let big = format!(r#"{{"user":"{}","role":"viewer"}}"#, "a".repeat(5000));
        let (status, reply) = call(&app, "/demo/dev/token", peer, true, &big).await;
        assert_eq!((status, &reply["code"]), (413, &json!(11007)));
    }
}

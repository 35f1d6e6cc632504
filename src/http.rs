//! The HTTP surface, as two routers: the public one (the WebSocket upgrade, room listing, the
//! sticker catalog, `docs/openapi.yaml` at `/openapi.yaml`, and the demo pages of `demo.rs`) and
//! the admin one (health, readiness, metrics and the admin API), served on
//! separate listeners by `server.rs`.
//!
//! The upgrade is done by hand on hyper's connection so that the socket goes straight into
//! giftd's WebSocket layer (`websocket.rs`) with giftd's own limits, and so the handshake can
//! refuse a foreign `Origin` or a bad token with a plain HTTP status before any WebSocket exists.
//! HTTP errors use the same JSON shape and codes as WebSocket errors.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::FutureExt;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::app::App;
use crate::auth::check_user_id;
use crate::bounds::{ADMIN_BODY_BYTES_MAX, SPEND_CAP_COINS_MAX, TOPUP_COINS_MAX};

use crate::config::ServerConfig;
use crate::connection;
use crate::error::Error;
use crate::gift::Channel;
use crate::ledger::{RefundReason, RefundRequest, TopUpRequest, UserLimits};
use crate::metrics::OutKind;
use crate::protocol::server::{encode, ServerMessage};
use crate::server::Tracker;
use crate::socket::{ClientSocket, ResetOnDrop};
use crate::websocket::{self, FrameWriter, WsReader, WsSettings};

/// The TCP connection's slot under the accept limit. An upgraded WebSocket takes it over from
/// the HTTP connection, so the slot is held until the WebSocket closes.
#[derive(Clone, Default)]
pub struct ConnSlot(pub Arc<Mutex<Option<OwnedSemaphorePermit>>>);

/// The public endpoints: client WebSockets, the room list and the sticker catalog.
pub fn public_router(app: Arc<App>, tracker: Tracker) -> Router {
    let mut router = Router::new()
        .route("/ws", get(ws_upgrade))
        .route("/rooms", get(rooms))
        .route("/stickers", get(stickers))
        .route("/openapi.yaml", get(openapi))
        .merge(crate::demo::router(app.clone()));
    if app.config.server.echo_endpoint {
        router = router.route("/echo", get(echo_upgrade));
    }
    with_error_fallbacks(router).with_state((app, tracker))
}

/// The operator endpoints: liveness, readiness, metrics and the admin API.
pub fn admin_router(app: Arc<App>) -> Router {
    let router = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/admin/topup", post(top_up))
        .route("/admin/refund", post(refund))
        .route("/admin/wallets/{user}", get(wallet))
        .route("/admin/users/{user}/limits", get(limits).put(set_limits));
    with_error_fallbacks(router).with_state(app)
}

/// Unknown paths and methods get the wire error body too, like every other refusal.
fn with_error_fallbacks<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    router
        .fallback(|| async { error_response(&Error::NoSuchEndpoint) })
        .method_not_allowed_fallback(|| async { error_response(&Error::MethodNotAllowed) })
}

type AppState = State<(Arc<App>, Tracker)>;
type AdminState = State<Arc<App>>;

/// An error as an HTTP response: its status from [`Error::wire`] and the wire error body.
pub(crate) fn error_response(e: &Error) -> Response {
    let status = StatusCode::from_u16(e.http_status()).expect("wire statuses are valid");
    (status, Json(e.body())).into_response()
}

#[derive(Deserialize)]
struct WsQuery {
    token: Option<String>,
}

/// Checks the RFC 6455 upgrade headers and returns the client's key.
fn upgrade_key(headers: &HeaderMap) -> Result<&HeaderValue, &'static str> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token(header::CONNECTION, "upgrade") || !has_token(header::UPGRADE, "websocket") {
        return Err("expected a WebSocket upgrade");
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        return Err("Sec-WebSocket-Version must be 13");
    }
    headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or("missing Sec-WebSocket-Key")
}

/// The slots a WebSocket holds until it closes: its TCP connection's under the accept limit
/// (`ConnSlot`; absent for in-process callers) and its own under `server.connections_max`
/// (absent for the echo endpoint). Each permit is forgotten and given back by this guard, which
/// keeps two pointers where the two permits were 32 bytes in every connection's task.
struct Slots {
    tcp: Option<Arc<Semaphore>>,
    ws: Option<Arc<Semaphore>>,
}

impl Slots {
    fn new(tcp: Option<OwnedSemaphorePermit>, ws: Option<OwnedSemaphorePermit>) -> Slots {
        Slots {
            tcp: tcp.map(Slots::hold),
            ws: ws.map(Slots::hold),
        }
    }

    /// Takes over a permit of one slot, as every limit here acquires.
    fn hold(permit: OwnedSemaphorePermit) -> Arc<Semaphore> {
        assert_eq!(permit.num_permits(), 1, "a connection holds one slot");
        let semaphore = permit.semaphore().clone();
        permit.forget();
        semaphore
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        for semaphore in [&self.tcp, &self.ws].into_iter().flatten() {
            semaphore.add_permits(1);
        }
    }
}

/// Takes the socket from hyper once the 101 response is out and runs `serve` on it as a
/// WebSocket (`websocket.rs`), holding the connection's slots (`ws_slot`, and the TCP
/// connection's) until it ends.
fn upgrade<F, Fut>(
    mut req: Request,
    tracker: &Tracker,
    server: &ServerConfig,
    ws_slot: Option<OwnedSemaphorePermit>,
    serve: F,
) where
    F: FnOnce(WsReader, FrameWriter) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let slot = req
        .extensions()
        .get::<ConnSlot>()
        .and_then(|s| s.0.lock().ok()?.take());
    let on_upgrade = hyper::upgrade::on(&mut req);
    let settings = WsSettings::new(server);
    // Two tasks: this one waits for the upgrade, then hands the connection to a task of its own
    // that holds its slots and the connection's future only. A task's future keeps room for
    // everything its code ever held, so one task for both would carry the upgrade's leftovers
    // (the WebSocket settings, the upgrade future, the `serve` closure) for the connection's life.
    let connections = tracker.clone();
    tracker.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => return tracing::debug!(error = %e, "upgrade failed"),
        };
        // The public listener serves every connection over a `ClientSocket` (`server.rs`);
        // hyper gives it back with whatever it read past the upgrade request.
        let Ok(parts) = upgraded.downcast::<TokioIo<ClientSocket>>() else {
            return tracing::error!("an upgraded connection was not a client socket");
        };
        let socket = parts.io.into_inner();
        let (reader, writer) = websocket::open(socket, parts.read_buf, settings);
        // `map` rather than an `async` block: a block would keep both the future it
        // captured and the one it awaits.
        let slots = Slots::new(slot, ws_slot);
        let connection = serve(reader, writer).map(move |()| drop(slots));
        connections.spawn(connection);
    });
}

fn switching_protocols(key: &HeaderValue) -> Response {
    let accept = derive_accept_key(key.as_bytes());
    let mut res = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = res.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is a valid header"),
    );
    res
}

fn bad_upgrade(msg: &str) -> Response {
    let e = Error::InvalidMessage(msg.to_owned());
    error_response(&e)
}

fn origin_allowed(app: &App, headers: &HeaderMap) -> bool {
    let allowed = &app.config.server.origins_allowed;
    if allowed.is_empty() {
        return true;
    }
    // Browsers always send Origin; a client without one is not a browser page and is not the
    // cross-site threat the allow-list exists for.
    match headers.get(header::ORIGIN).map(|o| o.to_str()) {
        None => true,
        Some(Ok(origin)) => allowed.iter().any(|a| a == origin),
        Some(Err(_)) => false,
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

async fn ws_upgrade(
    State((app, tracker)): AppState,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    query: Result<Query<WsQuery>, QueryRejection>,
    req: Request,
) -> Response {
    // A query string that does not parse (a repeated `token`, bad percent-encoding) is a bad
    // request with the wire error body, not axum's plain-text rejection.
    let query = match query {
        Ok(Query(query)) => query,
        Err(e) => return bad_upgrade(&format!("bad query string: {}", e.body_text())),
    };
    let key = match upgrade_key(req.headers()) {
        Ok(key) => key.clone(),
        Err(msg) => return bad_upgrade(msg),
    };
    if !origin_allowed(&app, req.headers()) {
        app.metrics
            .connections_rejected
            .with_label_values(&["origin"])
            .inc();
        return error_response(&Error::OriginNotAllowed);
    }
    if app.shutdown.is_cancelled() {
        return error_response(&Error::ShuttingDown);
    }
    let Ok(ws_permit) = app.ws_permits.clone().try_acquire_owned() else {
        app.metrics
            .connections_rejected
            .with_label_values(&["connections_max"])
            .inc();
        return error_response(&Error::TooManyConnections);
    };
    let token = bearer(req.headers()).map(str::to_owned).or(query.token);
    let identity = match token.map(|t| app.auth.verify(&t)).transpose() {
        // Boxed: the upgrade task keeps its captures for the connection's whole life.
        Ok(identity) => identity.map(Box::new),
        Err(e) => {
            app.metrics
                .connections_rejected
                .with_label_values(&["auth"])
                .inc();
            return error_response(&e);
        }
    };
    let settings = app.clone();
    // Present on every socket the public listener accepted; absent only for in-process callers.
    let reset = req
        .extensions()
        .get::<ResetOnDrop>()
        .cloned()
        .unwrap_or_default();
    upgrade(
        req,
        &tracker,
        &settings.config.server,
        Some(ws_permit),
        move |reader, writer| connection::serve(reader, writer, app, identity, peer, reset),
    );
    switching_protocols(&key)
}

async fn echo_upgrade(State((app, tracker)): AppState, req: Request) -> Response {
    let key = match upgrade_key(req.headers()) {
        Ok(key) => key.clone(),
        Err(msg) => return bad_upgrade(msg),
    };
    upgrade(req, &tracker, &app.config.server, None, connection::echo);
    switching_protocols(&key)
}

/// The live rooms: this node's, or in a cluster every node's, as their owners last renewed
/// their leases (so viewer counts may be a lease renewal old).
async fn rooms(State((app, _)): AppState) -> Response {
    let rooms = match &app.cluster {
        None => app.rooms.summaries(),
        Some(cluster) => match cluster.rooms().await {
            Ok(rooms) => rooms,
            Err(e) => return error_response(&e),
        },
    };
    Json(json!({ "rooms": rooms })).into_response()
}

async fn stickers(State((app, _)): AppState) -> Response {
    Json(json!({ "stickers": app.catalog.all() })).into_response()
}

/// The description of every HTTP endpoint (`docs/openapi.yaml`), served as is.
const OPENAPI_YAML: &str = include_str!("../docs/openapi.yaml");

async fn openapi() -> Response {
    let mut res = OPENAPI_YAML.into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/yaml"),
    );
    res
}

async fn readyz(State(app): AdminState) -> Response {
    // While unready, each readiness check probes storage, so the node comes back by itself once
    // storage recovers.
    if !app.ledger.is_ready() && !app.shutdown.is_cancelled() {
        let _ = app.ledger.probe().await;
    }
    let ledger = app.ledger.is_ready();
    app.metrics.ledger_ready.set(ledger as i64);
    let disk_reserve_kept = app.disk_reserve.is_kept();
    let ready = app.is_ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "ready": ready,
        "ledger": ledger,
        "disk_reserve": disk_reserve_kept,
        "shutting_down": app.shutdown.is_cancelled(),
    });
    (status, Json(body)).into_response()
}

async fn metrics(State(app): AdminState) -> Response {
    app.metrics.ledger_ready.set(app.ledger.is_ready() as i64);
    let mut res = app.metrics.render().into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    res
}

/// Compares in time independent of where the strings differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(crate) fn check_admin(app: &App, headers: &HeaderMap) -> Result<(), Error> {
    match bearer(headers) {
        Some(t) if constant_time_eq(t.as_bytes(), app.config.auth.admin_token.as_bytes()) => Ok(()),
        _ => Err(Error::InvalidToken(
            "admin endpoints need `Authorization: Bearer <admin_token>`".into(),
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopUpBody {
    user: String,
    channel: String,
    /// Any JSON value, so that a negative, fractional or non-numeric amount gets `invalid_amount`
    /// rather than a generic shape error.
    coins: serde_json::Value,
    purchase_id: String,
}

/// A top-up amount: a whole number of coins from 1 to [`TOPUP_COINS_MAX`].
fn topup_coins(value: &serde_json::Value) -> Result<u64, Error> {
    // JSON has one number type: `100.0` is the same whole number as `100` (and exact below the
    // bound, far under 2^53).
    let whole = value.as_u64().or_else(|| {
        value
            .as_f64()
            .filter(|f| f.fract() == 0.0 && (1.0..=TOPUP_COINS_MAX as f64).contains(f))
            .map(|f| f as u64)
    });
    match whole {
        Some(coins) if (1..=TOPUP_COINS_MAX).contains(&coins) => Ok(coins),
        _ => Err(Error::InvalidAmount(format!(
            "coins must be a whole number from 1 to {TOPUP_COINS_MAX}, got {value}"
        ))),
    }
}

pub(crate) async fn top_up(
    State(app): AdminState,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Err(e) = check_admin(&app, &headers) {
        return error_response(&e);
    }
    let parsed: TopUpBody = match admin_body(body) {
        Ok(b) => b,
        Err(e) => return error_response(&e),
    };
    if let Err(e) = check_user_id(&parsed.user) {
        return error_response(&Error::InvalidMessage(e.client_message()));
    }
    let Some(channel) = Channel::parse(&parsed.channel) else {
        return error_response(&Error::InvalidMessage(
            "channel must be ios, android or web".into(),
        ));
    };
    let coins = match topup_coins(&parsed.coins) {
        Ok(coins) => coins,
        Err(e) => return error_response(&e),
    };
    let req = TopUpRequest {
        user: parsed.user,
        channel,
        coins,
        purchase_id: parsed.purchase_id,
    };
    match app.ledger.top_up(req).await {
        Ok(receipt) => {
            if !receipt.replayed {
                app.metrics
                    .topup_coins
                    .with_label_values(&[channel.as_str()])
                    .inc_by(receipt.coins);
                if receipt.repaid_coins > 0 {
                    app.metrics
                        .debt_repaid_coins
                        .with_label_values(&[channel.as_str()])
                        .inc_by(receipt.repaid_coins);
                }
            }
            Json(receipt).into_response()
        }
        Err(e) => error_response(&e),
    }
}

/// Parses an admin JSON body: `bad_json` for what is not JSON, `invalid_message` for the wrong
/// shape, `message_too_large` beyond [`ADMIN_BODY_BYTES_MAX`].
fn admin_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, Error> {
    // Bodies past axum's own buffer limit are refused like those past ours.
    let body = match body {
        Ok(body) => body,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return Err(Error::MessageTooLarge {
                limit_bytes: ADMIN_BODY_BYTES_MAX,
            })
        }
        Err(e) => return Err(Error::InvalidMessage(e.body_text())),
    };
    if body.len() > ADMIN_BODY_BYTES_MAX {
        return Err(Error::MessageTooLarge {
            limit_bytes: ADMIN_BODY_BYTES_MAX,
        });
    }
    serde_json::from_slice(&body).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            Error::BadJson(e.to_string())
        } else {
            Error::InvalidMessage(e.to_string())
        }
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsBody {
    /// The user's own cap per window: a whole number of coins, or null (or absent) for the
    /// configured default. Any JSON value, so a bad amount gets `invalid_amount`.
    #[serde(default)]
    window_coins_max: serde_json::Value,
    minor: bool,
}

/// A cap: null, or a whole number of coins from 0 to [`SPEND_CAP_COINS_MAX`]. JSON has one
/// number type, so `250.0` is the same whole number as `250` (exact far beyond the bound).
fn cap_coins(value: &serde_json::Value) -> Result<Option<u64>, Error> {
    if value.is_null() {
        return Ok(None);
    }
    let whole = value.as_u64().or_else(|| {
        value
            .as_f64()
            .filter(|f| f.fract() == 0.0 && (0.0..=SPEND_CAP_COINS_MAX as f64).contains(f))
            .map(|f| f as u64)
    });
    match whole {
        Some(coins) if coins <= SPEND_CAP_COINS_MAX => Ok(Some(coins)),
        _ => Err(Error::InvalidAmount(format!(
            "window_coins_max must be null or a whole number from 0 to {SPEND_CAP_COINS_MAX}, got {value}"
        ))),
    }
}

/// The user's limits and spending, as `GET` and `PUT /admin/users/{user}/limits` answer.
async fn spending_response(app: &App, user: &str) -> Response {
    match app.ledger.spending(user, app.cap_policy()).await {
        Ok(spending) => {
            let mut body = serde_json::to_value(spending).expect("spending serializes");
            body["user"] = user.into();
            Json(body).into_response()
        }
        Err(e) => error_response(&e),
    }
}

/// The user id of an admin path; a segment that is not UTF-8 once decoded is a bad user id like
/// any other.
fn path_user(user: Result<Path<String>, PathRejection>) -> Result<String, Error> {
    let user = user.map(|Path(user)| user).unwrap_or_default();
    match check_user_id(&user) {
        Ok(()) => Ok(user),
        Err(_) => Err(Error::InvalidMessage("bad user id".into())),
    }
}

async fn limits(
    State(app): AdminState,
    headers: HeaderMap,
    user: Result<Path<String>, PathRejection>,
) -> Response {
    if let Err(e) = check_admin(&app, &headers) {
        return error_response(&e);
    }
    let user = match path_user(user) {
        Ok(user) => user,
        Err(e) => return error_response(&e),
    };
    spending_response(&app, &user).await
}

async fn set_limits(
    State(app): AdminState,
    headers: HeaderMap,
    user: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Err(e) = check_admin(&app, &headers) {
        return error_response(&e);
    }
    let user = match path_user(user) {
        Ok(user) => user,
        Err(e) => return error_response(&e),
    };
    let parsed: LimitsBody = match admin_body(body) {
        Ok(b) => b,
        Err(e) => return error_response(&e),
    };
    let limits = match cap_coins(&parsed.window_coins_max) {
        Ok(cap) => UserLimits {
            window_coins_max: cap,
            minor: parsed.minor,
        },
        Err(e) => return error_response(&e),
    };
    if let Err(e) = app.ledger.set_limits(&user, limits).await {
        return error_response(&e);
    }
    tracing::info!(user, ?limits, "spending limits set");
    spending_response(&app, &user).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefundBody {
    purchase_id: String,
    /// `refund` or `chargeback`.
    reason: String,
}

/// Reverses a top-up (`POST /admin/refund`) and tells the user's connections on every node.
async fn refund(
    State(app): AdminState,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Err(e) = check_admin(&app, &headers) {
        return error_response(&e);
    }
    let parsed: RefundBody = match admin_body(body) {
        Ok(b) => b,
        Err(e) => return error_response(&e),
    };
    let Some(reason) = RefundReason::parse(&parsed.reason) else {
        return error_response(&Error::InvalidMessage(
            "reason must be refund or chargeback".into(),
        ));
    };
    let req = RefundRequest {
        purchase_id: parsed.purchase_id,
        reason,
        spend_order: app.config.split.spend_order.clone(),
    };
    let receipt = match app.ledger.refund(req).await {
        Ok(r) => r,
        Err(e) => return error_response(&e),
    };
    if !receipt.replayed {
        app.metrics.record_refund(&receipt);
        tracing::info!(
            purchase_id = receipt.purchase_id,
            user = receipt.user,
            reason = receipt.reason.as_str(),
            coins = receipt.coins,
            debt_coins = receipt.debt_coins,
            "top-up reversed"
        );
        let notice = encode(&ServerMessage::Refund {
            purchase_id: &receipt.purchase_id,
            reason: receipt.reason,
            channel: receipt.channel,
            coins: receipt.coins,
            wallet_coins: receipt.wallet_coins,
            debt_coins: receipt.debt_coins,
            balance_coins: receipt.balance_coins,
            owed_coins: receipt.owed_coins,
        });
        app.send_to_user(&receipt.user, OutKind::Refund, &notice);
    }
    Json(receipt).into_response()
}

async fn wallet(
    State(app): AdminState,
    headers: HeaderMap,
    user: Result<Path<String>, PathRejection>,
) -> Response {
    if let Err(e) = check_admin(&app, &headers) {
        return error_response(&e);
    }
    let user = match path_user(user) {
        Ok(user) => user,
        Err(e) => return error_response(&e),
    };
    let wallet = match app.ledger.wallet(&user).await {
        Ok(w) => w,
        Err(e) => return error_response(&e),
    };
    let earnings = match app.ledger.earnings(&user).await {
        Ok(e) => e,
        Err(e) => return error_response(&e),
    };
    Json(json!({
        "user": user,
        "balance_coins": wallet.total_coins(),
        "ios_coins": wallet.ios_coins,
        "android_coins": wallet.android_coins,
        "web_coins": wallet.web_coins,
        "owed_coins": wallet.owed_coins,
        "earnings_coins": earnings,
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::testing::app;
    use axum::body::Body;
    use tower::ServiceExt;

    #[test]
    fn slots_give_their_permits_back_when_dropped() {
        let tcp = Arc::new(Semaphore::new(1));
        let ws = Arc::new(Semaphore::new(2));
        let slots = Slots::new(
            Some(tcp.clone().try_acquire_owned().unwrap()),
            Some(ws.clone().try_acquire_owned().unwrap()),
        );
        assert_eq!((tcp.available_permits(), ws.available_permits()), (0, 1));
        drop(slots);
        assert_eq!((tcp.available_permits(), ws.available_permits()), (1, 2));
        // The echo endpoint holds no slot of its own.
        drop(Slots::new(
            Some(tcp.clone().try_acquire_owned().unwrap()),
            None,
        ));
        assert_eq!((tcp.available_permits(), ws.available_permits()), (1, 2));
    }

    /// schemathesis found `26.0` refused although it is the whole number 26.
    #[test]
    fn caps_are_null_or_whole_coins_within_the_bound() {
        assert_eq!(cap_coins(&json!(null)), Ok(None));
        for (v, coins) in [(json!(0), 0), (json!(26), 26), (json!(26.0), 26)] {
            assert_eq!(cap_coins(&v), Ok(Some(coins)), "{v}");
        }
        assert_eq!(
            cap_coins(&json!(SPEND_CAP_COINS_MAX)),
            Ok(Some(SPEND_CAP_COINS_MAX))
        );
        for bad in [
            json!(-1),
            json!(2.5),
            json!("5"),
            json!(SPEND_CAP_COINS_MAX + 1),
            json!(1e13),
        ] {
            assert!(cap_coins(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn topup_amounts_are_whole_coins_within_the_bound() {
        for ok in [json!(1), json!(100), json!(TOPUP_COINS_MAX)] {
            assert!(topup_coins(&ok).is_ok(), "{ok}");
        }
        // Found by the OpenAPI check: a whole number written with a fraction part is a whole
        // number (JSON Schema's `integer` says so too).
        assert_eq!(topup_coins(&json!(100.0)), Ok(100));
        assert_eq!(topup_coins(&json!(1e9)), Ok(TOPUP_COINS_MAX));
        for bad in [
            json!(0),
            json!(-5),
            json!(1.5),
            json!(0.0),
            json!(-0.0),
            json!(1e9 + 1.0),
            json!(1e300),
            json!("100"),
            json!(null),
            json!(TOPUP_COINS_MAX + 1),
            json!(u64::MAX),
        ] {
            let e = topup_coins(&bad).unwrap_err();
            assert_eq!((e.code(), e.http_status()), (14004, 400), "{bad}");
        }
    }

    #[test]
    fn upgrade_headers_are_checked() {
        let mut h = HeaderMap::new();
        assert!(upgrade_key(&h).is_err());
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
        h.insert(header::SEC_WEBSOCKET_KEY, HeaderValue::from_static("k"));
        assert_eq!(upgrade_key(&h), Err("Sec-WebSocket-Version must be 13"));
        h.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        assert!(upgrade_key(&h).is_ok());
    }

    #[test]
    fn every_error_answers_with_its_own_status_and_body() {
        for e in crate::error::tests::one_of_each() {
            let res = error_response(&e);
            assert_eq!(res.status().as_u16(), e.http_status(), "{e:?}");
        }
    }

    async fn admin(app: &Arc<App>, req: Request<Body>) -> (StatusCode, serde_json::Value) {
        let res = admin_router(app.clone()).oneshot(req).await.unwrap();
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    }

    fn topup(coins: serde_json::Value) -> Request<Body> {
        let body = json!({ "user": "bob", "channel": "web", "coins": coins, "purchase_id": "p1" });
        Request::post("/admin/topup")
            .header(
                header::AUTHORIZATION,
                format!("Bearer {}", crate::config::DEV_ADMIN_TOKEN),
            )
            .body(Body::from(body.to_string()))
            .unwrap()
    }

    #[tokio::test]
    async fn bad_admin_amounts_get_invalid_amount_and_move_no_money() {
        let app = app(|_| {});
        for coins in [json!(-5), json!("12"), json!(2.5), json!(0)] {
            let (status, body) = admin(&app, topup(coins.clone())).await;
            assert_eq!(status, 400, "{coins}");
            assert_eq!(body["reason"], "invalid_amount", "{coins}: {body}");
        }
        assert_eq!(app.ledger.wallet("bob").await.unwrap().total_coins(), 0);
        let (status, body) = admin(&app, topup(json!(25))).await;
        assert_eq!(
            (status.as_u16(), body["balance_coins"].as_u64()),
            (200, Some(25))
        );
    }

    #[tokio::test]
    async fn readiness_reports_the_disk_reserve() {
        let app = app(|c| c.ledger.disk_reserve_bytes = u64::MAX);
        let req = Request::get("/readyz").body(Body::empty()).unwrap();
        let (status, body) = admin(&app, req).await;
        assert_eq!(status, 503);
        assert_eq!(body["disk_reserve"], false);
        assert_eq!(body["ledger"], true);
    }

    #[tokio::test]
    async fn operator_endpoints_are_not_on_the_public_router_and_clients_not_on_the_admin_one() {
        let app = app(|_| {});
        let public = public_router(app.app.clone(), Tracker::new());
        for path in ["/metrics", "/healthz", "/readyz", "/admin/wallets/bob"] {
            let req = Request::get(path).body(Body::empty()).unwrap();
            let res = public.clone().oneshot(req).await.unwrap();
            assert_eq!(res.status(), StatusCode::NOT_FOUND, "{path}");
        }
        for path in ["/ws", "/rooms", "/stickers"] {
            let req = Request::get(path).body(Body::empty()).unwrap();
            let res = admin_router(app.app.clone()).oneshot(req).await.unwrap();
            assert_eq!(res.status(), StatusCode::NOT_FOUND, "{path}");
        }
    }

    async fn public(app: &Arc<App>, req: Request<Body>) -> (StatusCode, serde_json::Value) {
        let res = public_router(app.clone(), Tracker::new())
            .oneshot(req)
            .await
            .unwrap();
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    }

    /// Found by the OpenAPI check: axum's own rejections answered in plain text, without a code.
    #[tokio::test]
    async fn an_unparsable_ws_query_gets_the_wire_error() {
        let app = app(|_| {});
        for uri in ["/ws?token=a&token=b", "/ws?token=%FF"] {
            let mut req = Request::get(uri).body(Body::empty()).unwrap();
            let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
            req.extensions_mut().insert(ConnectInfo(peer));
            let (status, body) = public(&app, req).await;
            assert_eq!(
                (status.as_u16(), &body["code"]),
                (400, &json!(11003)),
                "{uri}"
            );
        }
    }

    #[tokio::test]
    async fn a_wallet_path_that_is_not_utf8_gets_the_wire_error() {
        let app = app(|_| {});
        let req = Request::get("/admin/wallets/%FF")
            .header(
                header::AUTHORIZATION,
                format!("Bearer {}", crate::config::DEV_ADMIN_TOKEN),
            )
            .body(Body::empty())
            .unwrap();
        let (status, body) = admin(&app, req).await;
        assert_eq!((status.as_u16(), &body["code"]), (400, &json!(11003)));
    }

    #[tokio::test]
    async fn a_topup_body_past_the_buffer_limit_gets_message_too_large() {
        let app = app(|_| {});
        let req = Request::post("/admin/topup")
            .header(
                header::AUTHORIZATION,
                format!("Bearer {}", crate::config::DEV_ADMIN_TOKEN),
            )
            .body(Body::from(vec![b'a'; 3 << 20]))
            .unwrap();
        let (status, body) = admin(&app, req).await;
        assert_eq!((status.as_u16(), &body["code"]), (413, &json!(11007)));
    }

    #[tokio::test]
    async fn unknown_paths_and_methods_get_the_wire_error() {
        let app = app(|_| {});
        let (status, body) = public(&app, Request::get("/nope").body(Body::empty()).unwrap()).await;
        assert_eq!((status.as_u16(), &body["code"]), (404, &json!(11008)));
        let (status, body) = admin(&app, Request::get("/nope").body(Body::empty()).unwrap()).await;
        assert_eq!((status.as_u16(), &body["code"]), (404, &json!(11008)));
        let res = public_router(app.app.clone(), Tracker::new())
            .oneshot(Request::post("/rooms").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(res.headers()[header::ALLOW], "GET,HEAD");
        let (status, body) = admin(
            &app,
            Request::get("/admin/topup").body(Body::empty()).unwrap(),
        )
        .await;
        assert_eq!((status.as_u16(), &body["code"]), (405, &json!(11009)));
    }

    #[tokio::test]
    async fn the_openapi_description_is_served() {
        let app = app(|_| {});
        let res = public_router(app.app.clone(), Tracker::new())
            .oneshot(Request::get("/openapi.yaml").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()[header::CONTENT_TYPE], "application/yaml");
        let text = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap();
        assert!(text.starts_with(b"openapi: 3.1"));
    }
}

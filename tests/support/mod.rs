//! Test support: a real giftd on an ephemeral port, and typed WebSocket and HTTP clients.
//!
//! Every test gets its own server (bound to `127.0.0.1:0`) and its own ledger file in a temp
//! directory, so tests run in parallel. The clients speak the protocol exactly as
//! `docs/PROTOCOL.md` describes it, so tests read like the protocol.
#![allow(dead_code, unreachable_pub)]

pub mod cluster;
pub mod ledger;
pub mod proxy;
pub mod raw_ws;
pub mod rooms;
pub mod tokens;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use giftd::auth::{Authenticator, Role};
use giftd::config::{Config, Rate, RateSet};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for any single expected frame before failing.
pub const WAIT: Duration = Duration::from_secs(10);

pub const ADMIN_TOKEN: &str = giftd::config::DEV_ADMIN_TOKEN;

/// A config for tests: ephemeral port, generous rate and byte limits, fast viewer counts.
pub fn test_config(db: PathBuf) -> Config {
    let mut c = Config::default();
    c.server.listen = "127.0.0.1:0".parse().unwrap();
    c.server.admin_listen = "127.0.0.1:0".parse().unwrap();
    c.server.shutdown_grace_ms = 5_000;
    c.ledger.path = db;
    c.rooms.viewer_count_interval_ms = 50;
    let lots = Rate {
        per_sec: 10_000.0,
        burst: 10_000,
    };
    let set = RateSet {
        gifts: lots,
        questions: lots,
        commands: lots,
    };
    c.limits.connection = set;
    c.limits.user = set;
    // Tests drive connections far harder than people do; the inbound budget has its own test.
    c.server.inbound_bytes_per_sec = 64 << 20;
    c.server.inbound_burst_bytes = 64 << 20;
    c
}

/// The future that tells a test server to shut down.
type Stopped = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

pub struct TestServer {
    /// The public listener: `/ws`, `/rooms`, `/stickers`.
    pub addr: SocketAddr,
    /// The admin listener: `/metrics`, `/healthz`, `/readyz`, `/admin/*`.
    pub admin_addr: SocketAddr,
    pub config: Config,
    pub dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<giftd::error::Result<()>>>,
    /// The test's PostgreSQL schema, when its ledger is there (see `ledger.rs`).
    pg: Option<std::sync::Arc<ledger::PgSchema>>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let config = test_config(dir.path().join("giftd.db"));
        TestServer::start_in(dir, config).await
    }

    /// Starts with a config adjusted by `tweak`.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path().join("giftd.db"));
        tweak(&mut config);
        TestServer::start_in(dir, config).await
    }

    /// Starts with a ledger handle kept by the test, for fault injection.
    pub async fn start_with_ledger(
        tweak: impl FnOnce(&mut Config),
    ) -> (
        TestServer,
        std::sync::Arc<giftd::ledger::sqlite::SqliteLedger>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path().join("giftd.db"));
        tweak(&mut config);
        let metrics = std::sync::Arc::new(giftd::metrics::Metrics::new());
        let ledger = giftd::server::open_sqlite_ledger(&config, &metrics).unwrap();
        let run_ledger = ledger.clone();
        let server = TestServer::launch(dir, config, move |listener, config, stopped| {
            giftd::server::serve(listener, config, run_ledger, metrics, stopped)
        })
        .await;
        (server, ledger)
    }

    pub async fn start_in(dir: tempfile::TempDir, mut config: Config) -> TestServer {
        let pg = ledger::select(&mut config).map(std::sync::Arc::new);
        let mut server = TestServer::launch(dir, config, giftd::server::run).await;
        server.pg = pg;
        server
    }

    /// Binds an ephemeral port and spawns `serve` on it with a shutdown trigger the test holds.
    async fn launch<F, Fut>(dir: tempfile::TempDir, config: Config, serve: F) -> TestServer
    where
        F: FnOnce(giftd::server::Listeners, Config, Stopped) -> Fut,
        Fut: std::future::Future<Output = giftd::error::Result<()>> + Send + 'static,
    {
        let listeners = giftd::server::Listeners::bind(&config).await.unwrap();
        let addr = listeners.public.local_addr().unwrap();
        let admin_addr = listeners.admin.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let stopped: Stopped = Box::pin(async {
            let _ = stopped.await;
        });
        let mut task = tokio::spawn(serve(listeners, config.clone(), stopped));
        started(admin_addr, &mut task).await;
        TestServer {
            addr,
            admin_addr,
            config,
            dir,
            stop: Some(stop),
            task: Some(task),
            pg: None,
        }
    }
}

/// Waits until the server's admin listener answers, so a test's first request meets a serving
/// node. A node that could not start (its ledger or NATS failing) drops its listeners, which
/// resets every connection waiting in their backlog; the test then fails here with the node's
/// own error instead of a "connection reset" on its first request.
async fn started(admin_addr: SocketAddr, task: &mut JoinHandle<giftd::error::Result<()>>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        if task.is_finished() {
            match task.await {
                Ok(Ok(())) => panic!("the server returned before serving"),
                Ok(Err(e)) => panic!("the server failed to start: {e}"),
                Err(e) => panic!("the server's task failed to start: {e}"),
            }
        }
        if let Ok((200, _)) = try_http(admin_addr, "GET", "/healthz", None, None).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the server did not serve /healthz within 30 s");
}

impl TestServer {
    /// Triggers a graceful shutdown and waits for the server to return.
    pub async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("server stops within 30 s")
                .unwrap()
                .unwrap();
        }
    }

    /// Stops the server and starts a new one on the same ledger file (on a new port).
    pub async fn restart(mut self) -> TestServer {
        self.shutdown().await;
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        let mut server = TestServer::start_in(dir, self.config.clone()).await;
        server.pg = self.pg.take();
        server
    }

    pub fn db(&self) -> PathBuf {
        self.config.ledger.path.clone()
    }

    pub fn token(&self, user: &str, role: Role) -> String {
        Authenticator::new(&self.config.auth)
            .mint(user, role, None, 3600)
            .unwrap()
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Connects with a token in the handshake and consumes the welcome.
    pub async fn connect(&self, user: &str, role: Role) -> Client {
        let mut client = Client::connect(&self.url(), Some(&self.token(user, role)))
            .await
            .unwrap();
        let welcome = client.next_message().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        assert_eq!(welcome["user"], user);
        client
    }

    pub async fn viewer(&self, user: &str) -> Client {
        self.connect(user, Role::Viewer).await
    }

    pub async fn streamer(&self, user: &str) -> Client {
        self.connect(user, Role::Streamer).await
    }

    /// Connects without a token (authenticate with an `auth` message).
    pub async fn anonymous(&self) -> Client {
        Client::connect(&self.url(), None).await.unwrap()
    }

    /// An HTTP request to the listener that serves `path`: the admin one for `/metrics`,
    /// `/healthz`, `/readyz` and `/admin/*`, the public one for everything else.
    pub async fn http(
        &self,
        method: &str,
        path: &str,
        auth: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, String) {
        let addr = if is_admin_path(path) {
            self.admin_addr
        } else {
            self.addr
        };
        http(addr, method, path, auth, body.map(|b| b.to_string())).await
    }

    /// Tops up a wallet through the admin API and returns the JSON receipt.
    pub async fn top_up(&self, user: &str, channel: &str, coins: u64, purchase_id: &str) -> Value {
        let body =
            json!({ "user": user, "channel": channel, "coins": coins, "purchase_id": purchase_id });
        let (status, text) = self
            .http("POST", "/admin/topup", Some(ADMIN_TOKEN), Some(&body))
            .await;
        assert_eq!(status, 200, "{text}");
        serde_json::from_str(&text).unwrap()
    }

    /// The wallet and earnings of `user` through the admin API.
    pub async fn wallet(&self, user: &str) -> Value {
        let (status, text) = self
            .http(
                "GET",
                &format!("/admin/wallets/{user}"),
                Some(ADMIN_TOKEN),
                None,
            )
            .await;
        assert_eq!(status, 200, "{text}");
        serde_json::from_str(&text).unwrap()
    }

    /// An admin call with the admin token, its body parsed (`Null` if it is not JSON).
    pub async fn admin(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let (status, text) = self.http(method, path, Some(ADMIN_TOKEN), body).await;
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Reverses a top-up through the admin API (`reason`: `refund` or `chargeback`); returns the
    /// status and body.
    pub async fn refund(&self, purchase_id: &str, reason: &str) -> (u16, Value) {
        let body = json!({ "purchase_id": purchase_id, "reason": reason });
        self.admin("POST", "/admin/refund", Some(&body)).await
    }

    /// Sets `user`'s spending limits through the admin API; returns their limits and spending.
    pub async fn set_limits(&self, user: &str, limits: Value) -> Value {
        let path = format!("/admin/users/{user}/limits");
        let (status, body) = self.admin("PUT", &path, Some(&limits)).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// `user`'s limits and spending in the current window, through the admin API.
    pub async fn limits(&self, user: &str) -> Value {
        let (status, body) = self
            .admin("GET", &format!("/admin/users/{user}/limits"), None)
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    pub async fn balance(&self, user: &str) -> u64 {
        self.wallet(user).await["balance_coins"].as_u64().unwrap()
    }

    pub async fn metrics(&self) -> String {
        self.http("GET", "/metrics", None, None).await.1
    }

    /// The price of `sticker` in the server's catalog.
    pub async fn price(&self, sticker: &str) -> u64 {
        let (_, body) = self.http("GET", "/stickers", None, None).await;
        let stickers: Value = serde_json::from_str(&body).unwrap();
        stickers["stickers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == sticker)
            .unwrap_or_else(|| panic!("no sticker {sticker}"))["price_coins"]
            .as_u64()
            .unwrap()
    }

    /// The value of one sample line of `/metrics`, e.g. `giftd_gifts_total`.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0.0)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Whether `path` is served by the admin listener.
pub fn is_admin_path(path: &str) -> bool {
    ["/metrics", "/healthz", "/readyz"].contains(&path) || path.starts_with("/admin/")
}

/// A minimal HTTP/1.1 client: one request per connection. Panics if the request fails.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Option<String>,
) -> (u16, String) {
    try_http(addr, method, path, auth, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"))
}

/// [`http`], returning the failure instead of panicking: for servers that may be down (the
/// crash loop polls a server it has just killed or is starting).
pub async fn try_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Option<String>,
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    let body = body.unwrap_or_default();
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    if let Some(token) = auth {
        req.push_str(&format!("authorization: Bearer {token}\r\n"));
    }
    if !body.is_empty() {
        req.push_str(&format!(
            "content-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    stream.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw))
        .await
        .map_err(|_| std::io::Error::other("no http response in time"))??;
    let text = String::from_utf8_lossy(&raw).to_string();
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, decode_chunked(&text, body)))
}

fn decode_chunked(head: &str, body: String) -> String {
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return body;
    }
    let mut out = String::new();
    let mut rest = body.as_str();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
    out
}

/// A WebSocket client that speaks giftd's protocol.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    /// Frames received while waiting for something else, in arrival order.
    backlog: VecDeque<Value>,
}

/// How a connection ended, as the client saw it.
#[derive(Debug, PartialEq, Eq)]
pub struct Closed {
    pub code: u16,
    pub reason: String,
}

impl Client {
    pub async fn connect(
        url: &str,
        token: Option<&str>,
    ) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        let mut request = url.into_client_request()?;
        if let Some(token) = token {
            request
                .headers_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        let (ws, _) = tokio_tungstenite::connect_async(request).await?;
        Ok(Client {
            ws,
            next_id: 1,
            backlog: VecDeque::new(),
        })
    }

    pub fn from_stream(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Client {
        Client {
            ws,
            next_id: 1,
            backlog: VecDeque::new(),
        }
    }

    pub async fn send_raw(&mut self, msg: Message) {
        self.ws.send(msg).await.unwrap();
    }

    pub async fn send_text(&mut self, text: &str) {
        self.send_raw(Message::text(text)).await;
    }

    /// Sends `body` (a JSON object without `id`) with a fresh id and returns the id.
    pub async fn send(&mut self, mut body: Value) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        body["id"] = json!(id);
        self.send_text(&body.to_string()).await;
        id
    }

    /// Reads the next frame from the socket (not the backlog) as JSON.
    async fn read(&mut self) -> Option<Value> {
        loop {
            let frame = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame in time")?;
            match frame {
                Ok(Message::Text(t)) => return Some(serde_json::from_str(t.as_str()).unwrap()),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    /// The next message of any type.
    pub async fn next_message(&mut self) -> Value {
        if let Some(v) = self.backlog.pop_front() {
            return v;
        }
        self.read().await.expect("connection open")
    }

    /// The next message of `kind` (`type`), keeping others in the backlog.
    pub async fn next_of(&mut self, kind: &str) -> Value {
        if let Some(pos) = self.backlog.iter().position(|v| v["type"] == kind) {
            return self.backlog.remove(pos).unwrap();
        }
        loop {
            let v = self
                .read()
                .await
                .unwrap_or_else(|| panic!("connection closed while waiting for {kind}"));
            if v["type"] == kind {
                return v;
            }
            self.backlog.push_back(v);
        }
    }

    /// The next room event, or `None` once the connection ended.
    pub async fn try_next_event(&mut self) -> Option<Value> {
        if let Some(pos) = self.backlog.iter().position(|v| v["type"] == "event") {
            return self.backlog.remove(pos);
        }
        loop {
            let v = self.read().await?;
            if v["type"] == "event" {
                return Some(v);
            }
            self.backlog.push_back(v);
        }
    }

    /// The next room event.
    pub async fn next_event(&mut self) -> Value {
        self.next_of("event").await
    }

    /// The next room event of `kind`, skipping (and dropping) what the room ticker publishes
    /// coalesced: viewer counts and leaderboards.
    pub async fn next_event_of(&mut self, kind: &str) -> Value {
        loop {
            let e = self.next_event().await;
            if e["kind"] == kind {
                return e;
            }
            assert!(
                e["kind"] == "viewers" || e["kind"] == "leaderboard",
                "expected {kind}, got {e}"
            );
        }
    }

    /// Sends a command and waits for its ack (`Ok(result)`) or error (`Err(error)`).
    pub async fn request(&mut self, body: Value) -> Result<Value, Value> {
        let id = self.send(body).await;
        self.reply(id).await
    }

    /// Sends a command and waits for its ack or error; `None` if the connection ended first.
    pub async fn try_request(&mut self, body: Value) -> Option<Result<Value, Value>> {
        let id = self.send(body).await;
        let matches =
            |v: &Value| (v["type"] == "ack" || v["type"] == "error") && v["id"] == json!(id);
        loop {
            let v = self.read().await?;
            if matches(&v) {
                return Some(unpack(v));
            }
            self.backlog.push_back(v);
        }
    }

    /// Waits for the ack or error of request `id`.
    pub async fn reply(&mut self, id: u64) -> Result<Value, Value> {
        let matches =
            |v: &Value| (v["type"] == "ack" || v["type"] == "error") && v["id"] == json!(id);
        if let Some(pos) = self.backlog.iter().position(matches) {
            return unpack(self.backlog.remove(pos).unwrap());
        }
        loop {
            let v = self
                .read()
                .await
                .unwrap_or_else(|| panic!("connection closed while waiting for reply {id}"));
            if matches(&v) {
                return unpack(v);
            }
            self.backlog.push_back(v);
        }
    }

    pub async fn ok(&mut self, body: Value) -> Value {
        let what = body.to_string();
        self.request(body)
            .await
            .unwrap_or_else(|e| panic!("{what} failed: {e}"))
    }

    pub async fn open_room(&mut self, room: &str, title: &str) -> Value {
        self.ok(json!({ "type": "open_room", "room": room, "title": title }))
            .await
    }

    pub async fn join(&mut self, room: &str) -> Value {
        self.ok(json!({ "type": "join", "room": room })).await
    }

    pub async fn send_gift(&mut self, sticker: &str, key: &str) -> Result<Value, Value> {
        self.request(json!({ "type": "send_gift", "sticker": sticker, "key": key }))
            .await
    }

    /// Waits for the server to close the connection and returns its close frame.
    pub async fn closed(&mut self) -> Closed {
        loop {
            let frame = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("close in time");
            match frame {
                Some(Ok(Message::Close(Some(f)))) => {
                    return Closed {
                        code: u16::from(f.code),
                        reason: f.reason.to_string(),
                    };
                }
                Some(Ok(Message::Close(None))) => {
                    return Closed {
                        code: 1005,
                        reason: String::new(),
                    }
                }
                Some(Ok(Message::Text(t))) => self
                    .backlog
                    .push_back(serde_json::from_str(t.as_str()).unwrap()),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    return Closed {
                        code: 1006,
                        reason: String::new(),
                    }
                }
            }
        }
    }

    /// Gives back the raw stream (for tests that stop reading).
    pub fn into_inner(self) -> WebSocketStream<MaybeTlsStream<TcpStream>> {
        self.ws
    }

    /// Messages received but not yet consumed.
    pub fn backlog(&self) -> &VecDeque<Value> {
        &self.backlog
    }
}

fn unpack(v: Value) -> Result<Value, Value> {
    if v["type"] == "ack" {
        Ok(v["result"].clone())
    } else {
        Err(v)
    }
}

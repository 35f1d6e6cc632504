//! The accept loop and the node's lifecycle: start, serve, drain, stop.
//!
//! [`run`] takes bound listeners, so tests bind `127.0.0.1:0` and run many servers in parallel.
//! There are two:
//! - the **public** listener (`server.listen`) serves client WebSockets and the public HTTP
//!   endpoints. Each TCP connection takes a slot under `connections_max` plus a small HTTP
//!   headroom (beyond it, giftd answers 503 and closes), gets its kernel send buffer bounded
//!   (`socket.rs`), and is served by hyper with a header read timeout against slow handshakes;
//!   `/ws` upgrades take one of `connections_max` WebSocket slots (or get 503) and hand the
//!   socket to `connection.rs`;
//! - the **admin** listener (`server.admin_listen`, loopback by default) serves metrics, health,
//!   readiness and the admin API under its own connection bound, so that no number of clients
//!   or attackers on the public port can starve an operator's probes.
//!
//! Shutdown, when the `shutdown` future resolves: stop accepting, tell every connection to finish
//! (WebSockets close with 1001 after the command in progress), wait for them up to
//! `shutdown_grace_ms`, then let the ledger commit what is queued and stop.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request};
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::app::App;
use crate::bounds::{
    ACCEPT_RETRY, HTTP_BUFFER_BYTES_MAX, HTTP_HEADROOM_CONNECTIONS, LEDGER_CLOSE_MIN,
};
use crate::cluster::Cluster;
use crate::config::{Config, LedgerBackend};
use crate::error::{Error, Result};
use crate::http::{self, ConnSlot};
use crate::ledger::postgres::{PostgresLedger, PostgresOptions};
use crate::ledger::sqlite::{SqliteLedger, SqliteOptions};
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::socket::{ClientSocket, ResetOnDrop, SocketOptions};

/// Tracks every connection task, so shutdown can wait for them.
pub type Tracker = tokio_util::task::TaskTracker;

/// The node's two bound listeners.
pub struct Listeners {
    /// Client WebSockets and public HTTP (`server.listen`).
    pub public: TcpListener,
    /// Metrics, probes and the admin API (`server.admin_listen`).
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds both addresses of `config` with `bind` (tests bind port 0).
    pub async fn bind(config: &Config) -> std::io::Result<Listeners> {
        Ok(Listeners {
            public: TcpListener::bind(config.server.listen).await?,
            admin: TcpListener::bind(config.server.admin_listen).await?,
        })
    }
}

/// Serves on `listeners` until `shutdown` resolves, then drains and returns. Opens the ledger the
/// config names (`ledger.backend`).
pub async fn run(
    listeners: Listeners,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    config
        .validate()
        .map_err(|e| Error::Internal(format!("invalid config:\n{e}")))?;
    let metrics = Arc::new(Metrics::new());
    let ledger = open_ledger(&config, &metrics).await?;
    serve(listeners, config, ledger, metrics, shutdown).await
}

/// Opens the ledger `config` names: SQLite or PostgreSQL (migrating its schema).
pub async fn open_ledger(config: &Config, metrics: &Metrics) -> Result<Arc<dyn Ledger>> {
    let l = &config.ledger;
    Ok(match l.backend {
        LedgerBackend::Sqlite => open_sqlite_ledger(config, metrics)?,
        LedgerBackend::Postgres => {
            let options = PostgresOptions {
                url: l.postgres_url.clone(),
                batch_max: l.batch_max,
                queue_max: l.queue_max,
                call_timeout_ms: l.call_timeout_ms,
                pool_max: l.postgres_pool_max,
                writers: l.postgres_writers,
            };
            Arc::new(PostgresLedger::open(options, metrics.ledger_commit_seconds.clone()).await?)
        }
    })
}

/// Opens the SQLite ledger named in `config`, reporting commit latency to `metrics`.
pub fn open_sqlite_ledger(config: &Config, metrics: &Metrics) -> Result<Arc<SqliteLedger>> {
    let options = SqliteOptions {
        path: config.ledger.path.clone(),
        batch_max: config.ledger.batch_max,
        queue_max: config.ledger.queue_max,
        call_timeout_ms: config.ledger.call_timeout_ms,
    };
    Ok(Arc::new(SqliteLedger::open(
        options,
        metrics.ledger_commit_seconds.clone(),
    )?))
}

/// Like [`run`], with a ledger the caller opened (another backend, or one it keeps a handle to).
pub async fn serve(
    listeners: Listeners,
    config: Config,
    ledger: Arc<dyn Ledger>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let grace = Duration::from_millis(config.server.shutdown_grace_ms);
    let cluster = match config.cluster.enabled() {
        true => Some(Cluster::connect(&config, metrics.clone()).await?),
        false => None,
    };
    let app = Arc::new(App::new(
        config,
        ledger.clone(),
        cluster,
        metrics,
        CancellationToken::new(),
    ));
    if app.cluster.is_some() {
        Cluster::start(&app).await?;
    }
    let tracker = Tracker::new();
    let public_router = http::public_router(app.clone(), tracker.clone());
    let admin_router = http::admin_router(app.clone());
    let ticker = tokio::spawn(room_ticker(app.clone()));
    let sweeper = tokio::spawn(crate::red_packets::sweeper(app.clone()));
    let public_permits = Arc::new(Semaphore::new(
        app.config.server.connections_max + HTTP_HEADROOM_CONNECTIONS,
    ));
    let admin_permits = Arc::new(Semaphore::new(app.config.server.admin_connections_max));
    let Listeners { public, admin } = listeners;
    let socket_options = app.config.server.socket_options();
    let backend = app.config.ledger.backend;
    tracing::info!(
        listen = ?public.local_addr().ok(),
        admin = ?admin.local_addr().ok(),
        ?backend,
        "giftd serving"
    );
    let public_loop = tokio::spawn(accept_loop(
        public,
        Side::Public(socket_options),
        public_router,
        app.clone(),
        public_permits,
        tracker.clone(),
    ));
    let admin_loop = tokio::spawn(accept_loop(
        admin,
        Side::Admin,
        admin_router,
        app.clone(),
        admin_permits,
        tracker.clone(),
    ));
    shutdown.await;
    // Stop accepting: awaiting the aborted loops makes sure their listeners are closed.
    public_loop.abort();
    admin_loop.abort();
    let _ = public_loop.await;
    let _ = admin_loop.await;
    let deadline = Instant::now() + grace;
    tracing::info!(connections = app.metrics.connections.get(), "shutting down");
    app.shut_down();
    tracker.close();
    if tokio::time::timeout_at(deadline, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            left = tracker.len(),
            "grace period over; cutting remaining connections"
        );
    }
    ticker.abort();
    // An expiry cut short is safe: the ledger either ends a packet in full or not at all, and
    // the next sweep (on any node, or after the restart) ends it.
    sweeper.abort();
    let ledger_time = deadline
        .saturating_duration_since(Instant::now())
        .max(LEDGER_CLOSE_MIN);
    if tokio::time::timeout(ledger_time, ledger.close())
        .await
        .is_err()
    {
        tracing::error!(
            "ledger did not finish in time; unacknowledged work is not lost, only unanswered"
        );
    }
    tracing::info!("giftd stopped");
    Ok(())
}

/// Which listener an accept loop serves.
#[derive(Clone, Copy)]
enum Side {
    /// Clients: sockets get their send buffer bounded and keepalive (`socket.rs`).
    Public(SocketOptions),
    /// Operators.
    Admin,
}

/// Accepts on `listener` until the node stops (the caller aborts it): each connection takes a
/// permit or is refused with 503, and is served by hyper on the tracker.
async fn accept_loop(
    listener: TcpListener,
    side: Side,
    router: Router,
    app: Arc<App>,
    permits: Arc<Semaphore>,
    tracker: Tracker,
) {
    let limit = match side {
        Side::Public(_) => "connections_max",
        Side::Admin => "admin_connections_max",
    };
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Typically EMFILE: back off briefly instead of spinning.
                tracing::warn!(error = %e, limit, "accept failed");
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refuse(stream, &app, limit);
            continue;
        };
        let router = router.clone();
        match side {
            Side::Public(options) => match ClientSocket::new(stream, options) {
                Ok(socket) => {
                    let reset = Some(socket.reset_handle());
                    tracker.spawn(serve_http(socket, peer, router, app.clone(), permit, reset));
                }
                Err(e) => tracing::debug!(error = %e, %peer, "socket setup failed"),
            },
            Side::Admin => {
                let _ = stream.set_nodelay(true);
                tracker.spawn(serve_http(stream, peer, router, app.clone(), permit, None));
            }
        }
    }
}

/// Answers a connection over its listener's bound with 503 and closes it.
fn refuse(stream: TcpStream, app: &App, limit: &str) {
    app.metrics
        .connections_rejected
        .with_label_values(&[limit])
        .inc();
    let body = Error::TooManyConnections.body().to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    // Best effort and non-blocking: a fresh socket's send buffer always has room for this.
    let _ = stream.try_write(response.as_bytes());
}

async fn serve_http<S>(
    stream: S,
    peer: SocketAddr,
    router: Router,
    app: Arc<App>,
    permit: OwnedSemaphorePermit,
    reset: Option<ResetOnDrop>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let slot = ConnSlot(Arc::new(Mutex::new(Some(permit))));
    let service = router.map_request(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        req.extensions_mut().insert(slot.clone());
        if let Some(reset) = &reset {
            req.extensions_mut().insert(reset.clone());
        }
        req
    });
    let timeout = Duration::from_millis(app.config.server.handshake_timeout_ms);
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .max_buf_size(HTTP_BUFFER_BYTES_MAX)
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, %peer, "http connection ended with an error");
            }
        }
        _ = app.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Once per interval: publishes each room's viewer count if it changed, beats its mechanics
/// (`Room::tick`), reads its all-time leaderboard from the ledger after gifts (one read per room
/// at a time, off the ticker), and closes rooms whose streamer has been away longer than
/// `streamer_away_close_ms` (a crashed streamer app must not leave its room open forever).
async fn room_ticker(app: Arc<App>) {
    let rooms = &app.config.rooms;
    let mut interval = tokio::time::interval(Duration::from_millis(rooms.viewer_count_interval_ms));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let away = Duration::from_millis(rooms.streamer_away_close_ms);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = app.shutdown.cancelled() => return,
        }
        let now = Instant::now();
        for room in app.rooms.all() {
            if room.streamer_away_for(away, now) {
                if room.claim_close() {
                    // Off the ticker: a PK battle is ended in the ledger first.
                    let app = app.clone();
                    tokio::spawn(async move {
                        crate::session::end_for_close(&app, &room).await;
                        if room.close("the streamer left").is_ok() {
                            tracing::info!(room = %room.id, "closed a room its streamer left");
                        }
                        app.forget_room(&room);
                    });
                }
            } else {
                room.publish_viewers_if_changed();
                room.tick(now);
                if let Some((battle_id, change)) = room.pk_due(crate::ledger::now_ms()) {
                    let (app, room) = (app.clone(), room.clone());
                    tokio::spawn(async move {
                        crate::session::beat_pk(&app, &room, &battle_id, change).await
                    });
                }
                if room.all_time_due() {
                    let (ledger, room) = (app.ledger.clone(), room.clone());
                    tokio::spawn(async move {
                        let read = ledger
                            .top_gifters(&room.streamer, room.leaderboard_top_n())
                            .await;
                        room.set_all_time(read);
                    });
                }
            }
        }
        if let Some(cluster) = &app.cluster {
            cluster.report_replicas();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::testing::{app, open_room};
    use crate::auth::Role;
    use crate::outbox::{Outbound, Outbox};

    #[tokio::test(start_paused = true)]
    async fn a_room_whose_streamer_stays_away_is_closed_after_the_grace_period() {
        let app = app(|c| c.rooms.streamer_away_close_ms = 60_000);
        let room = open_room(&app, "r", "star");
        let (star, _star_rx) = Outbox::new(8, 1 << 20);
        let (viewer, viewer_rx) = Outbox::new(8, 1 << 20);
        room.join(1, Role::Streamer, "u", star).unwrap();
        let (_, mut events) = room.join(2, Role::Viewer, "u", viewer).unwrap();
        let ticker = tokio::spawn(room_ticker(app.app.clone()));

        // The streamer drops; coming back within the grace period keeps the room.
        room.leave(1);
        tokio::time::sleep(Duration::from_secs(59)).await;
        assert!(!room.is_closed());
        let (star, _star_rx) = Outbox::new(8, 1 << 20);
        room.join(3, Role::Streamer, "u", star).unwrap();
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert!(!room.is_closed());

        // Away for the whole grace period: closed, members told, the room gone from the node.
        room.leave(3);
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert!(room.is_closed());
        assert!(app.rooms.get("r").is_none());
        let mut last = None;
        while let Ok(frame) = events.ring.try_recv() {
            last = Some(frame);
        }
        let last = last.expect("room events");
        assert!(
            last.bytes
                .as_str()
                .contains(r#""kind":"room_closed","reason":"the streamer left""#),
            "{}",
            last.bytes.as_str()
        );
        assert!(matches!(viewer_rx.try_recv(), Some(Outbound::Unsubscribe)));
        app.shutdown.cancel();
        ticker.await.unwrap();
    }

    #[tokio::test]
    async fn a_connection_over_the_limit_gets_503_with_the_wire_error_body() {
        use tokio::io::AsyncReadExt;
        let app = app(|_| {});
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        refuse(accepted, &app, "connections_max");
        let mut text = String::new();
        client.read_to_string(&mut text).await.unwrap();
        assert!(text.starts_with("HTTP/1.1 503"), "{text}");
        let body: serde_json::Value =
            serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(body, Error::TooManyConnections.body());
        assert_eq!(body["code"], 15003);
    }
}

//! The accept loop and the node's lifecycle: start, serve, drain, stop.
//!
//! [`run`] takes a bound listener, so tests bind `127.0.0.1:0` and run many servers in parallel.
//! Each TCP connection takes a slot under `connections_max` plus a small HTTP headroom (beyond
//! it, giftd answers 503 and closes) and is served by hyper with a header read timeout against
//! slow handshakes; `/ws` upgrades take one of `connections_max` WebSocket slots (or get 503) and
//! hand the socket to `connection.rs`.
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
use crate::config::{Config, LedgerBackend};
use crate::error::Result;
use crate::fanout::{Fanout, LocalFanout};
use crate::http::{self, ConnSlot};
use crate::ledger::postgres::{PostgresLedger, PostgresOptions};
use crate::ledger::sqlite::{SqliteLedger, SqliteOptions};
use crate::ledger::Ledger;
use crate::metrics::Metrics;

/// Tracks every connection task, so shutdown can wait for them.
pub type Tracker = tokio_util::task::TaskTracker;

/// TCP connections allowed beyond `connections_max` (which bounds WebSockets), so that health
/// checks, metrics scrapes and the admin API still get through when WebSockets are at the limit.
pub const HTTP_HEADROOM_CONNECTIONS: usize = 256;

/// What the ledger gets to finish after the grace period, at least.
const LEDGER_CLOSE_MIN: Duration = Duration::from_secs(2);

/// Serves on `listener` until `shutdown` resolves, then drains and returns. Opens the ledger the
/// config names (`ledger.backend`).
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    config
        .validate()
        .map_err(|e| crate::error::Error::Internal(format!("invalid config:\n{e}")))?;
    let metrics = Arc::new(Metrics::new());
    let ledger = open_ledger(&config, &metrics).await?;
    serve(listener, config, ledger, metrics, shutdown).await
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
    listener: TcpListener,
    config: Config,
    ledger: Arc<dyn Ledger>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let token = CancellationToken::new();
    let grace = Duration::from_millis(config.server.shutdown_grace_ms);
    let fanout: Arc<dyn Fanout> = Arc::new(LocalFanout);
    let app = Arc::new(App::new(
        config,
        ledger.clone(),
        fanout,
        metrics,
        token.clone(),
    ));
    let tracker = Tracker::new();
    let router = http::router(app.clone(), tracker.clone());
    let ticker = tokio::spawn(room_ticker(app.clone()));
    let permits = Arc::new(Semaphore::new(
        app.config.server.connections_max + HTTP_HEADROOM_CONNECTIONS,
    ));
    let local = listener.local_addr().ok();
    let backend = app.config.ledger.backend;
    tracing::info!(listen = ?local, ?backend, "giftd serving");

    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => match permits.clone().try_acquire_owned() {
                Ok(permit) => {
                    tracker.spawn(serve_http(
                        stream,
                        peer,
                        router.clone(),
                        app.clone(),
                        permit,
                    ));
                }
                Err(_) => refuse(stream, &app),
            },
            Err(e) => {
                // Typically EMFILE: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    drop(listener);
    let deadline = Instant::now() + grace;
    tracing::info!(connections = app.metrics.connections.get(), "shutting down");
    token.cancel();
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

/// Answers a connection over `connections_max` with 503 and closes it.
fn refuse(stream: TcpStream, app: &App) {
    app.metrics
        .connections_rejected
        .with_label_values(&["connections_max"])
        .inc();
    let body = r#"{"code":5003,"reason":"too_many_connections","message":"server is at its connection limit"}"#;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    // Best effort and non-blocking: a fresh socket's send buffer always has room for this.
    let _ = stream.try_write(response.as_bytes());
}

async fn serve_http(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    app: Arc<App>,
    permit: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let slot = ConnSlot(Arc::new(Mutex::new(Some(permit))));
    let service = router.map_request(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        req.extensions_mut().insert(slot.clone());
        req
    });
    let timeout = Duration::from_millis(app.config.server.handshake_timeout_ms);
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .max_buf_size(64 * 1024)
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

/// Once per interval: publishes each room's viewer count if it changed, and closes rooms whose
/// streamer has been away longer than `streamer_away_close_ms` (a crashed streamer app must not
/// leave its room open forever).
async fn room_ticker(app: Arc<App>) {
    let rooms = &app.config.rooms;
    let mut interval = tokio::time::interval(Duration::from_millis(rooms.viewer_count_interval_ms));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = app.shutdown.cancelled() => return,
        }
        let now_ms = crate::ledger::now_ms();
        for room in app.rooms.all() {
            if room.streamer_away_for(rooms.streamer_away_close_ms, now_ms) {
                if room.close("the streamer left").is_ok() {
                    tracing::info!(room = %room.id, "closed a room its streamer left");
                }
                app.rooms.remove(&room);
            } else {
                room.publish_viewers_if_changed();
            }
        }
    }
}

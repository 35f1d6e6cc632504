//! Test support for the ledger backends: which backend a test's servers use, a throwaway
//! PostgreSQL schema per test, and read access to a server's ledger whatever its backend.
//!
//! A money test is written once and run on both backends by [`on_both_ledgers!`]: the macro
//! turns the test into a module with a `sqlite` and a `postgres` test, each running the same body
//! with the backend set in a task-local. [`select`] (called when a test server starts) reads it
//! and, for PostgreSQL, creates a schema named `giftd_test_<random>` and points the server's
//! config at it (`options=-csearch_path=...`); the [`PgSchema`] guard drops the schema when the
//! test ends, also on panic, so tests run in parallel and leave nothing behind.
//!
//! `GIFTD_TEST_LEDGER=sqlite` or `=postgres` runs only that backend's variants (the other
//! variants return at once); unset, both run. `GIFTD_TEST_POSTGRES_URL` names the server
//! (default `postgres://postgres@127.0.0.1:5432/test`).

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use giftd::config::{Config, LedgerBackend};
use giftd::ledger::audit::AuditReport;

tokio::task_local! {
    static BACKEND: LedgerBackend;
}

/// Runs `test` with its servers on `backend`, unless `GIFTD_TEST_LEDGER` names the other one.
pub async fn on(backend: LedgerBackend, test: impl Future<Output = ()>) {
    let wanted = std::env::var("GIFTD_TEST_LEDGER").unwrap_or_default();
    let name = match backend {
        LedgerBackend::Sqlite => "sqlite",
        LedgerBackend::Postgres => "postgres",
    };
    if !wanted.is_empty() && wanted != name {
        eprintln!("GIFTD_TEST_LEDGER={wanted}: the {name} variant does not run");
        return;
    }
    BACKEND.scope(backend, test).await
}

/// The backend of the running test (SQLite outside [`on`]).
pub fn current() -> LedgerBackend {
    BACKEND.try_with(|b| *b).unwrap_or(LedgerBackend::Sqlite)
}

/// Writes a test once and runs it on both ledger backends: `name::sqlite` and `name::postgres`.
#[macro_export]
macro_rules! on_both_ledgers {
    ($(#[$attr:meta])* async fn $name:ident() $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn body() $body

            $(#[$attr])*
            async fn sqlite() {
                support::ledger::on(giftd::config::LedgerBackend::Sqlite, body()).await
            }

            $(#[$attr])*
            async fn postgres() {
                support::ledger::on(giftd::config::LedgerBackend::Postgres, body()).await
            }
        }
    };
}

/// Points `config` at the current test's backend. For PostgreSQL it creates a fresh schema and
/// returns its guard, which the caller keeps as long as the ledger is in use. A config already
/// on PostgreSQL (a restart) is left as it is.
pub fn select(config: &mut Config) -> Option<PgSchema> {
    if current() != LedgerBackend::Postgres || config.ledger.backend == LedgerBackend::Postgres {
        return None;
    }
    let schema = PgSchema::create();
    config.ledger.backend = LedgerBackend::Postgres;
    config.ledger.postgres_url = schema.url.clone();
    Some(schema)
}

fn server_url() -> String {
    std::env::var("GIFTD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// Runs `f` with a fresh connection on its own thread and runtime, so it works from sync code,
/// from `Drop` and from inside another runtime alike.
fn with_admin<T: Send + 'static>(
    f: impl FnOnce(tokio_postgres::Client) -> std::pin::Pin<Box<dyn Future<Output = T> + Send>>
        + Send
        + 'static,
) -> T {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let client = giftd::ledger::postgres::connect(&server_url())
                .await
                .expect("PostgreSQL for the tests (GIFTD_TEST_POSTGRES_URL)");
            f(client).await
        })
    })
    .join()
    .expect("admin thread")
}

/// A schema that exists for one test; dropped with everything in it when the guard drops.
#[derive(Debug)]
pub struct PgSchema {
    pub name: String,
    /// The server URL with this schema first on the search path.
    pub url: String,
}

impl PgSchema {
    pub fn create() -> PgSchema {
        let name = format!("giftd_test_{:016x}", rand::random::<u64>());
        let sql = format!("CREATE SCHEMA {name}");
        with_admin(move |c| Box::pin(async move { c.batch_execute(&sql).await.unwrap() }));
        let base = server_url();
        let sep = if base.contains('?') { '&' } else { '?' };
        // The application name lets the drop find the connections still using the schema.
        let url = format!("{base}{sep}options=-csearch_path%3D{name}&application_name={name}");
        PgSchema { name, url }
    }

    /// A PostgreSQL ledger on this schema (migrated as it opens) with one writer, so requests
    /// sent together share its batches of up to `batch_max`.
    pub async fn ledger(&self, batch_max: usize) -> giftd::ledger::postgres::PostgresLedger {
        use giftd::ledger::postgres::{PostgresLedger, PostgresOptions};
        let options = PostgresOptions {
            url: self.url.clone(),
            batch_max,
            queue_max: 4 * batch_max,
            call_timeout_ms: 10_000,
            pool_max: 2,
            writers: 1,
        };
        let histogram =
            prometheus::Histogram::with_opts(prometheus::HistogramOpts::new("t", "t")).unwrap();
        PostgresLedger::open(options, histogram).await.unwrap()
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let sql = format!(
            // A server still shutting down may hold locks in the schema, and on a current-thread
            // runtime it cannot finish while this drop blocks: end its sessions first.
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE application_name = '{0}' AND pid <> pg_backend_pid();
             SET lock_timeout = '20s';
             DROP SCHEMA IF EXISTS {0} CASCADE",
            self.name
        );
        let dropped = with_admin(move |c| Box::pin(async move { c.batch_execute(&sql).await }));
        if let Err(e) = dropped {
            eprintln!("could not drop test schema {}: {e}", self.name);
        }
    }
}

/// Read access to the ledger a server writes, whatever its backend. Cells come back as text.
pub enum LedgerDb {
    Sqlite(PathBuf, std::sync::Mutex<rusqlite::Connection>),
    Postgres(String, tokio_postgres::Client),
}

impl LedgerDb {
    /// Opens the ledger `config` names (read-only for SQLite). Waits (bounded) for a SQLite file
    /// the server has not created yet.
    pub async fn open(config: &Config) -> LedgerDb {
        match config.ledger.backend {
            LedgerBackend::Sqlite => {
                let path = config.ledger.path.clone();
                let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
                for _ in 0..500 {
                    if let Ok(conn) = rusqlite::Connection::open_with_flags(&path, flags) {
                        conn.busy_timeout(std::time::Duration::from_secs(5))
                            .unwrap();
                        return LedgerDb::Sqlite(path, std::sync::Mutex::new(conn));
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                panic!("ledger {} never appeared", path.display());
            }
            LedgerBackend::Postgres => {
                let url = config.ledger.postgres_url.clone();
                let client = giftd::ledger::postgres::connect(&url).await.unwrap();
                LedgerDb::Postgres(url, client)
            }
        }
    }

    /// The rows of `sql`, each cell as text (`NULL` for null). One statement, so on either
    /// backend it reads one consistent snapshot.
    pub async fn rows(&self, sql: &str) -> Vec<Vec<String>> {
        match self {
            LedgerDb::Sqlite(_, conn) => {
                let conn = conn.lock().unwrap();
                let mut stmt = conn.prepare(sql).unwrap();
                let n = stmt.column_count();
                stmt.query_map([], |r| {
                    (0..n)
                        .map(|i| {
                            r.get::<_, rusqlite::types::Value>(i).map(|v| match v {
                                rusqlite::types::Value::Integer(i) => i.to_string(),
                                rusqlite::types::Value::Text(t) => t,
                                rusqlite::types::Value::Null => "NULL".to_owned(),
                                other => format!("{other:?}"),
                            })
                        })
                        .collect::<rusqlite::Result<Vec<_>>>()
                })
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap()
            }
            LedgerDb::Postgres(_, client) => client
                .simple_query(sql)
                .await
                .unwrap()
                .into_iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                        (0..row.len())
                            .map(|i| row.get(i).unwrap_or("NULL").to_owned())
                            .collect(),
                    ),
                    _ => None,
                })
                .collect(),
        }
    }

    /// The integers of the single row of `sql`.
    pub async fn ints(&self, sql: &str) -> Vec<i64> {
        let rows = self.rows(sql).await;
        assert_eq!(rows.len(), 1, "{sql}");
        rows[0].iter().map(|c| c.parse().unwrap()).collect()
    }

    /// `giftd::ledger::audit` on this ledger.
    pub async fn audit(&self) -> AuditReport {
        match self {
            LedgerDb::Sqlite(path, _) => giftd::ledger::audit::audit(path).unwrap(),
            LedgerDb::Postgres(url, _) => giftd::ledger::audit::audit_postgres(url).await.unwrap(),
        }
    }

    /// The arguments of `giftd audit` for this ledger.
    pub fn audit_args(&self) -> Vec<String> {
        match self {
            LedgerDb::Sqlite(path, _) => vec!["--db".into(), path.display().to_string()],
            LedgerDb::Postgres(url, _) => vec!["--postgres".into(), url.clone()],
        }
    }
}

/// A SQL string literal (test data only).
pub fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// One snapshot of the ledger's totals, read in a single statement (one read transaction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub topups: i64,
    pub wallets: i64,
    pub streamers: i64,
    pub stores: i64,
    pub platform: i64,
    pub external: i64,
    pub negative: i64,
    pub gifts: i64,
    pub gifted: i64,
    /// Coins of reversed top-ups.
    pub refunds: i64,
    /// The sum of the receivables: minus all debt.
    pub receivables: i64,
    /// Receivables above zero (there must be none).
    pub positive_receivables: i64,
    /// Coins in red packets, neither grabbed nor returned yet.
    pub packets: i64,
}

pub async fn read_totals(db: &LedgerDb) -> Totals {
    let v = db
        .ints(
            "SELECT
            (SELECT COALESCE(SUM(coins), 0) FROM topups),
            (SELECT COALESCE(SUM(balance_coins), 0) FROM accounts WHERE account LIKE 'wallet:%'),
            (SELECT COALESCE(SUM(balance_coins), 0) FROM accounts WHERE account LIKE 'streamer:%'),
            (SELECT COALESCE(SUM(balance_coins), 0) FROM accounts WHERE account LIKE 'store:%'),
            (SELECT COALESCE(SUM(balance_coins), 0) FROM accounts WHERE account = 'platform'),
            (SELECT COALESCE(SUM(balance_coins), 0) FROM accounts WHERE account LIKE 'external:%'),
            (SELECT COUNT(*) FROM accounts WHERE external = 0 AND balance_coins < 0),
            (SELECT COUNT(*) FROM gifts),
            (SELECT COALESCE(SUM(price_coins), 0) FROM gifts),
            (SELECT COALESCE(SUM(coins), 0) FROM refunds),
            (SELECT COALESCE(SUM(balance_coins), 0) FROM accounts WHERE account LIKE 'receivable:%'),
            (SELECT COUNT(*) FROM accounts WHERE account LIKE 'receivable:%' AND balance_coins > 0),
            (SELECT COALESCE(SUM(balance_coins), 0) FROM accounts WHERE account LIKE 'packet:%')",
        )
        .await;
    Totals {
        topups: v[0],
        wallets: v[1],
        streamers: v[2],
        stores: v[3],
        platform: v[4],
        external: v[5],
        negative: v[6],
        gifts: v[7],
        gifted: v[8],
        refunds: v[9],
        receivables: v[10],
        positive_receivables: v[11],
        packets: v[12],
    }
}

pub fn check(t: &Totals) {
    // What came in and did not go back out is in wallets, earnings, stores and the platform,
    // less what users owe for coins spent before their purchase was reversed.
    assert_eq!(
        t.wallets + t.streamers + t.stores + t.platform + t.packets + t.receivables,
        t.topups - t.refunds,
        "money not conserved: {t:?}"
    );
    assert_eq!(
        t.external,
        t.refunds - t.topups,
        "external accounts disagree: {t:?}"
    );
    assert_eq!(t.negative, 0, "negative balance: {t:?}");
    assert_eq!(t.positive_receivables, 0, "receivable above zero: {t:?}");
    assert_eq!(
        t.streamers + t.stores + t.platform,
        t.gifted,
        "shares do not add up to gifts: {t:?}"
    );
}

/// Reads the ledger in a loop until `stop`, checking every snapshot. Bounded by count and time.
pub async fn checker(db: LedgerDb, stop: Arc<AtomicBool>) -> (u64, Totals) {
    let started = Instant::now();
    let mut reads = 0u64;
    let mut last = read_totals(&db).await;
    while !stop.load(Ordering::Relaxed)
        && reads < 200_000
        && started.elapsed() < Duration::from_secs(120)
    {
        let t = read_totals(&db).await;
        check(&t);
        assert!(
            t.topups >= last.topups && t.gifts >= last.gifts && t.refunds >= last.refunds,
            "{t:?} after {last:?}"
        );
        last = t;
        reads += 1;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    (reads, last)
}

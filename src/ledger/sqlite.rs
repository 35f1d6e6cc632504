//! The embedded SQLite ledger: one writer thread, group commit, WAL with `synchronous=FULL`.
//!
//! Callers send requests over a bounded queue and await a oneshot reply. The writer thread takes
//! the first waiting request plus whatever else is queued (up to `batch_max`), applies them all in
//! one `BEGIN IMMEDIATE` transaction, commits once, and only then replies to all of them. One fsync
//! thus covers a whole batch, and no reply leaves before its commit.
//!
//! Every request checks whatever can refuse it (insufficient funds, a key conflict) before its
//! first write, so a refusal leaves nothing behind and needs no savepoint. A storage failure
//! (a read-only file, a full disk, a violated constraint) aborts the whole batch: it rolls back and
//! every request in it is refused with `ledger_unavailable`, so nothing half-applied can commit.
//!
//! A single writer also makes idempotency simple: a repeated key later in the same batch sees the
//! first application through the open transaction.
//!
//! What is owed to whom comes from `ledger/posting.rs`; this module only stores it. Each write
//! carries a deadline ticket (`ledger/deadline.rs`): the writer skips a request whose caller gave
//! up before it started, so a timed-out caller is never charged. Gift ids are generated, not
//! derived from a row id, so they stay unique across nodes and backends.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use prometheus::Histogram;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

mod pk;

use super::deadline::{self, Ticket};
use super::pk::{PkBattle, PkChallenge, PkChange};
use super::posting::Allowance;
use super::posting::{self, AccountKind, BatchSums, Entry};
use super::{
    new_gift_id, new_packet_id, now_ms, CapPolicy, GiftOutcome, GiftReceipt, GiftRequest, Gifter,
    GrabReceipt, GrabView, Ledger, Neighbourhood, PacketDrop, PacketEnd, PacketEndReason,
    PacketGrab, PacketReceipt, RefundReason, RefundReceipt, RefundRequest, Spending, TopUpReceipt,
    TopUpRequest, UserLimits, Wallet,
};
use crate::error::{Error, Result};
use crate::gift::{Channel, ChannelCoins};
use pk::PkWrite;

/// Maps SQLite's errors to the crate's: any storage failure is `ledger_unavailable`.
pub(crate) trait Db<T> {
    fn db(self) -> Result<T>;
}

impl<T> Db<T> for rusqlite::Result<T> {
    fn db(self) -> Result<T> {
        self.map_err(|e| Error::LedgerUnavailable(e.to_string()))
    }
}

pub(crate) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS accounts (
    account       TEXT PRIMARY KEY,
    balance_coins INTEGER NOT NULL,
    external      INTEGER NOT NULL,
    CHECK (external = 1 OR balance_coins >= 0)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS txns (
    txn_id         INTEGER PRIMARY KEY,
    kind           TEXT NOT NULL,
    actor          TEXT NOT NULL,
    idem_key       TEXT NOT NULL,
    payload_sha256 TEXT NOT NULL,
    created_ms     INTEGER NOT NULL,
    UNIQUE (kind, actor, idem_key)
);
CREATE TABLE IF NOT EXISTS entries (
    entry_id     INTEGER PRIMARY KEY,
    txn_id       INTEGER NOT NULL REFERENCES txns(txn_id),
    account      TEXT NOT NULL REFERENCES accounts(account) DEFERRABLE INITIALLY DEFERRED,
    amount_coins INTEGER NOT NULL,
    channel      TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS topups (
    txn_id        INTEGER PRIMARY KEY REFERENCES txns(txn_id),
    user          TEXT NOT NULL,
    channel       TEXT NOT NULL,
    coins         INTEGER NOT NULL CHECK (coins > 0),
    balance_coins INTEGER NOT NULL,
    repaid_coins  INTEGER NOT NULL DEFAULT 0 CHECK (repaid_coins BETWEEN 0 AND coins)
);
CREATE TABLE IF NOT EXISTS gifts (
    txn_id         INTEGER PRIMARY KEY REFERENCES txns(txn_id),
    gift_id        TEXT NOT NULL UNIQUE,
    room           TEXT NOT NULL,
    sender         TEXT NOT NULL,
    streamer       TEXT NOT NULL,
    sticker        TEXT NOT NULL,
    price_coins    INTEGER NOT NULL CHECK (price_coins > 0),
    store_coins    INTEGER NOT NULL,
    streamer_coins INTEGER NOT NULL,
    platform_coins INTEGER NOT NULL,
    funding_ios    INTEGER NOT NULL,
    funding_android INTEGER NOT NULL,
    funding_web    INTEGER NOT NULL,
    balance_coins  INTEGER NOT NULL,
    room_seq       INTEGER,
    created_ms     INTEGER NOT NULL,
    CHECK (store_coins + streamer_coins + platform_coins = price_coins)
);
CREATE TABLE IF NOT EXISTS refunds (
    txn_id        INTEGER PRIMARY KEY REFERENCES txns(txn_id),
    purchase_id   TEXT NOT NULL UNIQUE,
    reason        TEXT NOT NULL,
    user          TEXT NOT NULL,
    channel       TEXT NOT NULL,
    coins         INTEGER NOT NULL CHECK (coins > 0),
    wallet_coins  INTEGER NOT NULL CHECK (wallet_coins >= 0),
    debt_coins    INTEGER NOT NULL CHECK (debt_coins >= 0),
    balance_coins INTEGER NOT NULL,
    owed_coins    INTEGER NOT NULL,
    created_ms    INTEGER NOT NULL,
    CHECK (wallet_coins + debt_coins = coins)
);
CREATE TABLE IF NOT EXISTS packets (
    txn_id          INTEGER PRIMARY KEY REFERENCES txns(txn_id),
    packet_id       TEXT NOT NULL UNIQUE,
    room            TEXT NOT NULL,
    sender          TEXT NOT NULL,
    total_coins     INTEGER NOT NULL CHECK (total_coins > 0),
    shares          INTEGER NOT NULL CHECK (shares >= 1 AND shares <= total_coins),
    funding_ios     INTEGER NOT NULL,
    funding_android INTEGER NOT NULL,
    funding_web     INTEGER NOT NULL,
    balance_coins   INTEGER NOT NULL,
    grabbed_shares  INTEGER NOT NULL DEFAULT 0 CHECK (grabbed_shares BETWEEN 0 AND shares),
    grabbed_coins   INTEGER NOT NULL DEFAULT 0,
    returned_coins  INTEGER NOT NULL DEFAULT 0,
    created_ms      INTEGER NOT NULL,
    expires_ms      INTEGER NOT NULL,
    ended_ms        INTEGER,
    CHECK (funding_ios + funding_android + funding_web = total_coins),
    CHECK (grabbed_coins + returned_coins <= total_coins)
);
CREATE TABLE IF NOT EXISTS packet_shares (
    packet_id   TEXT NOT NULL,
    share_index INTEGER NOT NULL,
    coins       INTEGER NOT NULL CHECK (coins >= 1),
    PRIMARY KEY (packet_id, share_index)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS packet_grabs (
    txn_id      INTEGER PRIMARY KEY REFERENCES txns(txn_id),
    packet_id   TEXT NOT NULL,
    share_index INTEGER NOT NULL,
    grabber     TEXT NOT NULL,
    coins       INTEGER NOT NULL CHECK (coins >= 1),
    ch_ios      INTEGER NOT NULL,
    ch_android  INTEGER NOT NULL,
    ch_web      INTEGER NOT NULL,
    balance_coins INTEGER NOT NULL,
    created_ms  INTEGER NOT NULL,
    UNIQUE (packet_id, grabber),
    UNIQUE (packet_id, share_index),
    CHECK (ch_ios + ch_android + ch_web = coins)
);
CREATE TABLE IF NOT EXISTS user_limits (
    user              TEXT PRIMARY KEY,
    window_coins_max  INTEGER CHECK (window_coins_max >= 0),
    minor             INTEGER NOT NULL CHECK (minor IN (0, 1)),
    updated_ms        INTEGER NOT NULL
) WITHOUT ROWID;
"#;

/// Indexes, created after the tables' migrations (a rebuilt table loses its indexes).
const INDEXES: &str = r#"
CREATE INDEX IF NOT EXISTS gifts_by_sender ON gifts (sender, created_ms);
CREATE INDEX IF NOT EXISTS packets_by_sender ON packets (sender, created_ms);
CREATE INDEX IF NOT EXISTS packets_open ON packets (expires_ms) WHERE ended_ms IS NULL;
"#;

type Reply<T> = oneshot::Sender<Result<T>>;

/// A red packet request and its reply.
enum PacketOp {
    Drop(Box<PacketDrop>, Reply<PacketReceipt>),
    Grab(PacketGrab, Reply<GrabReceipt>),
    Expire(u64, Reply<Vec<PacketEnd>>),
}

enum Op {
    TopUp(TopUpRequest, Reply<TopUpReceipt>, Ticket),
    Gift(Box<GiftRequest>, Reply<GiftOutcome>, Ticket),
    Refund(RefundRequest, Reply<RefundReceipt>, Ticket),
    Packet(PacketOp, Ticket),
    GiftSeq(String, u64),
    SetLimits(String, UserLimits, Reply<()>, Ticket),
    Pk(PkWrite, Reply<PkBattle>, Ticket),
    Probe(Reply<()>, Ticket),
    Fault(Option<StorageFault>),
    Shutdown(oneshot::Sender<()>),
}

/// Storage failures that can be switched on in a running ledger, for fault-injection tests and
/// drills. (A full disk needs no hook: the tests fill a small filesystem.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageFault {
    /// Every write fails as on a read-only file (SQLITE_READONLY), on the writer's own connection.
    ReadOnly,
    /// Every batch applies in full and then fails to commit, as when the WAL's fsync fails: the
    /// transaction rolls back after all its requests were applied.
    CommitFails,
}

/// Options for [`SqliteLedger::open`].
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    pub path: PathBuf,
    pub batch_max: usize,
    pub queue_max: usize,
    /// Deadline of every call (`ledger.call_timeout_ms`).
    pub call_timeout_ms: u64,
}

pub struct SqliteLedger {
    tx: mpsc::Sender<Op>,
    /// Balance reads go to their own connection: in WAL mode they see the last commit without
    /// waiting behind the writer's batches.
    reader: Arc<Mutex<Connection>>,
    ready: Arc<AtomicBool>,
    writer: Mutex<Option<JoinHandle<()>>>,
    call_timeout: Duration,
}

impl SqliteLedger {
    /// Opens (creating if needed) the database and starts the writer thread.
    pub fn open(options: SqliteOptions, commit_seconds: Histogram) -> Result<SqliteLedger> {
        assert!(options.batch_max >= 1 && options.queue_max >= 1 && options.call_timeout_ms >= 1);
        let conn = open_connection(&options.path)?;
        let reader = open_connection(&options.path)?;
        reader.pragma_update(None, "query_only", true).db()?;
        let (tx, rx) = mpsc::channel(options.queue_max);
        let ready = Arc::new(AtomicBool::new(true));
        let writer = Writer {
            conn,
            rx,
            batch_max: options.batch_max,
            ready: ready.clone(),
            commit_seconds,
            fault: None,
        };
        let handle = std::thread::Builder::new()
            .name("giftd-ledger".into())
            .spawn(move || writer.run())
            .map_err(|e| Error::Internal(format!("spawning ledger writer: {e}")))?;
        Ok(SqliteLedger {
            tx,
            reader: Arc::new(Mutex::new(reader)),
            ready,
            writer: Mutex::new(Some(handle)),
            call_timeout: Duration::from_millis(options.call_timeout_ms),
        })
    }

    /// Switches an injected storage fault on (`Some`) or off (`None`). Takes effect in queue order.
    pub async fn inject_fault(&self, fault: Option<StorageFault>) {
        let _ = self.tx.send(Op::Fault(fault)).await;
        // A probe behind it confirms the fault is in place (or gone) before returning.
        let _ = self.probe().await;
    }

    /// Runs a read on the reader connection, off the async workers.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        if self.tx.is_closed() {
            return Err(Error::ShuttingDown);
        }
        let reader = self.reader.clone();
        let task = tokio::task::spawn_blocking(move || {
            let conn = reader.lock().unwrap_or_else(|p| p.into_inner());
            f(&conn)
        });
        deadline::read(self.call_timeout, async {
            task.await
                .map_err(|e| Error::Internal(format!("ledger read task: {e}")))?
        })
        .await
    }

    /// Queues a write and waits for its commit, under the call deadline.
    async fn call<T>(&self, make: impl FnOnce(Reply<T>, Ticket) -> Op) -> Result<T> {
        deadline::write(self.call_timeout, |ticket, reply| async move {
            self.tx
                .send(make(reply, ticket))
                .await
                .map_err(|_| Error::ShuttingDown)
        })
        .await
    }
}

/// Opens a connection with the durability settings every ledger connection uses.
pub fn open_connection(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path).db()?;
    conn.busy_timeout(std::time::Duration::from_secs(5)).db()?;
    conn.set_prepared_statement_cache_capacity(64);
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .db()?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::LedgerUnavailable(format!(
            "could not enable WAL (got {mode})"
        )));
    }
    // temp_store=MEMORY keeps statement journals off the disk; a larger page cache keeps the hot
    // accounts and indexes in memory. Foreign keys are documented in the schema but not enforced:
    // the per-row parent lookups cost a fifth of a gift's write time, only this module writes,
    // and `giftd audit` checks that every entry names an existing account and transaction.
    conn.execute_batch(
        "PRAGMA synchronous=FULL; PRAGMA foreign_keys=OFF; PRAGMA temp_store=MEMORY; PRAGMA cache_size=-65536;",
    )
    .db()?;
    conn.execute_batch(SCHEMA).db()?;
    migrate_gift_ids(&conn)?;
    migrate_topup_repaid(&conn)?;
    migrate_gifter_totals(&conn)?;
    conn.execute_batch(INDEXES).db()?;
    conn.execute_batch(pk::SCHEMA).db()?;
    Ok(conn)
}

/// Files written before gift ids were generated tie each gift id to its row id with a `CHECK`.
/// This rebuilds that table once without it (and with gift ids unique); old ids stay valid.
fn migrate_gift_ids(conn: &Connection) -> Result<()> {
    let sql: String = conn
        .query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'gifts'",
            [],
            |r| r.get(0),
        )
        .db()?;
    if !sql.contains("'g' || txn_id") {
        return Ok(());
    }
    let create = SCHEMA
        .split_inclusive(';')
        .find(|stmt| stmt.contains("CREATE TABLE IF NOT EXISTS gifts"))
        .expect("the schema creates gifts");
    conn.execute_batch(&format!(
        "BEGIN IMMEDIATE;
         ALTER TABLE gifts RENAME TO gifts_rowid_ids;
         {create}
         INSERT INTO gifts SELECT * FROM gifts_rowid_ids;
         DROP TABLE gifts_rowid_ids;
         COMMIT;"
    ))
    .db()?;
    tracing::info!("ledger file migrated: gift ids no longer tied to row ids");
    Ok(())
}

/// Files written before refunds have no `topups.repaid_coins`: add it (every old top-up repaid
/// nothing, since there was no debt to repay).
fn migrate_topup_repaid(conn: &Connection) -> Result<()> {
    let has: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM pragma_table_info('topups') WHERE name = 'repaid_coins')",
            [],
            |r| r.get(0),
        )
        .db()?;
    if !has {
        conn.execute_batch(
            "ALTER TABLE topups ADD COLUMN repaid_coins INTEGER NOT NULL DEFAULT 0 CHECK (repaid_coins BETWEEN 0 AND coins)",
        )
        .db()?;
    }
    Ok(())
}

/// Each streamer's gifters with their summed coins, for the all-time leaderboard: kept by a
/// trigger in every gift's own transaction, so it always agrees with `gifts` (`giftd audit`
/// checks it). Files from before it get it filled from their gifts, once. Runs after
/// [`migrate_gift_ids`], which rebuilds `gifts` (and would drop a trigger on it).
fn migrate_gifter_totals(conn: &Connection) -> Result<()> {
    let has: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'gifter_totals')",
            [],
            |r| r.get(0),
        )
        .db()?;
    if has {
        return Ok(());
    }
    conn.execute_batch(
        "BEGIN IMMEDIATE;
         CREATE TABLE gifter_totals (
             streamer TEXT NOT NULL,
             sender   TEXT NOT NULL,
             coins    INTEGER NOT NULL CHECK (coins > 0),
             PRIMARY KEY (streamer, sender)
         ) WITHOUT ROWID;
         CREATE INDEX gifter_totals_by_rank ON gifter_totals (streamer, coins DESC, sender);
         CREATE TRIGGER gifts_add_to_gifter_totals AFTER INSERT ON gifts BEGIN
             INSERT INTO gifter_totals (streamer, sender, coins)
             VALUES (NEW.streamer, NEW.sender, NEW.price_coins)
             ON CONFLICT (streamer, sender) DO UPDATE SET coins = coins + excluded.coins;
         END;
         INSERT INTO gifter_totals (streamer, sender, coins)
             SELECT streamer, sender, SUM(price_coins) FROM gifts GROUP BY streamer, sender;
         COMMIT;",
    )
    .db()
}

#[async_trait]
impl Ledger for SqliteLedger {
    async fn top_up(&self, req: TopUpRequest) -> Result<TopUpReceipt> {
        super::check_top_up(&req)?;
        self.call(|r, t| Op::TopUp(req, r, t)).await
    }

    async fn gift(&self, req: GiftRequest) -> Result<GiftOutcome> {
        super::check_key(&req.idempotency_key, "key")?;
        self.call(|r, t| Op::Gift(Box::new(req), r, t)).await
    }

    async fn refund(&self, req: RefundRequest) -> Result<RefundReceipt> {
        super::check_key(&req.purchase_id, "purchase_id")?;
        self.call(|r, t| Op::Refund(req, r, t)).await
    }

    async fn drop_packet(&self, req: PacketDrop) -> Result<PacketReceipt> {
        super::check_key(&req.key, "key")?;
        self.call(|r, t| Op::Packet(PacketOp::Drop(Box::new(req), r), t))
            .await
    }

    async fn grab_packet(&self, req: PacketGrab) -> Result<GrabReceipt> {
        self.call(|r, t| Op::Packet(PacketOp::Grab(req, r), t))
            .await
    }

    async fn expire_packets(&self, now_ms: u64) -> Result<Vec<PacketEnd>> {
        self.call(|r, t| Op::Packet(PacketOp::Expire(now_ms, r), t))
            .await
    }

    fn note_gift_seq(&self, gift_id: &str, seq: u64) {
        let _ = self.tx.try_send(Op::GiftSeq(gift_id.to_owned(), seq));
    }

    async fn wallet(&self, user: &str) -> Result<Wallet> {
        let user = user.to_owned();
        self.read(move |conn| wallet(conn, &user)).await
    }

    async fn earnings(&self, streamer: &str) -> Result<u64> {
        let streamer = streamer.to_owned();
        self.read(move |conn| earnings(conn, &streamer)).await
    }

    async fn top_gifters(&self, streamer: &str, limit: usize) -> Result<Vec<Gifter>> {
        let streamer = streamer.to_owned();
        self.read(move |conn| {
            gifters(
                conn,
                "SELECT sender, coins FROM gifter_totals WHERE streamer = ?1
                 ORDER BY coins DESC, sender LIMIT ?2",
                params![streamer, limit as i64],
            )
        })
        .await
    }

    async fn gifter_around(
        &self,
        streamer: &str,
        user: &str,
        neighbours: usize,
    ) -> Result<Option<Neighbourhood>> {
        let (streamer, user) = (streamer.to_owned(), user.to_owned());
        self.read(move |conn| gifter_around(conn, &streamer, &user, neighbours))
            .await
    }

    async fn room_gifts_since(
        &self,
        room: &str,
        since_ms: u64,
        step_ms: u64,
    ) -> Result<Vec<(String, u64, u64)>> {
        assert!(step_ms > 0, "a step has a length");
        let room = room.to_owned();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT sender, (created_ms / ?3) * ?3, SUM(price_coins) FROM gifts
                     WHERE room = ?1 AND created_ms >= ?2 GROUP BY 1, 2",
                )
                .db()?;
            let rows = stmt
                .query_map(params![room, since_ms as i64, step_ms as i64], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)? as u64,
                        r.get::<_, i64>(2)? as u64,
                    ))
                })
                .db()?;
            rows.collect::<rusqlite::Result<Vec<_>>>().db()
        })
        .await
    }

    async fn set_limits(&self, user: &str, limits: UserLimits) -> Result<()> {
        let user = user.to_owned();
        self.call(|r, t| Op::SetLimits(user, limits, r, t)).await
    }

    async fn pk_create(&self, challenge: PkChallenge) -> Result<PkBattle> {
        self.call(|r, t| Op::Pk(PkWrite::Create(challenge), r, t))
            .await
    }

    async fn pk_change(&self, battle_id: &str, change: PkChange) -> Result<PkBattle> {
        let id = battle_id.to_owned();
        self.call(|r, t| Op::Pk(PkWrite::Change(id, change), r, t))
            .await
    }

    async fn pk_battle(&self, battle_id: &str) -> Result<Option<PkBattle>> {
        let id = battle_id.to_owned();
        self.read(move |conn| pk::read(conn, &id)).await
    }

    async fn spending(&self, user: &str, policy: CapPolicy) -> Result<Spending> {
        let user = user.to_owned();
        self.read(move |conn| {
            let limits = limits_of(conn, &user)?;
            let spent = spent_since(conn, &user, now_ms().saturating_sub(policy.window_ms))?;
            Ok(Spending::new(limits, &policy, spent))
        })
        .await
    }

    async fn probe(&self) -> Result<()> {
        self.call(Op::Probe).await
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && !self.tx.is_closed()
    }

    async fn close(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Op::Shutdown(done)).await.is_ok() {
            let _ = wait.await;
        }
        let handle = self.writer.lock().expect("writer handle lock").take();
        if let Some(handle) = handle {
            // The writer has replied to Shutdown and is returning; joining is immediate.
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}

struct Writer {
    conn: Connection,
    rx: mpsc::Receiver<Op>,
    batch_max: usize,
    ready: Arc<AtomicBool>,
    commit_seconds: Histogram,
    fault: Option<StorageFault>,
}

/// The reply owed for one request, held until the batch commits.
enum Pending {
    TopUp(Reply<TopUpReceipt>, Result<TopUpReceipt>),
    Gift(Reply<GiftOutcome>, Box<Result<GiftOutcome>>),
    Refund(Reply<RefundReceipt>, Result<RefundReceipt>),
    Drop(Reply<PacketReceipt>, Result<PacketReceipt>),
    Grab(Reply<GrabReceipt>, Result<GrabReceipt>),
    Expire(Reply<Vec<PacketEnd>>, Result<Vec<PacketEnd>>),
    Pk(Reply<PkBattle>, Result<PkBattle>),
    Probe(Reply<()>, Result<()>),
}

impl Pending {
    fn fail(self, e: &Error) -> Pending {
        match self {
            Pending::TopUp(r, _) => Pending::TopUp(r, Err(e.clone())),
            Pending::Gift(r, _) => Pending::Gift(r, Box::new(Err(e.clone()))),
            Pending::Refund(r, _) => Pending::Refund(r, Err(e.clone())),
            Pending::Drop(r, _) => Pending::Drop(r, Err(e.clone())),
            Pending::Grab(r, _) => Pending::Grab(r, Err(e.clone())),
            Pending::Expire(r, _) => Pending::Expire(r, Err(e.clone())),
            Pending::Pk(r, _) => Pending::Pk(r, Err(e.clone())),
            Pending::Probe(r, _) => Pending::Probe(r, Err(e.clone())),
        }
    }

    /// Whether this request failed because storage did (not because of the request itself).
    fn storage_failed(&self) -> bool {
        let unavailable = |e: Option<&Error>| matches!(e, Some(Error::LedgerUnavailable(_)));
        match self {
            Pending::TopUp(_, v) => unavailable(v.as_ref().err()),
            Pending::Gift(_, v) => unavailable(v.as_ref().as_ref().err()),
            Pending::Refund(_, v) => unavailable(v.as_ref().err()),
            Pending::Drop(_, v) => unavailable(v.as_ref().err()),
            Pending::Grab(_, v) => unavailable(v.as_ref().err()),
            Pending::Expire(_, v) => unavailable(v.as_ref().err()),
            Pending::Pk(_, v) => unavailable(v.as_ref().err()),
            Pending::Probe(_, v) => unavailable(v.as_ref().err()),
        }
    }

    fn send(self) {
        // A caller that gave up (its connection closed) simply does not hear the answer; the
        // write stands and a retry with the same key replays it.
        match self {
            Pending::TopUp(r, v) => drop(r.send(v)),
            Pending::Gift(r, v) => drop(r.send(*v)),
            Pending::Refund(r, v) => drop(r.send(v)),
            Pending::Drop(r, v) => drop(r.send(v)),
            Pending::Grab(r, v) => drop(r.send(v)),
            Pending::Expire(r, v) => drop(r.send(v)),
            Pending::Pk(r, v) => drop(r.send(v)),
            Pending::Probe(r, v) => drop(r.send(v)),
        }
    }
}

impl Writer {
    fn run(mut self) {
        let mut batch = Vec::with_capacity(self.batch_max);
        while let Some(first) = self.rx.blocking_recv() {
            batch.push(first);
            while batch.len() < self.batch_max {
                match self.rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            let shutdown = self.process(&mut batch);
            if let Some(done) = shutdown {
                // Anything that raced in behind Shutdown is refused by dropping its reply.
                self.rx.close();
                while let Ok(op) = self.rx.try_recv() {
                    drop(op);
                }
                let _ = done.send(());
                return;
            }
        }
    }

    /// Applies and commits one batch, then replies. Returns the shutdown signal if the batch held
    /// one; requests after it in the batch are still applied, since they were queued before it
    /// was seen.
    fn process(&mut self, batch: &mut Vec<Op>) -> Option<oneshot::Sender<()>> {
        let started = Instant::now();
        let mut shutdown = None;
        let mut pending = Vec::with_capacity(batch.len());
        // Fault switches act on the connection itself, ahead of the batch: switching a read-only
        // fault off must not depend on a transaction that the fault prevents.
        batch.retain(|op| match op {
            Op::Fault(fault) => {
                match apply_fault(&self.conn, *fault) {
                    Ok(()) => self.fault = *fault,
                    Err(e) => tracing::error!(error = %e, "could not change the storage fault"),
                }
                false
            }
            _ => true,
        });
        let mut credits = BatchSums::default();
        let commit_fails = self.fault == Some(StorageFault::CommitFails);
        let outcome = (|| -> Result<()> {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .db()?;
            for op in batch.drain(..) {
                let failed = match op {
                    Op::Shutdown(done) => {
                        shutdown = Some(done);
                        None
                    }
                    // A caller that gave up before its request started was told nothing was
                    // charged: skip it (dropping its reply) so that stays true.
                    Op::TopUp(_, _, t)
                    | Op::Gift(_, _, t)
                    | Op::Refund(_, _, t)
                    | Op::Packet(_, t)
                    | Op::SetLimits(_, _, _, t)
                    | Op::Pk(_, _, t)
                    | Op::Probe(_, t)
                        if !t.start() =>
                    {
                        None
                    }
                    Op::TopUp(req, r, _) => {
                        let result = apply_top_up(&tx, &req, &mut credits);
                        let failed = storage_failure(&result);
                        pending.push(Pending::TopUp(r, result));
                        failed
                    }
                    Op::Gift(req, r, _) => {
                        let result = apply_gift(&tx, &req, &mut credits);
                        let failed = storage_failure(&result);
                        pending.push(Pending::Gift(r, Box::new(result)));
                        failed
                    }
                    Op::Refund(req, r, _) => {
                        let result = apply_refund(&tx, &req, &mut credits);
                        let failed = storage_failure(&result);
                        pending.push(Pending::Refund(r, result));
                        failed
                    }
                    Op::Packet(op, _) => {
                        let p = match op {
                            PacketOp::Drop(req, r) => Pending::Drop(r, apply_drop(&tx, &req)),
                            PacketOp::Grab(req, r) => Pending::Grab(r, apply_grab(&tx, &req)),
                            PacketOp::Expire(now, r) => Pending::Expire(r, apply_expire(&tx, now)),
                        };
                        let failed = p
                            .storage_failed()
                            .then(|| Error::LedgerUnavailable("a red packet write failed".into()));
                        pending.push(p);
                        failed
                    }
                    Op::GiftSeq(id, seq) => storage_failure(&apply_gift_seq(&tx, &id, seq)),
                    Op::SetLimits(user, limits, r, _) => {
                        let result = apply_set_limits(&tx, &user, limits);
                        let failed = storage_failure(&result);
                        pending.push(Pending::Probe(r, result));
                        failed
                    }
                    Op::Pk(write, r, _) => {
                        let result = pk::apply(&tx, &write);
                        let failed = storage_failure(&result);
                        pending.push(Pending::Pk(r, result));
                        failed
                    }
                    Op::Probe(r, _) => {
                        let result = apply_probe(&tx);
                        let failed = storage_failure(&result);
                        pending.push(Pending::Probe(r, result));
                        failed
                    }
                    Op::Fault(_) => unreachable!("faults are applied before the batch"),
                };
                if let Some(e) = failed {
                    return Err(e);
                }
            }
            flush(&tx, &mut credits)?;
            if commit_fails {
                // Dropping the transaction rolls it back, as a failed commit would.
                return Err(Error::LedgerUnavailable(
                    "injected fault: commit failed".into(),
                ));
            }
            tx.commit().db()?;
            Ok(())
        })();
        match outcome {
            Ok(()) => {
                // The batch committed, but a request inside it may have failed on storage (a
                // read-only file, a full disk): then the ledger is not ready either.
                let storage_ok = !pending.iter().any(Pending::storage_failed);
                if !storage_ok {
                    tracing::error!("ledger writes are failing; refusing money movements until storage recovers");
                }
                self.ready.store(storage_ok, Ordering::Relaxed);
                self.commit_seconds.observe(started.elapsed().as_secs_f64());
                pending.into_iter().for_each(Pending::send);
            }
            Err(e) => {
                tracing::error!(error = %e, requests = pending.len(), "ledger commit failed; batch refused");
                self.ready.store(false, Ordering::Relaxed);
                let e = match e {
                    Error::LedgerUnavailable(_) => e,
                    other => Error::LedgerUnavailable(other.to_string()),
                };
                // Requests the failed transaction never reached are refused as well.
                for op in batch.drain(..) {
                    match op {
                        Op::Shutdown(done) => shutdown = Some(done),
                        Op::TopUp(_, r, _) => drop(r.send(Err(e.clone()))),
                        Op::Gift(_, r, _) => drop(r.send(Err(e.clone()))),
                        Op::Refund(_, r, _) => drop(r.send(Err(e.clone()))),
                        Op::Packet(PacketOp::Drop(_, r), _) => drop(r.send(Err(e.clone()))),
                        Op::Packet(PacketOp::Grab(_, r), _) => drop(r.send(Err(e.clone()))),
                        Op::Packet(PacketOp::Expire(_, r), _) => drop(r.send(Err(e.clone()))),
                        Op::Probe(r, _) | Op::SetLimits(_, _, r, _) => drop(r.send(Err(e.clone()))),
                        Op::Pk(_, r, _) => drop(r.send(Err(e.clone()))),
                        Op::GiftSeq(..) | Op::Fault(_) => {}
                    }
                }
                pending.into_iter().for_each(|p| p.fail(&e).send());
            }
        }
        shutdown
    }
}

/// The error that must abort the batch, if `result` is a storage failure rather than a refusal.
fn storage_failure<T>(result: &Result<T>) -> Option<Error> {
    match result {
        Err(e @ Error::LedgerUnavailable(_)) => Some(e.clone()),
        _ => None,
    }
}

/// Adds `amount_coins` to an account's balance, creating the account if needed.
fn adjust(conn: &Connection, account: &str, amount_coins: i64) -> Result<()> {
    let external = AccountKind::of(account).is_some_and(AccountKind::may_go_negative);
    // Update first: the account usually exists. (An upsert would check the CHECK constraint
    // against the would-be inserted row, which is negative for every debit.)
    let updated = conn
        .prepare_cached("UPDATE accounts SET balance_coins = balance_coins + ?2 WHERE account = ?1")
        .db()?
        .execute(params![account, amount_coins])
        .db()?;
    if updated == 0 {
        conn.prepare_cached(
            "INSERT INTO accounts(account, balance_coins, external) VALUES (?1, ?2, ?3)",
        )
        .db()?
        .execute(params![account, amount_coins, external as i64])
        .db()?;
    }
    Ok(())
}

/// Writes a transaction's posting: wallet entries change their balance at once (later requests
/// in the batch read them), hot-account entries are summed into `sums`, and every entry is
/// recorded. Single-row inserts need no statement journal, which makes them cheaper than one
/// multi-row insert.
fn post(conn: &Connection, txn_id: i64, entries: &[Entry], sums: &mut BatchSums) -> Result<()> {
    let mut stmt = conn
        .prepare_cached(
            "INSERT INTO entries(txn_id, account, amount_coins, channel) VALUES (?1, ?2, ?3, ?4)",
        )
        .db()?;
    for e in entries {
        if e.kind().is_hot() {
            sums.add(e);
        } else {
            adjust(conn, &e.account, e.amount_coins)?;
        }
        stmt.execute(params![
            txn_id,
            e.account,
            e.amount_coins,
            e.channel.as_str()
        ])
        .db()?;
    }
    Ok(())
}

/// Writes the batch's summed hot-account changes, once per account.
fn flush(conn: &Connection, sums: &mut BatchSums) -> Result<()> {
    for (account, coins) in sums.drain_sorted() {
        adjust(conn, &account, coins)?;
    }
    Ok(())
}

fn balance_of(conn: &Connection, account: &str) -> Result<u64> {
    let v: Option<i64> = conn
        .prepare_cached("SELECT balance_coins FROM accounts WHERE account = ?1")
        .db()?
        .query_row([account], |r| r.get(0))
        .optional()
        .db()?;
    Ok(nonnegative(account, v.unwrap_or(0)))
}

/// A committed internal balance; a negative one would be a broken ledger, never clamped.
fn nonnegative(account: &str, balance_coins: i64) -> u64 {
    assert!(
        balance_coins >= 0,
        "account {account} holds {balance_coins} coins"
    );
    balance_coins as u64
}

fn channels(conn: &Connection, user: &str) -> Result<ChannelCoins> {
    // One range scan over the user's wallet accounts (`wallet:<user>:<channel>`); `;` sorts right
    // after `:`, so the range holds exactly this user's accounts.
    let (from, to) = (format!("wallet:{user}:"), format!("wallet:{user};"));
    let mut stmt = conn
        .prepare_cached(
            "SELECT account, balance_coins FROM accounts WHERE account >= ?1 AND account < ?2",
        )
        .db()?;
    let mut rows = stmt.query(params![from, to]).db()?;
    let mut c = [0u64; 3];
    while let Some(row) = rows.next().db()? {
        let account: String = row.get(0).db()?;
        let balance: i64 = row.get(1).db()?;
        if let Some(ch) = account.strip_prefix(from.as_str()).and_then(Channel::parse) {
            c[ch.index()] = nonnegative(&account, balance);
        }
    }
    Ok(c)
}

fn wallet(conn: &Connection, user: &str) -> Result<Wallet> {
    Ok(Wallet::from_channels(
        channels(conn, user)?,
        owed(conn, user)?,
    ))
}

/// What `user` owes: minus their receivable's balance, which is never above zero.
fn owed(conn: &Connection, user: &str) -> Result<u64> {
    let account = posting::receivable_account(user);
    let v: Option<i64> = conn
        .prepare_cached("SELECT balance_coins FROM accounts WHERE account = ?1")
        .db()?
        .query_row([&account], |r| r.get(0))
        .optional()
        .db()?;
    let balance = v.unwrap_or(0);
    assert!(balance <= 0, "receivable {account} holds {balance} coins");
    Ok(balance.unsigned_abs())
}

fn gifters(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<Vec<Gifter>> {
    let mut stmt = conn.prepare_cached(sql).db()?;
    let rows = stmt
        .query_map(params, |r| {
            Ok(Gifter {
                user: r.get(0)?,
                coins: r.get::<_, i64>(1)? as u64,
            })
        })
        .db()?;
    rows.collect::<rusqlite::Result<Vec<_>>>().db()
}

/// `user`'s place among `streamer`'s gifters: those ranked ahead are counted, then the nearest on
/// each side read from the board's index.
fn gifter_around(
    conn: &Connection,
    streamer: &str,
    user: &str,
    neighbours: usize,
) -> Result<Option<Neighbourhood>> {
    let coins: Option<i64> = conn
        .prepare_cached("SELECT coins FROM gifter_totals WHERE streamer = ?1 AND sender = ?2")
        .db()?
        .query_row(params![streamer, user], |r| r.get(0))
        .optional()
        .db()?;
    let Some(coins) = coins else {
        return Ok(None);
    };
    const AHEAD: &str = "streamer = ?1 AND (coins > ?2 OR (coins = ?2 AND sender < ?3))";
    const BEHIND: &str = "streamer = ?1 AND (coins < ?2 OR (coins = ?2 AND sender > ?3))";
    let ahead: i64 = conn
        .prepare_cached(&format!("SELECT COUNT(*) FROM gifter_totals WHERE {AHEAD}"))
        .db()?
        .query_row(params![streamer, coins, user], |r| r.get(0))
        .db()?;
    let n = neighbours as i64;
    let mut above = gifters(
        conn,
        &format!(
            "SELECT sender, coins FROM gifter_totals WHERE {AHEAD} ORDER BY coins, sender DESC LIMIT ?4"
        ),
        params![streamer, coins, user, n],
    )?;
    above.reverse();
    let below = gifters(
        conn,
        &format!(
            "SELECT sender, coins FROM gifter_totals WHERE {BEHIND} ORDER BY coins DESC, sender LIMIT ?4"
        ),
        params![streamer, coins, user, n],
    )?;
    let first_rank = ahead as u64 + 1 - above.len() as u64;
    let mut gifters = above;
    gifters.push(Gifter {
        user: user.to_owned(),
        coins: nonnegative("gifter_totals", coins),
    });
    gifters.extend(below);
    Ok(Some(Neighbourhood {
        first_rank,
        gifters,
    }))
}

fn earnings(conn: &Connection, streamer: &str) -> Result<u64> {
    balance_of(conn, &posting::streamer_account(streamer))
}

/// Looks up a prior application of `(kind, actor, key)`: its txn id, if its payload matches.
fn prior(
    conn: &Connection,
    kind: &str,
    actor: &str,
    key: &str,
    digest: &str,
) -> Result<Option<i64>> {
    let row: Option<(i64, String)> = conn
        .prepare_cached("SELECT txn_id, payload_sha256 FROM txns WHERE kind = ?1 AND actor = ?2 AND idem_key = ?3")
        .db()?
        .query_row(params![kind, actor, key], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
        .db()?;
    match row {
        Some((_, d)) if d != digest => Err(Error::IdempotencyConflict(key.to_owned())),
        Some((id, _)) => Ok(Some(id)),
        None => Ok(None),
    }
}

fn open_txn(
    conn: &Connection,
    kind: &str,
    actor: &str,
    key: &str,
    digest: &str,
    created_ms: u64,
) -> Result<i64> {
    conn.prepare_cached(
        "INSERT INTO txns(kind, actor, idem_key, payload_sha256, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .db()?
    .execute(params![kind, actor, key, digest, created_ms as i64])
    .db()?;
    Ok(conn.last_insert_rowid())
}

fn apply_top_up(
    conn: &Connection,
    req: &TopUpRequest,
    sums: &mut BatchSums,
) -> Result<TopUpReceipt> {
    let digest = req.payload_digest();
    if let Some(txn_id) = prior(conn, "topup", "store", &req.purchase_id, &digest)? {
        let (user, channel, coins, balance, repaid): (String, String, i64, i64, i64) = conn
            .prepare_cached(
                "SELECT user, channel, coins, balance_coins, repaid_coins FROM topups WHERE txn_id = ?1",
            )
            .db()?
            .query_row([txn_id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .db()?;
        return Ok(TopUpReceipt {
            txn_id: txn_id as u64,
            user,
            channel: parse_channel(&channel)?,
            coins: coins as u64,
            purchase_id: req.purchase_id.clone(),
            repaid_coins: repaid as u64,
            balance_coins: balance as u64,
            replayed: true,
        });
    }
    // Purchase ids are the store's, unique across users, so the idempotency scope is the store.
    let plan = posting::top_up(req, owed(conn, &req.user)?);
    let txn_id = open_txn(conn, "topup", "store", &req.purchase_id, &digest, now_ms())?;
    post(conn, txn_id, plan.posting.entries(), sums)?;
    let balance_coins = wallet(conn, &req.user)?.total_coins();
    conn.prepare_cached("INSERT INTO topups(txn_id, user, channel, coins, balance_coins, repaid_coins) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")
        .db()?
        .execute(params![txn_id, req.user, req.channel.as_str(), req.coins as i64, balance_coins as i64, plan.repaid_coins as i64])
        .db()?;
    Ok(TopUpReceipt {
        txn_id: txn_id as u64,
        user: req.user.clone(),
        channel: req.channel,
        coins: req.coins,
        purchase_id: req.purchase_id.clone(),
        repaid_coins: plan.repaid_coins,
        balance_coins,
        replayed: false,
    })
}

fn parse_channel(channel: &str) -> Result<Channel> {
    Channel::parse(channel).ok_or_else(|| Error::Internal("bad channel in ledger".into()))
}

fn apply_refund(
    conn: &Connection,
    req: &RefundRequest,
    sums: &mut BatchSums,
) -> Result<RefundReceipt> {
    let digest = req.payload_digest();
    if let Some(txn_id) = prior(conn, "refund", "store", &req.purchase_id, &digest)? {
        let mut receipt = load_refund(conn, txn_id)?;
        receipt.replayed = true;
        return Ok(receipt);
    }
    let purchase: Option<(String, String, i64)> = conn
        .prepare_cached(
            "SELECT t.user, t.channel, t.coins FROM txns x JOIN topups t ON t.txn_id = x.txn_id
             WHERE x.kind = 'topup' AND x.actor = 'store' AND x.idem_key = ?1",
        )
        .db()?
        .query_row([&req.purchase_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()
        .db()?;
    let Some((user, channel, coins)) = purchase else {
        return Err(Error::PurchaseNotFound(req.purchase_id.clone()));
    };
    let purchase = posting::Purchase {
        user,
        channel: parse_channel(&channel)?,
        coins: coins as u64,
    };
    let plan = posting::refund(&purchase, channels(conn, &purchase.user)?, &req.spend_order);
    let created_ms = now_ms();
    let txn_id = open_txn(
        conn,
        "refund",
        "store",
        &req.purchase_id,
        &digest,
        created_ms,
    )?;
    post(conn, txn_id, plan.posting.entries(), sums)?;
    let after = wallet(conn, &purchase.user)?;
    let receipt = RefundReceipt {
        txn_id: txn_id as u64,
        purchase_id: req.purchase_id.clone(),
        reason: req.reason,
        user: purchase.user,
        channel: purchase.channel,
        coins: purchase.coins,
        wallet_coins: plan.wallet_coins(),
        debt_coins: plan.debt_coins,
        balance_coins: after.total_coins(),
        owed_coins: after.owed_coins,
        created_ms,
        replayed: false,
    };
    conn.prepare_cached(
        "INSERT INTO refunds(txn_id, purchase_id, reason, user, channel, coins, wallet_coins, debt_coins,
             balance_coins, owed_coins, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )
    .db()?
    .execute(params![
        txn_id,
        receipt.purchase_id,
        receipt.reason.as_str(),
        receipt.user,
        receipt.channel.as_str(),
        receipt.coins as i64,
        receipt.wallet_coins as i64,
        receipt.debt_coins as i64,
        receipt.balance_coins as i64,
        receipt.owed_coins as i64,
        created_ms as i64,
    ])
    .db()?;
    Ok(receipt)
}

fn load_refund(conn: &Connection, txn_id: i64) -> Result<RefundReceipt> {
    let row = conn
        .prepare_cached(
            "SELECT purchase_id, reason, user, channel, coins, wallet_coins, debt_coins, balance_coins,
                    owed_coins, created_ms
             FROM refunds WHERE txn_id = ?1",
        )
        .db()?
        .query_row([txn_id], |r| {
            let u = |i: usize| r.get::<_, i64>(i).map(|v| v as u64);
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                [u(4)?, u(5)?, u(6)?, u(7)?, u(8)?, u(9)?],
            ))
        })
        .db()?;
    let (purchase_id, reason, user, channel, n) = row;
    Ok(RefundReceipt {
        txn_id: txn_id as u64,
        purchase_id,
        reason: RefundReason::parse(&reason)
            .ok_or_else(|| Error::Internal("bad refund reason in ledger".into()))?,
        user,
        channel: parse_channel(&channel)?,
        coins: n[0],
        wallet_coins: n[1],
        debt_coins: n[2],
        balance_coins: n[3],
        owed_coins: n[4],
        created_ms: n[5],
        replayed: false,
    })
}

fn apply_gift(conn: &Connection, req: &GiftRequest, sums: &mut BatchSums) -> Result<GiftOutcome> {
    let digest = req.payload_digest();
    if let Some(txn_id) = prior(conn, "gift", &req.sender, &req.idempotency_key, &digest)? {
        let receipt = load_gift(conn, txn_id)?;
        return Ok(GiftOutcome {
            receipt,
            replayed: true,
            split: None,
        });
    }
    // Refusals come from the plan, before the first write: a refused gift leaves nothing. The
    // single writer sees every earlier gift of the batch through the open transaction, so the
    // allowance counts them and concurrent gifts cannot pass the cap together.
    let created_ms = now_ms();
    let since_ms = created_ms.saturating_sub(req.caps.window_ms);
    let allowance = Allowance::new(
        &req.caps,
        &limits_of(conn, &req.sender)?,
        spent_since(conn, &req.sender, since_ms)?,
    );
    let plan = posting::gift(req, channels(conn, &req.sender)?, allowance)?;
    let txn_id = open_txn(
        conn,
        "gift",
        &req.sender,
        &req.idempotency_key,
        &digest,
        created_ms,
    )?;
    post(conn, txn_id, plan.posting.entries(), sums)?;
    let receipt = GiftReceipt::new(req, &plan, new_gift_id(created_ms), created_ms);
    let funding = plan.funding_coins;
    conn.prepare_cached(
        "INSERT INTO gifts(gift_id, txn_id, room, sender, streamer, sticker, price_coins, store_coins,
             streamer_coins, platform_coins, funding_ios, funding_android, funding_web, balance_coins, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    )
    .db()?
    .execute(params![
        receipt.gift_id,
        txn_id,
        receipt.room,
        receipt.sender,
        receipt.streamer,
        receipt.sticker,
        receipt.price_coins as i64,
        receipt.store_coins as i64,
        receipt.streamer_coins as i64,
        receipt.platform_coins as i64,
        funding[0] as i64,
        funding[1] as i64,
        funding[2] as i64,
        receipt.balance_coins as i64,
        created_ms as i64,
    ])
    .db()?;
    Ok(GiftOutcome {
        receipt,
        replayed: false,
        split: Some(plan.split),
    })
}

fn load_gift(conn: &Connection, txn_id: i64) -> Result<GiftReceipt> {
    let receipt = conn
        .prepare_cached(
            "SELECT gift_id, room, sender, streamer, sticker, price_coins, store_coins, streamer_coins,
                    platform_coins, funding_ios, funding_android, funding_web, balance_coins, room_seq, created_ms
             FROM gifts WHERE txn_id = ?1",
        )
        .db()?
        .query_row([txn_id], |r| {
            let u = |i: usize| r.get::<_, i64>(i).map(|v| v as u64);
            Ok(GiftReceipt {
                gift_id: r.get(0)?,
                room: r.get(1)?,
                sender: r.get(2)?,
                streamer: r.get(3)?,
                sticker: r.get(4)?,
                price_coins: u(5)?,
                store_coins: u(6)?,
                streamer_coins: u(7)?,
                platform_coins: u(8)?,
                funding_coins: [u(9)?, u(10)?, u(11)?],
                balance_coins: u(12)?,
                seq: r.get::<_, Option<i64>>(13)?.map(|v| v as u64),
                created_ms: u(14)?,
            })
        })
        .db()?;
    Ok(receipt)
}

/// A user's own limits (the defaults if none were set).
fn limits_of(conn: &Connection, user: &str) -> Result<UserLimits> {
    let row: Option<(Option<i64>, i64)> = conn
        .prepare_cached("SELECT window_coins_max, minor FROM user_limits WHERE user = ?1")
        .db()?
        .query_row([user], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
        .db()?;
    Ok(
        row.map_or_else(UserLimits::default, |(cap, minor)| UserLimits {
            window_coins_max: cap.map(|c| c as u64),
            minor: minor != 0,
        }),
    )
}

/// Coins `user` spent on gifts and red packets created after `since_ms` (index ranges).
fn spent_since(conn: &Connection, user: &str, since_ms: u64) -> Result<u64> {
    let spent: i64 = conn
        .prepare_cached(
            "SELECT (SELECT COALESCE(SUM(price_coins), 0) FROM gifts WHERE sender = ?1 AND created_ms > ?2)
                  + (SELECT COALESCE(SUM(total_coins), 0) FROM packets WHERE sender = ?1 AND created_ms > ?2)",
        )
        .db()?
        .query_row(params![user, since_ms as i64], |r| r.get(0))
        .db()?;
    Ok(nonnegative("spending", spent))
}

fn apply_set_limits(conn: &Connection, user: &str, limits: UserLimits) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO user_limits(user, window_coins_max, minor, updated_ms) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(user) DO UPDATE SET window_coins_max = excluded.window_coins_max,
             minor = excluded.minor, updated_ms = excluded.updated_ms",
    )
    .db()?
    .execute(params![
        user,
        limits.window_coins_max.map(|c| c as i64),
        limits.minor as i64,
        now_ms() as i64
    ])
    .db()?;
    Ok(())
}

/// A user's or a packet's coins per channel, from accounts named by `account(channel)`.
fn per_channel(conn: &Connection, account: impl Fn(Channel) -> String) -> Result<ChannelCoins> {
    let mut c = [0u64; 3];
    for ch in Channel::ALL {
        c[ch.index()] = balance_of(conn, &account(ch))?;
    }
    Ok(c)
}

fn apply_drop(conn: &Connection, req: &PacketDrop) -> Result<PacketReceipt> {
    let digest = req.payload_digest();
    if let Some(txn_id) = prior(conn, "packet", &req.sender, &req.key, &digest)? {
        let mut receipt = load_packet(conn, txn_id)?;
        receipt.replayed = true;
        return Ok(receipt);
    }
    let created_ms = now_ms();
    let since_ms = created_ms.saturating_sub(req.caps.window_ms);
    let allowance = Allowance::new(
        &req.caps,
        &limits_of(conn, &req.sender)?,
        spent_since(conn, &req.sender, since_ms)?,
    );
    let packet_id = new_packet_id(created_ms);
    let plan = posting::drop_packet(req, &packet_id, channels(conn, &req.sender)?, allowance)?;
    let cut = crate::gift::red_packet::cut(req.total_coins, req.shares, &mut rand::rng());
    let txn_id = open_txn(conn, "packet", &req.sender, &req.key, &digest, created_ms)?;
    post(
        conn,
        txn_id,
        plan.posting.entries(),
        &mut BatchSums::default(),
    )?;
    let f = plan.funding_coins;
    let balance_coins: u64 = plan.balances_after.iter().sum();
    conn.prepare_cached(
        "INSERT INTO packets(txn_id, packet_id, room, sender, total_coins, shares, funding_ios,
             funding_android, funding_web, balance_coins, created_ms, expires_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )
    .db()?
    .execute(params![
        txn_id,
        packet_id,
        req.room,
        req.sender,
        req.total_coins as i64,
        req.shares as i64,
        f[0] as i64,
        f[1] as i64,
        f[2] as i64,
        balance_coins as i64,
        created_ms as i64,
        req.expires_ms as i64,
    ])
    .db()?;
    let mut insert = conn
        .prepare_cached(
            "INSERT INTO packet_shares(packet_id, share_index, coins) VALUES (?1, ?2, ?3)",
        )
        .db()?;
    for (i, coins) in cut.iter().enumerate() {
        insert
            .execute(params![packet_id, i as i64, *coins as i64])
            .db()?;
    }
    load_packet(conn, txn_id)
}

fn load_packet(conn: &Connection, txn_id: i64) -> Result<PacketReceipt> {
    conn.prepare_cached(
        "SELECT packet_id, room, sender, total_coins, shares, funding_ios, funding_android, funding_web,
                balance_coins, created_ms, expires_ms FROM packets WHERE txn_id = ?1",
    )
    .db()?
    .query_row([txn_id], |r| {
        let u = |i: usize| r.get::<_, i64>(i).map(|v| v as u64);
        Ok(PacketReceipt {
            packet_id: r.get(0)?,
            room: r.get(1)?,
            sender: r.get(2)?,
            total_coins: u(3)?,
            shares: u(4)?,
            funding_coins: [u(5)?, u(6)?, u(7)?],
            balance_coins: u(8)?,
            created_ms: u(9)?,
            expires_ms: u(10)?,
            replayed: false,
        })
    })
    .db()
}

/// A packet's state for a grab or an expiry.
struct PacketRow {
    room: String,
    sender: String,
    total_coins: u64,
    shares: u64,
    grabbed_shares: u64,
    expires_ms: u64,
    ended: bool,
}

fn packet_row(conn: &Connection, packet_id: &str) -> Result<Option<PacketRow>> {
    conn.prepare_cached(
        "SELECT room, sender, total_coins, shares, grabbed_shares, expires_ms, ended_ms IS NOT NULL
         FROM packets WHERE packet_id = ?1",
    )
    .db()?
    .query_row([packet_id], |r| {
        Ok(PacketRow {
            room: r.get(0)?,
            sender: r.get(1)?,
            total_coins: r.get::<_, i64>(2)? as u64,
            shares: r.get::<_, i64>(3)? as u64,
            grabbed_shares: r.get::<_, i64>(4)? as u64,
            expires_ms: r.get::<_, i64>(5)? as u64,
            ended: r.get(6)?,
        })
    })
    .optional()
    .db()
}

fn apply_grab(conn: &Connection, req: &PacketGrab) -> Result<GrabReceipt> {
    let packet = match packet_row(conn, &req.packet_id)? {
        Some(p) if p.room == req.room => p,
        _ => return Err(Error::PacketNotFound(req.packet_id.clone())),
    };
    if let Some(txn_id) = prior(conn, "grab", &req.user, &req.packet_id, &req.packet_id)? {
        return load_grab(conn, txn_id, &packet);
    }
    if packet.grabbed_shares == packet.shares {
        return Err(Error::PacketEmpty);
    }
    if packet.ended || req.now_ms >= packet.expires_ms {
        return Err(Error::PacketExpired);
    }
    let share_index = packet.grabbed_shares;
    let coins: i64 = conn
        .prepare_cached("SELECT coins FROM packet_shares WHERE packet_id = ?1 AND share_index = ?2")
        .db()?
        .query_row(params![req.packet_id, share_index as i64], |r| r.get(0))
        .db()?;
    let left = per_channel(conn, |ch| posting::packet_account(&req.packet_id, ch))?;
    let (taken, posting) = posting::grab(&req.packet_id, &req.user, left, coins as u64);
    let created_ms = now_ms();
    let txn_id = open_txn(
        conn,
        "grab",
        &req.user,
        &req.packet_id,
        &req.packet_id,
        created_ms,
    )?;
    post(conn, txn_id, posting.entries(), &mut BatchSums::default())?;
    let balance_coins = wallet(conn, &req.user)?.total_coins();
    conn.prepare_cached(
        "INSERT INTO packet_grabs(txn_id, packet_id, share_index, grabber, coins, ch_ios, ch_android,
             ch_web, balance_coins, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )
    .db()?
    .execute(params![
        txn_id,
        req.packet_id,
        share_index as i64,
        req.user,
        coins,
        taken[0] as i64,
        taken[1] as i64,
        taken[2] as i64,
        balance_coins as i64,
        created_ms as i64
    ])
    .db()?;
    let last = share_index + 1 == packet.shares;
    conn.prepare_cached(
        "UPDATE packets SET grabbed_shares = grabbed_shares + 1, grabbed_coins = grabbed_coins + ?2,
             ended_ms = CASE WHEN ?3 THEN ?4 ELSE ended_ms END
         WHERE packet_id = ?1",
    )
    .db()?
    .execute(params![req.packet_id, coins, last, created_ms as i64])
    .db()?;
    let mut receipt = load_grab(conn, txn_id, &packet)?;
    receipt.replayed = false;
    receipt.grabbed_shares = share_index + 1;
    if last {
        receipt.end = Some(packet_end(conn, &req.packet_id, PacketEndReason::AllTaken)?);
    }
    Ok(receipt)
}

fn load_grab(conn: &Connection, txn_id: i64, packet: &PacketRow) -> Result<GrabReceipt> {
    conn.prepare_cached(
        "SELECT g.packet_id, g.grabber, g.share_index, g.coins, g.ch_ios, g.ch_android, g.ch_web,
                g.balance_coins, p.grabbed_shares
         FROM packet_grabs g JOIN packets p ON p.packet_id = g.packet_id WHERE g.txn_id = ?1",
    )
    .db()?
    .query_row([txn_id], |r| {
        let u = |i: usize| r.get::<_, i64>(i).map(|v| v as u64);
        Ok(GrabReceipt {
            packet_id: r.get(0)?,
            user: r.get(1)?,
            share_index: u(2)?,
            coins: u(3)?,
            funding_coins: [u(4)?, u(5)?, u(6)?],
            balance_coins: u(7)?,
            grabbed_shares: u(8)?,
            shares: packet.shares,
            replayed: true,
            end: None,
        })
    })
    .db()
}

/// A packet's end as recorded, with its grabs in share order.
fn packet_end(conn: &Connection, packet_id: &str, reason: PacketEndReason) -> Result<PacketEnd> {
    let (room, sender, total, shares, grabbed_shares, grabbed_coins, returned): (
        String,
        String,
        i64,
        i64,
        i64,
        i64,
        i64,
    ) = conn
        .prepare_cached(
            "SELECT room, sender, total_coins, shares, grabbed_shares, grabbed_coins, returned_coins
             FROM packets WHERE packet_id = ?1",
        )
        .db()?
        .query_row([packet_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?))
        })
        .db()?;
    let mut stmt = conn
        .prepare_cached(
            "SELECT grabber, coins FROM packet_grabs WHERE packet_id = ?1 ORDER BY share_index",
        )
        .db()?;
    let grabs = stmt
        .query_map([packet_id], |r| {
            Ok(GrabView {
                user: r.get(0)?,
                coins: r.get::<_, i64>(1)? as u64,
            })
        })
        .db()?
        .collect::<rusqlite::Result<Vec<_>>>()
        .db()?;
    Ok(PacketEnd {
        packet_id: packet_id.to_owned(),
        room,
        sender,
        reason,
        total_coins: total as u64,
        shares: shares as u64,
        grabbed_shares: grabbed_shares as u64,
        grabbed_coins: grabbed_coins as u64,
        returned_coins: returned as u64,
        grabs,
    })
}

fn apply_expire(conn: &Connection, now: u64) -> Result<Vec<PacketEnd>> {
    let ids: Vec<String> = conn
        .prepare_cached(
            "SELECT packet_id FROM packets WHERE ended_ms IS NULL AND expires_ms <= ?1
             ORDER BY expires_ms LIMIT ?2",
        )
        .db()?
        .query_map(
            params![now as i64, super::PACKETS_EXPIRED_PER_CALL_MAX as i64],
            |r| r.get(0),
        )
        .db()?
        .collect::<rusqlite::Result<_>>()
        .db()?;
    let mut ended = Vec::with_capacity(ids.len());
    for packet_id in ids {
        let packet = packet_row(conn, &packet_id)?.expect("an open packet has its row");
        let left = per_channel(conn, |ch| posting::packet_account(&packet_id, ch))?;
        let returned: u64 = left.iter().sum();
        if let Some(posting) = posting::packet_return(&packet_id, &packet.sender, left) {
            let txn_id = open_txn(conn, "packet_return", "system", &packet_id, "return", now)?;
            post(conn, txn_id, posting.entries(), &mut BatchSums::default())?;
        }
        assert!(returned <= packet.total_coins);
        conn.prepare_cached(
            "UPDATE packets SET ended_ms = ?2, returned_coins = ?3 WHERE packet_id = ?1 AND ended_ms IS NULL",
        )
        .db()?
        .execute(params![packet_id, now as i64, returned as i64])
        .db()?;
        ended.push(packet_end(conn, &packet_id, PacketEndReason::Expired)?);
    }
    Ok(ended)
}

fn apply_probe(conn: &Connection) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO meta(key, value) VALUES ('probe_ms', ?1)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
    )
    .db()?
    .execute([now_ms().to_string()])
    .db()?;
    Ok(())
}

fn apply_fault(conn: &Connection, fault: Option<StorageFault>) -> Result<()> {
    conn.pragma_update(None, "query_only", fault == Some(StorageFault::ReadOnly))
        .db()?;
    tracing::warn!(?fault, "storage fault injection changed");
    Ok(())
}

fn apply_gift_seq(conn: &Connection, gift_id: &str, seq: u64) -> Result<()> {
    conn.prepare_cached("UPDATE gifts SET room_seq = ?2 WHERE gift_id = ?1 AND room_seq IS NULL")
        .db()?
        .execute(params![gift_id, seq as i64])
        .db()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StoreFees;
    use crate::ledger::{CapPolicy, GiftPurpose, SplitPolicy};

    fn histogram() -> Histogram {
        Histogram::with_opts(prometheus::HistogramOpts::new("t", "t")).unwrap()
    }

    fn open(dir: &tempfile::TempDir) -> SqliteLedger {
        let options = SqliteOptions {
            path: dir.path().join("l.db"),
            batch_max: 64,
            queue_max: 256,
            call_timeout_ms: 5_000,
        };
        SqliteLedger::open(options, histogram()).unwrap()
    }

    fn gift(sender: &str, key: &str, price: u64) -> GiftRequest {
        GiftRequest {
            sender: sender.into(),
            streamer: "star".into(),
            room: "r1".into(),
            sticker: "s".into(),
            price_coins: price,
            idempotency_key: key.into(),
            purpose: GiftPurpose::Sticker,
            policy: SplitPolicy {
                store_fees: StoreFees {
                    ios: 3000,
                    android: 3000,
                    web: 0,
                },
                streamer_share_bps: 5000,
                spend_order: vec![Channel::Web, Channel::Android, Channel::Ios],
            },
            caps: CapPolicy {
                window_ms: 86_400_000,
                window_coins_max: 1_000,
                minor_window_coins_max: 0,
            },
        }
    }

    fn top_up(user: &str, ch: Channel, coins: u64, id: &str) -> TopUpRequest {
        TopUpRequest {
            user: user.into(),
            channel: ch,
            coins,
            purchase_id: id.into(),
        }
    }

    #[tokio::test]
    async fn gifter_totals_rank_gifters_and_are_filled_for_older_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.db");
        let l = open(&dir);
        for user in ["amy", "bob", "cat", "dan"] {
            l.top_up(top_up(user, Channel::Web, 500, &format!("p-{user}")))
                .await
                .unwrap();
        }
        let gifts = [
            ("amy", 30),
            ("bob", 50),
            ("cat", 30),
            ("dan", 10),
            ("amy", 20),
        ];
        for (i, (user, price)) in gifts.iter().enumerate() {
            l.gift(gift(user, &format!("k{i}"), *price)).await.unwrap();
        }
        let board = |g: Vec<Gifter>| -> Vec<(String, u64)> {
            g.into_iter().map(|g| (g.user, g.coins)).collect()
        };
        let expected = |pairs: &[(&str, u64)]| -> Vec<(String, u64)> {
            pairs.iter().map(|(u, c)| (u.to_string(), *c)).collect()
        };
        // Equal coins rank by user id: amy before bob.
        assert_eq!(
            board(l.top_gifters("star", 3).await.unwrap()),
            expected(&[("amy", 50), ("bob", 50), ("cat", 30)])
        );
        let around = l.gifter_around("star", "cat", 1).await.unwrap().unwrap();
        assert_eq!(around.first_rank, 2);
        assert_eq!(
            board(around.gifters),
            expected(&[("bob", 50), ("cat", 30), ("dan", 10)])
        );
        let top = l.gifter_around("star", "amy", 2).await.unwrap().unwrap();
        assert_eq!(top.first_rank, 1);
        assert_eq!(top.gifters.len(), 3);
        assert_eq!(l.gifter_around("star", "eve", 2).await.unwrap(), None);
        assert!(l.top_gifters("nobody", 3).await.unwrap().is_empty());
        let mut by_room = l.room_gifts_since("r1", 0, 60_000).await.unwrap();
        by_room.sort();
        let sums: Vec<(String, u64)> = by_room.into_iter().map(|(u, _, c)| (u, c)).collect();
        assert_eq!(
            sums,
            expected(&[("amy", 50), ("bob", 50), ("cat", 30), ("dan", 10)])
        );
        l.close().await;

        // A file from before the board: its gifts fill it once on open, and gifts keep it.
        Connection::open(&path)
            .unwrap()
            .execute_batch("DROP TRIGGER gifts_add_to_gifter_totals; DROP TABLE gifter_totals;")
            .unwrap();
        let l = open(&dir);
        l.gift(gift("dan", "k9", 45)).await.unwrap();
        assert_eq!(
            board(l.top_gifters("star", 2).await.unwrap()),
            expected(&[("dan", 55), ("amy", 50)])
        );
        l.close().await;
        assert!(audit_ok(&path));

        Connection::open(&path)
            .unwrap()
            .execute_batch("UPDATE gifter_totals SET coins = coins + 1 WHERE sender = 'cat'")
            .unwrap();
        let report = crate::ledger::audit::audit(&path).unwrap();
        assert!(
            report
                .violations
                .join("\n")
                .contains("gifter total differs"),
            "{report:?}"
        );
    }

    #[tokio::test]
    async fn gift_debits_once_and_replays() {
        let dir = tempfile::tempdir().unwrap();
        let l = open(&dir);
        l.top_up(top_up("v", Channel::Ios, 100, "p1"))
            .await
            .unwrap();
        let a = l.gift(gift("v", "k1", 60)).await.unwrap();
        assert!(!a.replayed);
        assert_eq!(a.receipt.balance_coins, 40);
        let b = l.gift(gift("v", "k1", 60)).await.unwrap();
        assert!(b.replayed);
        assert_eq!(a.receipt.gift_id, b.receipt.gift_id);
        assert_eq!(l.wallet("v").await.unwrap().total_coins(), 40);
        let mut other = gift("v", "k1", 60);
        other.sticker = "other".into();
        assert!(matches!(
            l.gift(other).await,
            Err(Error::IdempotencyConflict(_))
        ));
        l.close().await;
        assert!(audit_ok(&dir.path().join("l.db")));
    }

    #[tokio::test]
    async fn insufficient_funds_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let l = open(&dir);
        l.top_up(top_up("v", Channel::Web, 5, "p1")).await.unwrap();
        let err = l.gift(gift("v", "k", 6)).await.unwrap_err();
        assert_eq!(
            err,
            Error::InsufficientFunds {
                balance_coins: 5,
                price_coins: 6
            }
        );
        assert_eq!(l.wallet("v").await.unwrap().total_coins(), 5);
        // The failed key was not consumed: a later funded retry goes through.
        l.top_up(top_up("v", Channel::Web, 1, "p2")).await.unwrap();
        assert!(!l.gift(gift("v", "k", 6)).await.unwrap().replayed);
        l.close().await;
    }

    #[tokio::test]
    async fn top_up_is_idempotent_on_purchase_id() {
        let dir = tempfile::tempdir().unwrap();
        let l = open(&dir);
        let a = l
            .top_up(top_up("v", Channel::Android, 10, "p1"))
            .await
            .unwrap();
        let b = l
            .top_up(top_up("v", Channel::Android, 10, "p1"))
            .await
            .unwrap();
        assert!(b.replayed && !a.replayed);
        assert_eq!(l.wallet("v").await.unwrap().android_coins, 10);
        assert!(matches!(
            l.top_up(top_up("v", Channel::Android, 11, "p1")).await,
            Err(Error::IdempotencyConflict(_))
        ));
        l.close().await;
    }

    #[tokio::test]
    async fn closed_ledger_refuses_work() {
        let dir = tempfile::tempdir().unwrap();
        let l = open(&dir);
        l.close().await;
        assert_eq!(l.wallet("v").await.unwrap_err(), Error::ShuttingDown);
        assert!(!l.is_ready());
    }

    #[tokio::test]
    async fn a_file_from_before_refunds_gains_repaid_coins_and_keeps_its_top_ups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE topups (
                     txn_id        INTEGER PRIMARY KEY REFERENCES txns(txn_id),
                     user          TEXT NOT NULL,
                     channel       TEXT NOT NULL,
                     coins         INTEGER NOT NULL CHECK (coins > 0),
                     balance_coins INTEGER NOT NULL
                 );",
            )
            .unwrap();
        }
        let l = open(&dir);
        l.top_up(top_up("v", Channel::Web, 50, "p1")).await.unwrap();
        let replay = l.top_up(top_up("v", Channel::Web, 50, "p1")).await.unwrap();
        assert_eq!((replay.repaid_coins, replay.replayed), (0, true));
        l.close().await;
        // Opening it again finds the column and leaves it alone.
        let l = open(&dir);
        assert_eq!(l.wallet("v").await.unwrap().total_coins(), 50);
        l.close().await;
        assert!(audit_ok(&path));
    }

    fn audit_ok(path: &Path) -> bool {
        crate::ledger::audit::audit(path)
            .unwrap()
            .violations
            .is_empty()
    }
}

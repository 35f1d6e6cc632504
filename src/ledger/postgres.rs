//! The PostgreSQL ledger: one money ledger shared by every node, with the SQLite ledger's contract.
//!
//! # Writing
//! Each node runs `ledger.postgres_writers` writer tasks with group commit, as the SQLite backend
//! runs one: each takes the first request waiting in its own queue plus whatever else is queued
//! (up to `batch_max`) and applies the whole batch in one `READ COMMITTED` transaction of a
//! handful of round trips, whatever its size:
//!
//! 1. lock the batch's wallet rows (`SELECT … ORDER BY account FOR UPDATE`; a fixed order, so two
//!    nodes never deadlock) and read their balances;
//! 2. read the prior applications of the batch's `(kind, actor, key)`s, *after* the locks, so a
//!    gift another node committed for the same sender is seen;
//! 3. decide every request in memory with the posting rules (`ledger/posting.rs`): replay,
//!    conflict, refusal or a plan, each on the balances the earlier ones left;
//! 4. write it all with set-based statements (`unnest` of arrays): transactions, entries, gifts,
//!    top-ups, wallet changes, summed hot-account credits; then `COMMIT`, and only then reply.
//!
//! A refusal is decided before anything is written, so it leaves nothing behind.
//!
//! A node's writers meet each other exactly as nodes do (below), each on its own connection and
//! hot-account shard, so one batch is decided while another commits. A user's requests all go
//! to one writer, in the order they came.
//!
//! Step 1 also locks each top-up's and refund's `receivable:<user>` (their rules read the
//! user's debt) and reads the spending of each gift's sender (caps). A refund names a purchase,
//! not a user: the top-ups it reverses are read first, outside the transaction (a top-up never
//! changes), so that their users' rows are locked with the rest.
//!
//! # Idempotency across nodes
//! `txns` has `UNIQUE (kind, actor, idem_key)`. A gift's actor is its sender, whose wallet rows
//! the batch locked first, so two nodes applying the same key are serialised on those rows and
//! the second sees the first's commit in step 2 and replays (or reports a conflict). Where no
//! lock orders them (a store reusing a purchase id for another user), the insert uses
//! `ON CONFLICT DO NOTHING`; a row that did not go in means another node committed that key
//! meanwhile, so the batch rolls back and is decided again, and the request becomes a replay or
//! a conflict, never an error. Deadlocks and serialisation failures are retried the same way.
//!
//! # Hot accounts
//! Every gift credits the platform, a store and a streamer. Updating those rows per gift from
//! several nodes would serialise the cluster on them. Instead an account is a set of rows
//! `account_rows(account, shard, balance_coins)` whose sum is its balance (the `accounts` view).
//! Wallets live in shard 0 only, since they are debited and checked. Hot accounts (platform,
//! stores, streamers, the external accounts) are only credited (or, for external accounts,
//! debited without a floor) and no rule reads them during a write, so each writer adds its batch's
//! summed changes to its own shard row, chosen at random among [`SHARDS`] when it starts: one
//! update per hot account per batch, and nodes do not wait for each other's. Reads of earnings
//! sum an account's few rows.
//!
//! # Failures
//! Any storage error fails the whole batch, which rolls back; every request in it is refused
//! with `ledger_unavailable` and the node reports unready until a later write (or the `/readyz`
//! probe) succeeds, so it recovers by itself when the database returns. A `COMMIT` whose answer
//! was lost (the connection dropped) may or may not have landed: the writer then checks, on a
//! fresh connection and for a bounded time, whether the batch's first new transaction exists,
//! and answers accordingly (`ledger/deadline.rs` explains what a caller is told).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use prometheus::Histogram;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::NoTls;

mod pk;

use super::deadline::{self, Ticket};
use super::pk::{PkBattle, PkChallenge, PkChange};
use super::posting::Allowance;
use super::posting::{self, BatchSums, Entry};
use super::{
    new_gift_id, now_ms, CapPolicy, GiftOutcome, GiftReceipt, GiftRequest, Gifter, GrabReceipt,
    Ledger, Neighbourhood, PacketDrop, PacketEnd, PacketGrab, PacketReceipt, RefundReason,
    RefundReceipt, RefundRequest, Spending, TopUpReceipt, TopUpRequest, UserLimits, Wallet,
};
use crate::error::{Error, Result};
use crate::gift::{Channel, ChannelCoins};

/// Rows each hot account may be spread over. More than the nodes of any cluster, so that two
/// writers rarely share one; when they do, they only wait for each other on that row.
pub const SHARDS: i16 = 64;

/// Writer tasks one node may run (`ledger.postgres_writers`), each with a shard of its own.
pub const WRITERS_MAX: usize = 16;

/// Attempts at a batch that lost a race (a concurrent duplicate key, a deadlock) before its
/// requests are refused.
const BATCH_ATTEMPTS_MAX: usize = 4;

/// The schema, one migration per entry, applied in order at start and recorded in
/// `giftd_migrations`. Never edit one that shipped; append another.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE SEQUENCE txn_ids;
CREATE TABLE account_rows (
    account       TEXT NOT NULL,
    shard         SMALLINT NOT NULL,
    balance_coins BIGINT NOT NULL,
    external      SMALLINT NOT NULL CHECK (external IN (0, 1)),
    PRIMARY KEY (account, shard),
    CHECK (external = 1 OR balance_coins >= 0)
);
CREATE VIEW accounts AS
    SELECT account, SUM(balance_coins)::BIGINT AS balance_coins, MAX(external) AS external
    FROM account_rows GROUP BY account;
CREATE TABLE txns (
    txn_id         BIGINT PRIMARY KEY,
    kind           TEXT NOT NULL,
    actor          TEXT NOT NULL,
    idem_key       TEXT NOT NULL,
    payload_sha256 TEXT NOT NULL,
    created_ms     BIGINT NOT NULL,
    UNIQUE (kind, actor, idem_key)
);
CREATE TABLE entries (
    txn_id       BIGINT NOT NULL REFERENCES txns (txn_id),
    account      TEXT NOT NULL,
    amount_coins BIGINT NOT NULL CHECK (amount_coins <> 0),
    channel      TEXT NOT NULL
);
CREATE TABLE topups (
    txn_id        BIGINT PRIMARY KEY REFERENCES txns (txn_id),
    "user"        TEXT NOT NULL,
    channel       TEXT NOT NULL,
    coins         BIGINT NOT NULL CHECK (coins > 0),
    balance_coins BIGINT NOT NULL
);
CREATE TABLE gifts (
    txn_id          BIGINT PRIMARY KEY REFERENCES txns (txn_id),
    gift_id         TEXT NOT NULL UNIQUE,
    room            TEXT NOT NULL,
    sender          TEXT NOT NULL,
    streamer        TEXT NOT NULL,
    sticker         TEXT NOT NULL,
    price_coins     BIGINT NOT NULL CHECK (price_coins > 0),
    store_coins     BIGINT NOT NULL,
    streamer_coins  BIGINT NOT NULL,
    platform_coins  BIGINT NOT NULL,
    funding_ios     BIGINT NOT NULL,
    funding_android BIGINT NOT NULL,
    funding_web     BIGINT NOT NULL,
    balance_coins   BIGINT NOT NULL,
    room_seq        BIGINT,
    created_ms      BIGINT NOT NULL,
    CHECK (store_coins + streamer_coins + platform_coins = price_coins)
);
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"#,
    r#"
CREATE INDEX gifts_by_sender ON gifts (sender, created_ms);
CREATE TABLE user_limits (
    "user"            TEXT PRIMARY KEY,
    window_coins_max  BIGINT CHECK (window_coins_max >= 0),
    minor             SMALLINT NOT NULL CHECK (minor IN (0, 1)),
    updated_ms        BIGINT NOT NULL
);
"#,
    r#"
ALTER TABLE topups ADD COLUMN repaid_coins BIGINT NOT NULL DEFAULT 0
    CHECK (repaid_coins BETWEEN 0 AND coins);
CREATE TABLE refunds (
    txn_id        BIGINT PRIMARY KEY REFERENCES txns (txn_id),
    purchase_id   TEXT NOT NULL UNIQUE,
    reason        TEXT NOT NULL,
    "user"        TEXT NOT NULL,
    channel       TEXT NOT NULL,
    coins         BIGINT NOT NULL CHECK (coins > 0),
    wallet_coins  BIGINT NOT NULL CHECK (wallet_coins >= 0),
    debt_coins    BIGINT NOT NULL CHECK (debt_coins >= 0),
    balance_coins BIGINT NOT NULL,
    owed_coins    BIGINT NOT NULL,
    created_ms    BIGINT NOT NULL,
    CHECK (wallet_coins + debt_coins = coins)
);
"#,
    r#"
CREATE TABLE packets (
    txn_id          BIGINT PRIMARY KEY REFERENCES txns (txn_id),
    packet_id       TEXT NOT NULL UNIQUE,
    room            TEXT NOT NULL,
    sender          TEXT NOT NULL,
    total_coins     BIGINT NOT NULL CHECK (total_coins > 0),
    shares          BIGINT NOT NULL CHECK (shares >= 1 AND shares <= total_coins),
    funding_ios     BIGINT NOT NULL,
    funding_android BIGINT NOT NULL,
    funding_web     BIGINT NOT NULL,
    balance_coins   BIGINT NOT NULL,
    grabbed_shares  BIGINT NOT NULL DEFAULT 0 CHECK (grabbed_shares BETWEEN 0 AND shares),
    grabbed_coins   BIGINT NOT NULL DEFAULT 0,
    returned_coins  BIGINT NOT NULL DEFAULT 0,
    created_ms      BIGINT NOT NULL,
    expires_ms      BIGINT NOT NULL,
    ended_ms        BIGINT,
    CHECK (funding_ios + funding_android + funding_web = total_coins),
    CHECK (grabbed_coins + returned_coins <= total_coins)
);
CREATE INDEX packets_by_sender ON packets (sender, created_ms);
CREATE INDEX packets_open ON packets (expires_ms) WHERE ended_ms IS NULL;
CREATE TABLE packet_shares (
    packet_id   TEXT NOT NULL,
    share_index BIGINT NOT NULL,
    coins       BIGINT NOT NULL CHECK (coins >= 1),
    PRIMARY KEY (packet_id, share_index)
);
CREATE TABLE packet_grabs (
    txn_id        BIGINT PRIMARY KEY REFERENCES txns (txn_id),
    packet_id     TEXT NOT NULL,
    share_index   BIGINT NOT NULL,
    grabber       TEXT NOT NULL,
    coins         BIGINT NOT NULL CHECK (coins >= 1),
    ch_ios        BIGINT NOT NULL,
    ch_android    BIGINT NOT NULL,
    ch_web        BIGINT NOT NULL,
    balance_coins BIGINT NOT NULL,
    created_ms    BIGINT NOT NULL,
    UNIQUE (packet_id, grabber),
    UNIQUE (packet_id, share_index),
    CHECK (ch_ios + ch_android + ch_web = coins)
);
"#,
    // Each streamer's gifters with their summed coins, for the all-time leaderboard, kept by a
    // statement trigger in the gifts' own transaction (one upsert per sender per batch, in a fixed
    // order so that two nodes' batches never deadlock), and filled from the gifts before it.
    // Boards order equal coins by sender in byte order (`COLLATE "C"`, as the rank index does). Gifts by room rebuild a room's
    // boards after a takeover.
    r#"
CREATE TABLE gifter_totals (
    streamer TEXT NOT NULL,
    sender   TEXT NOT NULL,
    coins    BIGINT NOT NULL CHECK (coins > 0),
    PRIMARY KEY (streamer, sender)
);
CREATE INDEX gifter_totals_by_rank ON gifter_totals (streamer, coins DESC, sender COLLATE "C");
CREATE FUNCTION giftd_add_to_gifter_totals() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO gifter_totals (streamer, sender, coins)
        SELECT streamer, sender, SUM(price_coins)::BIGINT FROM new_gifts
        GROUP BY streamer, sender ORDER BY streamer, sender
    ON CONFLICT (streamer, sender) DO UPDATE SET coins = gifter_totals.coins + excluded.coins;
    RETURN NULL;
END
$$;
CREATE TRIGGER gifts_add_to_gifter_totals AFTER INSERT ON gifts
    REFERENCING NEW TABLE AS new_gifts FOR EACH STATEMENT
    EXECUTE FUNCTION giftd_add_to_gifter_totals();
INSERT INTO gifter_totals (streamer, sender, coins)
    SELECT streamer, sender, SUM(price_coins)::BIGINT FROM gifts GROUP BY streamer, sender;
CREATE INDEX gifts_by_room ON gifts (room, created_ms);
"#,
    pk::MIGRATION,
    // The writer's hot path, lighter (measured in BENCHMARKS.md, "Ledger backends"):
    // - A gift's and an entry's transaction is no longer checked by a foreign key on every row
    //   (a trigger and an index probe each, three per gift); the writer inserts both with their
    //   transaction in one statement batch, and `giftd audit` checks that every record and entry
    //   names an existing transaction of its kind, as it does for SQLite.
    // - A gift's room seq, known only after its commit, goes into a table of its own instead of
    //   updating the gift: an update wrote a whole new version of the gift row with its four
    //   index entries. The first seq noted for a gift stays, as before; older gifts keep theirs
    //   in `gifts.room_seq`.
    r#"
ALTER TABLE entries DROP CONSTRAINT entries_txn_id_fkey;
ALTER TABLE gifts DROP CONSTRAINT gifts_txn_id_fkey;
CREATE TABLE gift_seqs (
    gift_id  TEXT PRIMARY KEY,
    room_seq BIGINT NOT NULL
);
"#,
];

/// Options for [`PostgresLedger::open`].
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// libpq-style URL or `key=value` string; the schema is the first on its `search_path`.
    pub url: String,
    pub batch_max: usize,
    pub queue_max: usize,
    pub call_timeout_ms: u64,
    /// Connections in the node's pool: the writers' plus concurrent reads.
    pub pool_max: usize,
    /// Writer tasks, each committing its own batches (1 to [`WRITERS_MAX`]).
    pub writers: usize,
}

/// Maps a driver error to the crate's: any storage failure is `ledger_unavailable`.
fn pg(e: tokio_postgres::Error) -> Error {
    Error::LedgerUnavailable(format!("postgres: {e}"))
}

fn pool_error(e: deadpool_postgres::PoolError) -> Error {
    Error::LedgerUnavailable(format!("postgres pool: {e}"))
}

/// Opens one plain connection (for `giftd audit` and tests), its driver task spawned.
pub async fn connect(url: &str) -> Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.map_err(pg)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres connection ended");
        }
    });
    Ok(client)
}

/// Applies the migrations not yet applied, one node at a time (an advisory lock per schema).
async fn migrate(pool: &Pool) -> Result<()> {
    let mut client = pool.get().await.map_err(pool_error)?;
    let tx = client.transaction().await.map_err(pg)?;
    tx.batch_execute(
        "SELECT pg_advisory_xact_lock(hashtext('giftd_migrations:' || current_schema()));
         CREATE TABLE IF NOT EXISTS giftd_migrations (version INT PRIMARY KEY, applied_ms BIGINT NOT NULL);",
    )
    .await
    .map_err(pg)?;
    let applied: i32 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM giftd_migrations",
            &[],
        )
        .await
        .map_err(pg)?
        .get(0);
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied as usize) {
        tx.batch_execute(sql).await.map_err(pg)?;
        tx.execute(
            "INSERT INTO giftd_migrations (version, applied_ms) VALUES ($1, $2)",
            &[&(i as i32 + 1), &(now_ms() as i64)],
        )
        .await
        .map_err(pg)?;
        tracing::info!(version = i + 1, "ledger schema migrated");
    }
    tx.commit().await.map_err(pg)
}

type Reply<T> = oneshot::Sender<Result<T>>;

enum Op {
    TopUp(TopUpRequest, Reply<TopUpReceipt>, Ticket),
    Gift(Box<GiftRequest>, Reply<GiftOutcome>, Ticket),
    Refund(RefundRequest, Reply<RefundReceipt>, Ticket),
    Packet(PacketOp, Ticket),
    GiftSeq(String, u64),
    SetLimits(String, UserLimits, Reply<()>, Ticket),
    Probe(Reply<()>, Ticket),
    Shutdown(oneshot::Sender<()>),
}

pub struct PostgresLedger {
    /// Each writer's queue. A user's requests always go to the same writer (see
    /// [`PostgresLedger::writer_for`]).
    writers: Vec<mpsc::Sender<Op>>,
    pool: Pool,
    ready: Arc<AtomicBool>,
    handles: Mutex<Vec<JoinHandle<()>>>,
    call_timeout: Duration,
}

impl PostgresLedger {
    /// Connects, migrates the schema and starts the writer task.
    pub async fn open(options: PostgresOptions, commit_seconds: Histogram) -> Result<Self> {
        assert!(options.batch_max >= 1 && options.queue_max >= 1);
        assert!(
            (1..=WRITERS_MAX).contains(&options.writers) && options.pool_max > options.writers,
            "1 to {WRITERS_MAX} writers, and a pooled connection for reads beside them"
        );
        let call_timeout = Duration::from_millis(options.call_timeout_ms);
        let mut config: tokio_postgres::Config = options
            .url
            .parse()
            .map_err(|e| Error::LedgerUnavailable(format!("ledger.postgres_url: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(call_timeout);
        }
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                // A connection that died with the server is noticed and replaced on checkout.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_max)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(call_timeout))
            .create_timeout(Some(call_timeout))
            .recycle_timeout(Some(call_timeout))
            .build()
            .map_err(|e| Error::Internal(format!("postgres pool: {e}")))?;
        migrate(&pool).await?;
        let ready = Arc::new(AtomicBool::new(true));
        // Consecutive shards, so the node's writers never share a hot account's row.
        let first_shard = rand::random_range(0..SHARDS);
        let mut writers = Vec::with_capacity(options.writers);
        let mut handles = Vec::with_capacity(options.writers);
        for i in 0..options.writers {
            let (tx, rx) = mpsc::channel(options.queue_max.div_ceil(options.writers));
            let writer = Writer {
                pool: pool.clone(),
                rx,
                batch_max: options.batch_max,
                ready: ready.clone(),
                commit_seconds: commit_seconds.clone(),
                shard: (first_shard + i as i16) % SHARDS,
                statement_timeout_ms: options.call_timeout_ms,
            };
            writers.push(tx);
            handles.push(tokio::spawn(writer.run()));
        }
        tracing::info!(
            first_shard,
            writers = options.writers,
            "postgres ledger open"
        );
        Ok(PostgresLedger {
            writers,
            pool,
            ready,
            handles: Mutex::new(handles),
            call_timeout,
        })
    }

    /// The writer of `user`'s requests (for a refund, of its purchase). One user's requests
    /// all go to one writer, so they are applied in the order they came and two writers of a
    /// node never wait for each other's lock on a wallet.
    fn writer_for(&self, user: &str) -> &mpsc::Sender<Op> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::hash::DefaultHasher::new();
        user.hash(&mut hasher);
        &self.writers[(hasher.finish() % self.writers.len() as u64) as usize]
    }

    /// Whether the ledger was closed (every writer stops at once).
    fn is_closed(&self) -> bool {
        self.writers[0].is_closed()
    }

    async fn call<T>(
        &self,
        writer: &mpsc::Sender<Op>,
        make: impl FnOnce(Reply<T>, Ticket) -> Op,
    ) -> Result<T> {
        deadline::write(self.call_timeout, |ticket, reply| async move {
            writer
                .send(make(reply, ticket))
                .await
                .map_err(|_| Error::ShuttingDown)
        })
        .await
    }

    async fn read<T>(&self, f: impl AsyncRead<T>) -> Result<T> {
        if self.is_closed() {
            return Err(Error::ShuttingDown);
        }
        deadline::read(self.call_timeout, async {
            let client = self.pool.get().await.map_err(pool_error)?;
            f.run(&client).await
        })
        .await
    }
}

impl PostgresLedger {
    /// Runs a battle's write (its own transaction on the pool) under the call deadline.
    async fn pk_write(
        &self,
        write: impl std::future::Future<Output = Result<PkBattle>>,
    ) -> Result<PkBattle> {
        if self.is_closed() {
            return Err(Error::ShuttingDown);
        }
        deadline::read(self.call_timeout, write).await
    }
}

/// A read on a pooled connection (a small trait, since async closures borrowing the client are
/// awkward to name).
trait AsyncRead<T> {
    async fn run(self, client: &deadpool_postgres::Client) -> Result<T>;
}

struct ReadWallet<'a>(&'a str);

impl AsyncRead<Wallet> for ReadWallet<'_> {
    async fn run(self, client: &deadpool_postgres::Client) -> Result<Wallet> {
        let mut accounts: Vec<String> = Channel::ALL
            .iter()
            .map(|ch| posting::wallet_account(self.0, *ch))
            .collect();
        accounts.push(posting::receivable_account(self.0));
        let stmt = client
            .prepare_cached(
                "SELECT account, balance_coins FROM account_rows WHERE shard = 0 AND account = ANY($1)",
            )
            .await
            .map_err(pg)?;
        let mut c = [0u64; 3];
        let mut owed = 0;
        for row in client.query(&stmt, &[&accounts]).await.map_err(pg)? {
            let account: String = row.get(0);
            match accounts.iter().position(|a| *a == account) {
                Some(3) => owed = owed_of_balance(&account, row.get(1)),
                Some(i) => c[i] = nonnegative(&account, row.get(1)),
                None => {}
            }
        }
        Ok(Wallet::from_channels(c, owed))
    }
}

struct ReadEarnings<'a>(&'a str);

impl AsyncRead<u64> for ReadEarnings<'_> {
    async fn run(self, client: &deadpool_postgres::Client) -> Result<u64> {
        let account = posting::streamer_account(self.0);
        let stmt = client
            .prepare_cached(
                "SELECT COALESCE(SUM(balance_coins), 0)::BIGINT FROM account_rows WHERE account = $1",
            )
            .await
            .map_err(pg)?;
        let row = client.query_one(&stmt, &[&account]).await.map_err(pg)?;
        Ok(nonnegative(&account, row.get(0)))
    }
}

async fn read_gifters(
    client: &deadpool_postgres::Client,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Gifter>> {
    let stmt = client.prepare_cached(sql).await.map_err(pg)?;
    let rows = client.query(&stmt, params).await.map_err(pg)?;
    Ok(rows
        .iter()
        .map(|r| Gifter {
            user: r.get(0),
            coins: nonnegative("gifter_totals", r.get(1)),
        })
        .collect())
}

struct ReadTopGifters<'a>(&'a str, usize);

impl AsyncRead<Vec<Gifter>> for ReadTopGifters<'_> {
    async fn run(self, client: &deadpool_postgres::Client) -> Result<Vec<Gifter>> {
        read_gifters(
            client,
            "SELECT sender, coins FROM gifter_totals WHERE streamer = $1
             ORDER BY coins DESC, sender COLLATE \"C\" LIMIT $2",
            &[&self.0, &(self.1 as i64)],
        )
        .await
    }
}

/// `user`'s place among a streamer's gifters: those ranked ahead are counted, then the nearest
/// on each side read from the board's index.
struct ReadGifterAround<'a>(&'a str, &'a str, usize);

impl AsyncRead<Option<Neighbourhood>> for ReadGifterAround<'_> {
    async fn run(self, client: &deadpool_postgres::Client) -> Result<Option<Neighbourhood>> {
        let ReadGifterAround(streamer, user, neighbours) = self;
        let stmt = client
            .prepare_cached("SELECT coins FROM gifter_totals WHERE streamer = $1 AND sender = $2")
            .await
            .map_err(pg)?;
        let Some(row) = client
            .query_opt(&stmt, &[&streamer, &user])
            .await
            .map_err(pg)?
        else {
            return Ok(None);
        };
        let coins: i64 = row.get(0);
        const AHEAD: &str =
            "streamer = $1 AND (coins > $2 OR (coins = $2 AND sender COLLATE \"C\" < $3))";
        const BEHIND: &str =
            "streamer = $1 AND (coins < $2 OR (coins = $2 AND sender COLLATE \"C\" > $3))";
        let n = neighbours as i64;
        let count = client
            .prepare_cached(&format!("SELECT COUNT(*) FROM gifter_totals WHERE {AHEAD}"))
            .await
            .map_err(pg)?;
        let ahead: i64 = client
            .query_one(&count, &[&streamer, &coins, &user])
            .await
            .map_err(pg)?
            .get(0);
        let mut above = read_gifters(
            client,
            &format!(
                "SELECT sender, coins FROM gifter_totals WHERE {AHEAD} ORDER BY coins, sender COLLATE \"C\" DESC LIMIT $4"
            ),
            &[&streamer, &coins, &user, &n],
        )
        .await?;
        above.reverse();
        let below = read_gifters(
            client,
            &format!(
                "SELECT sender, coins FROM gifter_totals WHERE {BEHIND} ORDER BY coins DESC, sender COLLATE \"C\" LIMIT $4"
            ),
            &[&streamer, &coins, &user, &n],
        )
        .await?;
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
}

struct ReadRoomGifts<'a>(&'a str, u64, u64);

impl AsyncRead<Vec<(String, u64, u64)>> for ReadRoomGifts<'_> {
    async fn run(self, client: &deadpool_postgres::Client) -> Result<Vec<(String, u64, u64)>> {
        let stmt = client
            .prepare_cached(
                "SELECT sender, (created_ms / $3) * $3, SUM(price_coins)::BIGINT FROM gifts
                 WHERE room = $1 AND created_ms >= $2 GROUP BY 1, 2",
            )
            .await
            .map_err(pg)?;
        let rows = client
            .query(&stmt, &[&self.0, &(self.1 as i64), &(self.2 as i64)])
            .await
            .map_err(pg)?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    r.get::<_, i64>(1) as u64,
                    r.get::<_, i64>(2) as u64,
                )
            })
            .collect())
    }
}

struct ReadSpending<'a>(&'a str, CapPolicy);

impl AsyncRead<Spending> for ReadSpending<'_> {
    async fn run(self, client: &deadpool_postgres::Client) -> Result<Spending> {
        let users = vec![self.0.to_owned()];
        let since = vec![now_ms().saturating_sub(self.1.window_ms) as i64];
        let (limits, spent) = tokio::try_join!(
            read_limits(client, &users),
            read_spent(client, &users, &since)
        )
        .map_err(pg)?;
        let limits = limits.get(self.0).copied().unwrap_or_default();
        let spent = spent.get(self.0).copied().unwrap_or(0);
        Ok(Spending::new(limits, &self.1, spent))
    }
}

/// The own limits of `users` that have any.
async fn read_limits(
    client: &deadpool_postgres::Client,
    users: &[String],
) -> std::result::Result<HashMap<String, UserLimits>, tokio_postgres::Error> {
    let stmt = client
        .prepare_cached(
            "SELECT \"user\", window_coins_max, minor FROM user_limits WHERE \"user\" = ANY($1)",
        )
        .await?;
    let rows = client.query(&stmt, &[&users]).await?;
    Ok(rows
        .iter()
        .map(|r| {
            let limits = UserLimits {
                window_coins_max: r.get::<_, Option<i64>>(1).map(|c| c as u64),
                minor: r.get::<_, i16>(2) != 0,
            };
            (r.get(0), limits)
        })
        .collect())
}

/// Coins each of `users` spent on gifts and red packets created after their `since` (ms); index
/// ranges each.
async fn read_spent(
    client: &deadpool_postgres::Client,
    users: &[String],
    since: &[i64],
) -> std::result::Result<HashMap<String, u64>, tokio_postgres::Error> {
    let stmt = client
        .prepare_cached(
            "SELECT k.sender, (s.coins + p.coins)::BIGINT FROM unnest($1::TEXT[], $2::BIGINT[]) AS k(sender, since)
             CROSS JOIN LATERAL (SELECT COALESCE(SUM(g.price_coins), 0)::BIGINT AS coins FROM gifts g
                 WHERE g.sender = k.sender AND g.created_ms > k.since) AS s
             CROSS JOIN LATERAL (SELECT COALESCE(SUM(x.total_coins), 0)::BIGINT AS coins FROM packets x
                 WHERE x.sender = k.sender AND x.created_ms > k.since) AS p",
        )
        .await?;
    let rows = client.query(&stmt, &[&users, &since]).await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), nonnegative("spending", r.get(1))))
        .collect())
}

/// What a receivable's balance says is owed; a positive one would be a broken ledger.
fn owed_of_balance(account: &str, balance_coins: i64) -> u64 {
    assert!(
        balance_coins <= 0,
        "receivable {account} holds {balance_coins} coins"
    );
    balance_coins.unsigned_abs()
}

/// A committed internal balance; a negative one would be a broken ledger, never clamped.
fn nonnegative(account: &str, balance_coins: i64) -> u64 {
    assert!(
        balance_coins >= 0,
        "account {account} holds {balance_coins} coins"
    );
    balance_coins as u64
}

#[async_trait]
impl Ledger for PostgresLedger {
    async fn top_up(&self, req: TopUpRequest) -> Result<TopUpReceipt> {
        super::check_top_up(&req)?;
        self.call(self.writer_for(&req.user), |r, t| Op::TopUp(req, r, t))
            .await
    }

    async fn gift(&self, req: GiftRequest) -> Result<GiftOutcome> {
        super::check_key(&req.idempotency_key, "key")?;
        self.call(self.writer_for(&req.sender), |r, t| {
            Op::Gift(Box::new(req), r, t)
        })
        .await
    }

    async fn refund(&self, req: RefundRequest) -> Result<RefundReceipt> {
        super::check_key(&req.purchase_id, "purchase_id")?;
        self.call(self.writer_for(&req.purchase_id), |r, t| {
            Op::Refund(req, r, t)
        })
        .await
    }

    // Red packets are rare: all go through the first writer, one transaction each, so a packet's
    // drop, grabs and expiry never race another writer of this node.
    async fn drop_packet(&self, req: PacketDrop) -> Result<PacketReceipt> {
        super::check_key(&req.key, "key")?;
        self.call(&self.writers[0], |r, t| {
            Op::Packet(PacketOp::Drop(Box::new(req), r), t)
        })
        .await
    }

    async fn grab_packet(&self, req: PacketGrab) -> Result<GrabReceipt> {
        self.call(&self.writers[0], |r, t| {
            Op::Packet(PacketOp::Grab(req, r), t)
        })
        .await
    }

    async fn expire_packets(&self, now_ms: u64) -> Result<Vec<PacketEnd>> {
        self.call(&self.writers[0], |r, t| {
            Op::Packet(PacketOp::Expire(now_ms, r), t)
        })
        .await
    }

    fn note_gift_seq(&self, gift_id: &str, seq: u64) {
        let _ = self
            .writer_for(gift_id)
            .try_send(Op::GiftSeq(gift_id.to_owned(), seq));
    }

    async fn wallet(&self, user: &str) -> Result<Wallet> {
        self.read(ReadWallet(user)).await
    }

    async fn earnings(&self, streamer: &str) -> Result<u64> {
        self.read(ReadEarnings(streamer)).await
    }

    async fn top_gifters(&self, streamer: &str, limit: usize) -> Result<Vec<Gifter>> {
        self.read(ReadTopGifters(streamer, limit)).await
    }

    async fn gifter_around(
        &self,
        streamer: &str,
        user: &str,
        neighbours: usize,
    ) -> Result<Option<Neighbourhood>> {
        self.read(ReadGifterAround(streamer, user, neighbours))
            .await
    }

    async fn room_gifts_since(
        &self,
        room: &str,
        since_ms: u64,
        step_ms: u64,
    ) -> Result<Vec<(String, u64, u64)>> {
        assert!(step_ms > 0, "a step has a length");
        self.read(ReadRoomGifts(room, since_ms, step_ms)).await
    }

    async fn set_limits(&self, user: &str, limits: UserLimits) -> Result<()> {
        let user = user.to_owned();
        self.call(self.writer_for(&user), |r, t| {
            Op::SetLimits(user, limits, r, t)
        })
        .await
    }

    async fn spending(&self, user: &str, policy: CapPolicy) -> Result<Spending> {
        self.read(ReadSpending(user, policy)).await
    }

    async fn pk_create(&self, challenge: PkChallenge) -> Result<PkBattle> {
        self.pk_write(pk::create(&self.pool, &challenge)).await
    }

    async fn pk_change(&self, battle_id: &str, change: PkChange) -> Result<PkBattle> {
        self.pk_write(pk::change(&self.pool, battle_id, &change))
            .await
    }

    async fn pk_battle(&self, battle_id: &str) -> Result<Option<PkBattle>> {
        if self.is_closed() {
            return Err(Error::ShuttingDown);
        }
        deadline::read(self.call_timeout, async {
            let client = self.pool.get().await.map_err(pool_error)?;
            pk::read(&client, battle_id, false).await
        })
        .await
    }

    async fn probe(&self) -> Result<()> {
        // Each writer takes its own connection from the pool; one probe stands for all.
        self.call(&self.writers[0], Op::Probe).await
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && !self.is_closed()
    }

    async fn close(&self) {
        for writer in &self.writers {
            let (done, wait) = oneshot::channel();
            if writer.send(Op::Shutdown(done)).await.is_ok() {
                let _ = wait.await;
            }
        }
        let handles = std::mem::take(&mut *self.handles.lock().expect("writer handles lock"));
        for handle in handles {
            let _ = handle.await;
        }
        self.pool.close();
    }
}

struct Writer {
    pool: Pool,
    rx: mpsc::Receiver<Op>,
    batch_max: usize,
    ready: Arc<AtomicBool>,
    commit_seconds: Histogram,
    shard: i16,
    statement_timeout_ms: u64,
}

/// One request of a batch, with the answer owed to it.
enum Work {
    TopUp(TopUpRequest, Reply<TopUpReceipt>),
    Gift(Box<GiftRequest>, Reply<GiftOutcome>),
    Refund(RefundRequest, Reply<RefundReceipt>),
    SetLimits(String, UserLimits, Reply<()>),
    Probe(Reply<()>),
}

/// What a batch decided for one request.
enum Answer {
    TopUp(Result<TopUpReceipt>),
    Gift(Box<Result<GiftOutcome>>),
    Refund(Result<RefundReceipt>),
    /// A probe or a limits change: nothing to answer but the commit.
    Done,
}

/// Why a batch attempt did not commit.
enum Failed {
    /// It lost a race with another node (a duplicate key, a deadlock): decide it again.
    Retry(String),
    /// Storage failed; the batch rolled back.
    Storage(Error),
    /// The commit's answer was lost; the batch may have committed. The first new transaction id,
    /// and the answers owed if it did.
    Unknown(Error, i64, Vec<Answer>),
}

impl From<tokio_postgres::Error> for Failed {
    fn from(e: tokio_postgres::Error) -> Failed {
        let raced = [
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::UNIQUE_VIOLATION,
        ];
        match e.code() {
            Some(code) if raced.contains(code) => Failed::Retry(e.to_string()),
            _ => Failed::Storage(pg(e)),
        }
    }
}

impl From<deadpool_postgres::PoolError> for Failed {
    fn from(e: deadpool_postgres::PoolError) -> Failed {
        Failed::Storage(pool_error(e))
    }
}

impl Writer {
    async fn run(mut self) {
        let mut batch = Vec::with_capacity(self.batch_max);
        while let Some(first) = self.rx.recv().await {
            batch.push(first);
            while batch.len() < self.batch_max {
                match self.rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            if let Some(done) = self.process(&mut batch).await {
                self.rx.close();
                while let Ok(op) = self.rx.try_recv() {
                    drop(op);
                }
                let _ = done.send(());
                return;
            }
        }
    }

    /// Applies, commits and answers one batch. Returns the shutdown signal if it held one.
    async fn process(&mut self, batch: &mut Vec<Op>) -> Option<oneshot::Sender<()>> {
        let started = Instant::now();
        let mut shutdown = None;
        let mut works = Vec::with_capacity(batch.len());
        let mut seqs = Vec::new();
        let mut packets = Vec::new();
        for op in batch.drain(..) {
            match op {
                Op::Shutdown(done) => shutdown = Some(done),
                Op::Packet(op, t) => {
                    if t.start() {
                        packets.push(op);
                    }
                }
                Op::GiftSeq(id, seq) => seqs.push((id, seq as i64)),
                // A caller that gave up before its request started was told nothing was
                // charged: skip it so that stays true.
                Op::TopUp(_, _, t)
                | Op::Gift(_, _, t)
                | Op::Refund(_, _, t)
                | Op::SetLimits(_, _, _, t)
                | Op::Probe(_, t)
                    if !t.start() => {}
                Op::TopUp(req, r, _) => works.push(Work::TopUp(req, r)),
                Op::Gift(req, r, _) => works.push(Work::Gift(req, r)),
                Op::Refund(req, r, _) => works.push(Work::Refund(req, r)),
                Op::SetLimits(user, limits, r, _) => works.push(Work::SetLimits(user, limits, r)),
                Op::Probe(r, _) => works.push(Work::Probe(r)),
            }
        }
        // Red packets are rare next to gifts: each is its own transaction (`packets::apply`).
        for op in packets {
            packets::apply(self, op).await;
        }
        if works.is_empty() && seqs.is_empty() {
            return shutdown;
        }
        let mut outcome = Err(Failed::Retry(String::new()));
        for attempt in 1..=BATCH_ATTEMPTS_MAX {
            outcome = self.attempt(&works, &seqs).await;
            match &outcome {
                Err(Failed::Retry(why)) => {
                    tracing::debug!(
                        attempt,
                        why,
                        "ledger batch raced another node; deciding again"
                    );
                }
                _ => break,
            }
        }
        let outcome = match outcome {
            Err(Failed::Unknown(e, txn_id, answers)) => self.resolve(e, txn_id, answers).await,
            other => other,
        };
        match outcome {
            Ok(answers) => {
                self.ready.store(true, Ordering::Relaxed);
                self.commit_seconds.observe(started.elapsed().as_secs_f64());
                for (work, answer) in works.into_iter().zip(answers) {
                    match (work, answer) {
                        (Work::TopUp(_, r), Answer::TopUp(a)) => drop(r.send(a)),
                        (Work::Gift(_, r), Answer::Gift(a)) => drop(r.send(*a)),
                        (Work::Refund(_, r), Answer::Refund(a)) => drop(r.send(a)),
                        (Work::Probe(r), Answer::Done) => drop(r.send(Ok(()))),
                        (Work::SetLimits(_, _, r), Answer::Done) => drop(r.send(Ok(()))),
                        _ => unreachable!("answers follow their requests"),
                    }
                }
            }
            Err(failed) => {
                let e = match failed {
                    Failed::Storage(e) | Failed::Unknown(e, _, _) => e,
                    Failed::Retry(why) => Error::LedgerUnavailable(format!(
                        "batch lost {BATCH_ATTEMPTS_MAX} races: {why}"
                    )),
                };
                tracing::error!(error = %e, requests = works.len(), "ledger batch refused");
                self.ready.store(false, Ordering::Relaxed);
                for work in works {
                    match work {
                        Work::TopUp(_, r) => drop(r.send(Err(e.clone()))),
                        Work::Gift(_, r) => drop(r.send(Err(e.clone()))),
                        Work::Refund(_, r) => drop(r.send(Err(e.clone()))),
                        Work::Probe(r) | Work::SetLimits(_, _, r) => drop(r.send(Err(e.clone()))),
                    }
                }
            }
        }
        shutdown
    }

    /// After a lost `COMMIT` answer: learns, on a fresh connection and for a bounded time, whether
    /// the batch committed (its first new transaction exists), and answers accordingly.
    async fn resolve(
        &self,
        e: Error,
        txn_id: i64,
        answers: Vec<Answer>,
    ) -> std::result::Result<Vec<Answer>, Failed> {
        let until = Instant::now() + Duration::from_millis(self.statement_timeout_ms);
        loop {
            let found = async {
                let client = self.pool.get().await.map_err(pool_error)?;
                let row = client
                    .query_one(
                        "SELECT EXISTS (SELECT 1 FROM txns WHERE txn_id = $1)",
                        &[&txn_id],
                    )
                    .await
                    .map_err(pg)?;
                Ok::<bool, Error>(row.get(0))
            }
            .await;
            match found {
                Ok(true) => return Ok(answers),
                Ok(false) => return Err(Failed::Storage(e)),
                Err(check) if Instant::now() >= until => {
                    tracing::error!(error = %check, "could not learn whether a ledger batch committed");
                    return Err(Failed::Storage(Error::LedgerUnavailable(format!(
                        "commit outcome unknown ({e}); retry with the same key"
                    ))));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// One attempt at a batch on a pooled connection; a failed attempt is rolled back.
    async fn attempt(
        &self,
        works: &[Work],
        seqs: &[(String, i64)],
    ) -> std::result::Result<Vec<Answer>, Failed> {
        let client = self.pool.get().await?;
        let result = self.attempt_on(&client, works, seqs).await;
        if result.is_err() {
            // Best effort: a broken connection is dropped by the pool anyway.
            let _ = client.batch_execute("ROLLBACK").await;
        }
        result
    }

    /// Lock, read, decide, write, commit, in three round trips: the statements of each step are
    /// pipelined (sent together; the server still runs them in order, so the reads of step 2
    /// come after the locks of step 1).
    async fn attempt_on(
        &self,
        client: &deadpool_postgres::Client,
        works: &[Work],
        seqs: &[(String, i64)],
    ) -> std::result::Result<Vec<Answer>, Failed> {
        // 1. Begin; lock the batch's wallets in account order and read their balances; read
        //    the prior applications of its keys; draw its transaction ids.
        // The users a refund reverses a purchase of: top-ups never change, so they are read
        // before the transaction, to lock those users' wallets with the rest.
        let purchases = read_purchases(client, works).await?;
        let mut wallets: Vec<String> = works
            .iter()
            .filter_map(|w| match w {
                Work::TopUp(req, _) => Some(req.user.as_str()),
                Work::Gift(req, _) => Some(req.sender.as_str()),
                Work::Refund(req, _) => purchases.get(&req.purchase_id).map(|p| p.user.as_str()),
                Work::SetLimits(..) | Work::Probe(_) => None,
            })
            .flat_map(|user| {
                // Top-ups and refunds read what the user owes; locking it costs gifts nothing.
                Channel::ALL
                    .map(|ch| posting::wallet_account(user, ch))
                    .into_iter()
                    .chain([posting::receivable_account(user)])
            })
            .collect();
        wallets.sort_unstable();
        wallets.dedup();
        let keys: Vec<(&str, &str, &str)> = works.iter().filter_map(Work::key).collect();
        let column = |i: usize| -> Vec<&str> { keys.iter().map(|k| [k.0, k.1, k.2][i]).collect() };
        let (kinds, actors, idem_keys) = (column(0), column(1), column(2));
        let lock = client
            .prepare_cached(
                "SELECT account, balance_coins FROM account_rows
                 WHERE shard = 0 AND account = ANY($1) ORDER BY account FOR UPDATE",
            )
            .await?;
        let priors = client
            .prepare_cached(
                // LATERAL: one unique-index probe per key, whatever the planner guesses about
                // the array's length (a hash join would scan all of `txns` per batch).
                "SELECT t.kind, t.actor, t.idem_key, t.txn_id, t.payload_sha256
                 FROM unnest($1::TEXT[], $2::TEXT[], $3::TEXT[]) AS k(kind, actor, idem_key)
                 CROSS JOIN LATERAL (SELECT * FROM txns t WHERE t.kind = k.kind
                     AND t.actor = k.actor AND t.idem_key = k.idem_key) AS t",
            )
            .await?;
        let draw = client
            .prepare_cached("SELECT nextval('txn_ids') FROM generate_series(1, $1::INT)")
            .await?;
        // Every statement of a batch is keyed, so a sequential scan is always a misplan (the
        // planner cannot see an array's length and may hash-join a growing table, which made
        // each batch scan all of `gifts`); forbid it for the writer's transactions.
        let begin = format!(
            "BEGIN; SET LOCAL statement_timeout = {}; SET LOCAL enable_seqscan = off",
            self.statement_timeout_ms
        );
        let n = keys.len() as i32;
        let lock_params: [&(dyn ToSql + Sync); 1] = [&wallets];
        let prior_params: [&(dyn ToSql + Sync); 3] = [&kinds, &actors, &idem_keys];
        let draw_params: [&(dyn ToSql + Sync); 1] = [&n];
        // The spending of the batch's senders, read after their wallets are locked: a gift from
        // the same sender on another node either committed before (and is counted) or waits.
        let (spenders, since) = spenders(works);
        let (_, locked, prior_rows, id_rows, limits, spent) = tokio::try_join!(
            client.batch_execute(&begin),
            client.query(&lock, &lock_params),
            client.query(&priors, &prior_params),
            client.query(&draw, &draw_params),
            read_limits(client, &spenders),
            read_spent(client, &spenders, &since),
        )?;
        let mut balances: HashMap<String, i64> =
            locked.iter().map(|row| (row.get(0), row.get(1))).collect();
        let prior = Prior::read(client, &prior_rows).await?;

        // 2. Decide every request in memory, in order.
        let mut plan = Plan::new(id_rows.iter().map(|r| r.get(0)).collect(), limits, spent);
        plan.purchases = purchases;
        let answers: Vec<Answer> = works
            .iter()
            .map(|w| plan.decide(w, &prior, &mut balances))
            .collect();

        // 3. Write, then commit.
        let first_new = plan.txn_id.first().copied();
        plan.write(client, self.shard, seqs).await?;
        match client.batch_execute("COMMIT").await {
            Ok(()) => Ok(answers),
            Err(e) if e.code().is_some() => Err(e.into()),
            Err(e) => match first_new {
                Some(id) => Err(Failed::Unknown(pg(e), id, answers)),
                None => Err(Failed::Storage(pg(e))),
            },
        }
    }
}

/// The top-ups that the batch's refunds reverse, by purchase id (one round trip, only for a
/// batch that holds refunds).
async fn read_purchases(
    client: &deadpool_postgres::Client,
    works: &[Work],
) -> std::result::Result<HashMap<String, posting::Purchase>, Failed> {
    let ids: Vec<&str> = works
        .iter()
        .filter_map(|w| match w {
            Work::Refund(req, _) => Some(req.purchase_id.as_str()),
            _ => None,
        })
        .collect();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let stmt = client
        .prepare_cached(
            "SELECT x.idem_key, t.\"user\", t.channel, t.coins FROM txns x JOIN topups t ON t.txn_id = x.txn_id
             WHERE x.kind = 'topup' AND x.actor = 'store' AND x.idem_key = ANY($1)",
        )
        .await?;
    let mut found = HashMap::new();
    for r in client.query(&stmt, &[&ids]).await? {
        let channel: String = r.get(2);
        let purchase = posting::Purchase {
            user: r.get(1),
            channel: Channel::parse(&channel)
                .ok_or_else(|| Failed::Storage(Error::Internal("bad channel".into())))?,
            coins: r.get::<_, i64>(3) as u64,
        };
        found.insert(r.get(0), purchase);
    }
    Ok(found)
}

/// The users whose limits and spending a batch reads (gift senders and users whose limits it
/// sets), each with the start of their window (ms).
fn spenders(works: &[Work]) -> (Vec<String>, Vec<i64>) {
    let now = now_ms();
    let mut found: HashMap<&str, u64> = HashMap::new();
    for w in works {
        let (user, window_ms) = match w {
            Work::Gift(req, _) => (req.sender.as_str(), req.caps.window_ms),
            Work::SetLimits(user, _, _) => (user.as_str(), 0),
            Work::TopUp(..) | Work::Refund(..) | Work::Probe(_) => continue,
        };
        let since = found.entry(user).or_insert(now);
        *since = (*since).min(now.saturating_sub(window_ms));
    }
    found
        .into_iter()
        .map(|(u, since)| (u.to_owned(), since as i64))
        .unzip()
}

impl Work {
    /// The request's idempotency scope: `(kind, actor, key)`.
    fn key(&self) -> Option<(&str, &str, &str)> {
        match self {
            // Purchase ids are the store's, unique across users: the scope is the store.
            Work::TopUp(req, _) => Some(("topup", "store", req.purchase_id.as_str())),
            Work::Gift(req, _) => Some(("gift", req.sender.as_str(), req.idempotency_key.as_str())),
            Work::Refund(req, _) => Some(("refund", "store", req.purchase_id.as_str())),
            Work::SetLimits(..) | Work::Probe(_) => None,
        }
    }
}

type Key = (String, String, String);

fn owned((kind, actor, key): (&str, &str, &str)) -> Key {
    (kind.to_owned(), actor.to_owned(), key.to_owned())
}

/// What the ledger already holds for a batch's keys: digests and the original receipts.
#[derive(Default)]
struct Prior {
    txns: HashMap<Key, (i64, String)>,
    gifts: HashMap<i64, GiftReceipt>,
    topups: HashMap<i64, TopUpReceipt>,
    refunds: HashMap<i64, RefundReceipt>,
}

impl Prior {
    /// Collects the prior applications found in step 1 and loads their receipts (one more round
    /// trip, only when the batch holds replays).
    async fn read(
        client: &deadpool_postgres::Client,
        rows: &[tokio_postgres::Row],
    ) -> std::result::Result<Prior, Failed> {
        let mut prior = Prior::default();
        for row in rows {
            let key = (row.get(0), row.get(1), row.get(2));
            prior.txns.insert(key, (row.get(3), row.get(4)));
        }
        if prior.txns.is_empty() {
            return Ok(prior);
        }
        let ids: Vec<i64> = prior.txns.values().map(|v| v.0).collect();
        let gifts = client
            .prepare_cached(
                "SELECT txn_id, gift_id, room, sender, streamer, sticker, price_coins, store_coins,
                        streamer_coins, platform_coins, funding_ios, funding_android, funding_web,
                        balance_coins, COALESCE(room_seq, (SELECT s.room_seq FROM gift_seqs s
                            WHERE s.gift_id = g.gift_id)), created_ms
                 FROM gifts g WHERE txn_id = ANY($1)",
            )
            .await?;
        let topups = client
            .prepare_cached(
                "SELECT t.txn_id, t.\"user\", t.channel, t.coins, t.balance_coins, x.idem_key, t.repaid_coins
                 FROM topups t JOIN txns x ON x.txn_id = t.txn_id WHERE t.txn_id = ANY($1)",
            )
            .await?;
        let refunds = client
            .prepare_cached(
                "SELECT txn_id, purchase_id, reason, \"user\", channel, coins, wallet_coins, debt_coins,
                        balance_coins, owed_coins, created_ms
                 FROM refunds WHERE txn_id = ANY($1)",
            )
            .await?;
        let params: [&(dyn ToSql + Sync); 1] = [&ids];
        let (gift_rows, topup_rows, refund_rows) = tokio::try_join!(
            client.query(&gifts, &params),
            client.query(&topups, &params),
            client.query(&refunds, &params),
        )?;
        let bad = |what: &str| Failed::Storage(Error::Internal(format!("bad {what} in ledger")));
        for r in refund_rows {
            let u = |i: usize| r.get::<_, i64>(i) as u64;
            let reason: String = r.get(2);
            let channel: String = r.get(4);
            let receipt = RefundReceipt {
                txn_id: u(0),
                purchase_id: r.get(1),
                reason: RefundReason::parse(&reason).ok_or_else(|| bad("refund reason"))?,
                user: r.get(3),
                channel: Channel::parse(&channel).ok_or_else(|| bad("channel"))?,
                coins: u(5),
                wallet_coins: u(6),
                debt_coins: u(7),
                balance_coins: u(8),
                owed_coins: u(9),
                created_ms: u(10),
                replayed: true,
            };
            prior.refunds.insert(r.get(0), receipt);
        }
        for r in gift_rows {
            let u = |i: usize| r.get::<_, i64>(i) as u64;
            let receipt = GiftReceipt {
                gift_id: r.get(1),
                room: r.get(2),
                sender: r.get(3),
                streamer: r.get(4),
                sticker: r.get(5),
                price_coins: u(6),
                store_coins: u(7),
                streamer_coins: u(8),
                platform_coins: u(9),
                funding_coins: [u(10), u(11), u(12)],
                balance_coins: u(13),
                seq: r.get::<_, Option<i64>>(14).map(|v| v as u64),
                created_ms: u(15),
            };
            prior.gifts.insert(r.get(0), receipt);
        }
        for r in topup_rows {
            let channel: String = r.get(2);
            let receipt = TopUpReceipt {
                txn_id: r.get::<_, i64>(0) as u64,
                user: r.get(1),
                channel: Channel::parse(&channel)
                    .ok_or_else(|| Failed::Storage(Error::Internal("bad channel".into())))?,
                coins: r.get::<_, i64>(3) as u64,
                purchase_id: r.get(5),
                repaid_coins: r.get::<_, i64>(6) as u64,
                balance_coins: r.get::<_, i64>(4) as u64,
                replayed: true,
            };
            prior.topups.insert(r.get(0), receipt);
        }
        Ok(prior)
    }
}

/// A batch's decisions, as the rows it will write.
struct Plan {
    /// Transaction ids drawn for the batch, used in order.
    ids: std::vec::IntoIter<i64>,
    /// Keys applied earlier in this batch, with their digest and answer.
    applied: HashMap<Key, (String, Applied)>,
    txn_id: Vec<i64>,
    txn_kind: Vec<&'static str>,
    txn_actor: Vec<String>,
    txn_key: Vec<String>,
    txn_digest: Vec<String>,
    txn_created_ms: Vec<i64>,
    entries: Vec<(i64, Entry)>,
    gifts: Vec<(i64, GiftReceipt)>,
    topups: Vec<(i64, TopUpReceipt)>,
    wallet_deltas: HashMap<String, i64>,
    hot: BatchSums,
    probe: bool,
    /// Users' own limits as committed, then as this batch sets them.
    limits: HashMap<String, UserLimits>,
    /// Coins each sender spent in their window, as committed plus this batch's gifts.
    spent: HashMap<String, u64>,
    /// Limits the batch sets, to write in order (a later change of the same user wins).
    set_limits: Vec<(String, UserLimits)>,
    /// The committed top-ups the batch's refunds reverse, by purchase id.
    purchases: HashMap<String, posting::Purchase>,
    refunds: Vec<(i64, RefundReceipt)>,
}

/// A receipt applied earlier in the same batch, for an in-batch repeat of its key.
#[derive(Clone)]
enum Applied {
    TopUp(TopUpReceipt),
    Gift(GiftReceipt),
    Refund(RefundReceipt),
}

impl Plan {
    fn new(
        ids: Vec<i64>,
        limits: HashMap<String, UserLimits>,
        spent: HashMap<String, u64>,
    ) -> Plan {
        Plan {
            limits,
            spent,
            set_limits: Vec::new(),
            purchases: HashMap::new(),
            refunds: Vec::new(),
            ids: ids.into_iter(),
            applied: HashMap::new(),
            txn_id: Vec::new(),
            txn_kind: Vec::new(),
            txn_actor: Vec::new(),
            txn_key: Vec::new(),
            txn_digest: Vec::new(),
            txn_created_ms: Vec::new(),
            entries: Vec::new(),
            gifts: Vec::new(),
            topups: Vec::new(),
            wallet_deltas: HashMap::new(),
            hot: BatchSums::default(),
            probe: false,
        }
    }

    fn decide(
        &mut self,
        work: &Work,
        prior: &Prior,
        balances: &mut HashMap<String, i64>,
    ) -> Answer {
        match work {
            Work::Probe(_) => {
                self.probe = true;
                Answer::Done
            }
            Work::SetLimits(user, limits, _) => {
                self.limits.insert(user.clone(), *limits);
                self.set_limits.push((user.clone(), *limits));
                Answer::Done
            }
            Work::TopUp(req, _) => Answer::TopUp(self.top_up(req, prior, balances)),
            Work::Gift(req, _) => Answer::Gift(Box::new(self.gift(req, prior, balances))),
            Work::Refund(req, _) => Answer::Refund(self.refund(req, prior, balances)),
        }
    }

    /// The earlier application of `key`, if any: `Ok(Some)` to replay, `Err` on a conflict.
    fn earlier(&self, key: Key, digest: &str, prior: &Prior) -> Result<Option<Applied>> {
        let conflict = || Error::IdempotencyConflict(key.2.clone());
        if let Some((d, applied)) = self.applied.get(&key) {
            return if d == digest {
                Ok(Some(applied.clone()))
            } else {
                Err(conflict())
            };
        }
        let Some((txn_id, d)) = prior.txns.get(&key) else {
            return Ok(None);
        };
        if d != digest {
            return Err(conflict());
        }
        let missing = || Error::Internal(format!("transaction {txn_id} has no record"));
        match key.0.as_str() {
            "gift" => prior
                .gifts
                .get(txn_id)
                .cloned()
                .map(Applied::Gift)
                .ok_or_else(missing),
            "refund" => prior
                .refunds
                .get(txn_id)
                .cloned()
                .map(Applied::Refund)
                .ok_or_else(missing),
            _ => prior
                .topups
                .get(txn_id)
                .cloned()
                .map(Applied::TopUp)
                .ok_or_else(missing),
        }
        .map(Some)
    }

    fn open_txn(
        &mut self,
        kind: &'static str,
        actor: &str,
        key: &str,
        digest: &str,
        created_ms: u64,
    ) -> i64 {
        let id = self.ids.next().expect("one id drawn per request");
        self.txn_id.push(id);
        self.txn_kind.push(kind);
        self.txn_actor.push(actor.to_owned());
        self.txn_key.push(key.to_owned());
        self.txn_digest.push(digest.to_owned());
        self.txn_created_ms.push(created_ms as i64);
        id
    }

    fn post(&mut self, txn_id: i64, entries: &[Entry], balances: &mut HashMap<String, i64>) {
        for e in entries {
            if e.kind().is_hot() {
                self.hot.add(e);
            } else {
                let balance = balances.entry(e.account.clone()).or_insert(0);
                *balance += e.amount_coins;
                if e.kind() == posting::AccountKind::Receivable {
                    assert!(
                        *balance <= 0,
                        "receivable {} would go above zero",
                        e.account
                    );
                } else {
                    assert!(*balance >= 0, "wallet {} would go negative", e.account);
                }
                *self.wallet_deltas.entry(e.account.clone()).or_insert(0) += e.amount_coins;
            }
            self.entries.push((txn_id, e.clone()));
        }
    }

    fn top_up(
        &mut self,
        req: &TopUpRequest,
        prior: &Prior,
        balances: &mut HashMap<String, i64>,
    ) -> Result<TopUpReceipt> {
        let digest = req.payload_digest();
        let key = owned(("topup", "store", &req.purchase_id));
        match self.earlier(key.clone(), &digest, prior)? {
            Some(Applied::TopUp(mut receipt)) => {
                receipt.replayed = true;
                return Ok(receipt);
            }
            Some(Applied::Gift(_) | Applied::Refund(_)) => {
                unreachable!("a top-up key names a top-up")
            }
            None => {}
        }
        let plan = posting::top_up(req, owed_of(balances, &req.user));
        let txn_id = self.open_txn("topup", "store", &req.purchase_id, &digest, now_ms());
        self.post(txn_id, plan.posting.entries(), balances);
        let balance_coins = wallet_of(balances, &req.user).iter().sum();
        let receipt = TopUpReceipt {
            txn_id: txn_id as u64,
            user: req.user.clone(),
            channel: req.channel,
            coins: req.coins,
            purchase_id: req.purchase_id.clone(),
            repaid_coins: plan.repaid_coins,
            balance_coins,
            replayed: false,
        };
        self.topups.push((txn_id, receipt.clone()));
        self.applied
            .insert(key, (digest, Applied::TopUp(receipt.clone())));
        Ok(receipt)
    }

    fn refund(
        &mut self,
        req: &RefundRequest,
        prior: &Prior,
        balances: &mut HashMap<String, i64>,
    ) -> Result<RefundReceipt> {
        let digest = req.payload_digest();
        let key = owned(("refund", "store", &req.purchase_id));
        match self.earlier(key.clone(), &digest, prior)? {
            Some(Applied::Refund(mut receipt)) => {
                receipt.replayed = true;
                return Ok(receipt);
            }
            Some(_) => unreachable!("a refund key names a refund"),
            None => {}
        }
        // A top-up earlier in this same batch is not in `purchases` (read before it committed).
        let topup_key = owned(("topup", "store", &req.purchase_id));
        let purchase = match (
            self.purchases.get(&req.purchase_id),
            self.applied.get(&topup_key),
        ) {
            (Some(p), _) => p.clone(),
            (None, Some((_, Applied::TopUp(t)))) => posting::Purchase {
                user: t.user.clone(),
                channel: t.channel,
                coins: t.coins,
            },
            _ => return Err(Error::PurchaseNotFound(req.purchase_id.clone())),
        };
        let plan = posting::refund(
            &purchase,
            wallet_of(balances, &purchase.user),
            &req.spend_order,
        );
        let created_ms = now_ms();
        let txn_id = self.open_txn("refund", "store", &req.purchase_id, &digest, created_ms);
        self.post(txn_id, plan.posting.entries(), balances);
        let receipt = RefundReceipt {
            txn_id: txn_id as u64,
            purchase_id: req.purchase_id.clone(),
            reason: req.reason,
            balance_coins: wallet_of(balances, &purchase.user).iter().sum(),
            owed_coins: owed_of(balances, &purchase.user),
            user: purchase.user,
            channel: purchase.channel,
            coins: purchase.coins,
            wallet_coins: plan.wallet_coins(),
            debt_coins: plan.debt_coins,
            created_ms,
            replayed: false,
        };
        self.refunds.push((txn_id, receipt.clone()));
        self.applied
            .insert(key, (digest, Applied::Refund(receipt.clone())));
        Ok(receipt)
    }

    fn gift(
        &mut self,
        req: &GiftRequest,
        prior: &Prior,
        balances: &mut HashMap<String, i64>,
    ) -> Result<GiftOutcome> {
        let digest = req.payload_digest();
        let key = owned(("gift", &req.sender, &req.idempotency_key));
        match self.earlier(key.clone(), &digest, prior)? {
            Some(Applied::Gift(receipt)) => {
                return Ok(GiftOutcome {
                    receipt,
                    replayed: true,
                    split: None,
                })
            }
            Some(Applied::TopUp(_) | Applied::Refund(_)) => unreachable!("a gift key names a gift"),
            None => {}
        }
        // Refusals come from the plan, before anything is recorded for this request.
        let spent = self.spent.get(&req.sender).copied().unwrap_or(0);
        let limits = self.limits.get(&req.sender).copied().unwrap_or_default();
        let allowance = Allowance::new(&req.caps, &limits, spent);
        let plan = posting::gift(req, wallet_of(balances, &req.sender), allowance)?;
        *self.spent.entry(req.sender.clone()).or_insert(0) += req.price_coins;
        let created_ms = now_ms();
        let txn_id = self.open_txn(
            "gift",
            &req.sender,
            &req.idempotency_key,
            &digest,
            created_ms,
        );
        self.post(txn_id, plan.posting.entries(), balances);
        let receipt = GiftReceipt::new(req, &plan, new_gift_id(created_ms), created_ms);
        self.gifts.push((txn_id, receipt.clone()));
        self.applied
            .insert(key, (digest, Applied::Gift(receipt.clone())));
        Ok(GiftOutcome {
            receipt,
            replayed: false,
            split: Some(plan.split),
        })
    }

    /// Writes the batch's rows, all statements pipelined. A transaction row that did not go in
    /// means another node committed that key meanwhile (see the module doc): the attempt fails
    /// with [`Failed::Retry`] and is rolled back.
    async fn write(
        &mut self,
        client: &deadpool_postgres::Client,
        shard: i16,
        seqs: &[(String, i64)],
    ) -> std::result::Result<(), Failed> {
        type Call<'a> = std::pin::Pin<
            Box<
                dyn std::future::Future<Output = std::result::Result<u64, tokio_postgres::Error>>
                    + Send
                    + 'a,
            >,
        >;
        let rows = Rows::of(self, seqs);
        let st = Statements::prepare(client).await?;
        // The transactions go first, so the count check below reads their result.
        let txns: [&(dyn ToSql + Sync); 6] = [
            &self.txn_id,
            &self.txn_kind,
            &self.txn_actor,
            &self.txn_key,
            &self.txn_digest,
            &self.txn_created_ms,
        ];
        let entries: [&(dyn ToSql + Sync); 4] = [
            &rows.entry_txn,
            &rows.entry_account,
            &rows.entry_amount,
            &rows.entry_channel,
        ];
        let gifts: Vec<&(dyn ToSql + Sync)> =
            std::iter::once(&rows.gift_txn as &(dyn ToSql + Sync))
                .chain(rows.gift_text.iter().map(|c| c as &(dyn ToSql + Sync)))
                .chain(rows.gift_int.iter().map(|c| c as &(dyn ToSql + Sync)))
                .collect();
        let topups: [&(dyn ToSql + Sync); 6] = [
            &rows.topup_txn,
            &rows.topup_user,
            &rows.topup_channel,
            &rows.topup_coins,
            &rows.topup_balance,
            &rows.topup_repaid,
        ];
        let refunds: Vec<&(dyn ToSql + Sync)> =
            std::iter::once(&rows.refund_txn as &(dyn ToSql + Sync))
                .chain(rows.refund_text.iter().map(|c| c as &(dyn ToSql + Sync)))
                .chain(rows.refund_int.iter().map(|c| c as &(dyn ToSql + Sync)))
                .collect();
        let debits: [&(dyn ToSql + Sync); 2] = [&rows.debit_account, &rows.debit_amount];
        let zero = 0i16;
        let credits: [&(dyn ToSql + Sync); 4] = [
            &rows.credit_account,
            &zero,
            &rows.credit_amount,
            &rows.credit_external,
        ];
        let hot: [&(dyn ToSql + Sync); 4] = [
            &rows.hot_account,
            &shard,
            &rows.hot_amount,
            &rows.hot_external,
        ];
        let probe_ms = now_ms().to_string();
        let probe: [&(dyn ToSql + Sync); 1] = [&probe_ms];
        let seqs: [&(dyn ToSql + Sync); 2] = [&rows.seq_gift, &rows.seq_value];
        let now = now_ms() as i64;
        let limits: [&(dyn ToSql + Sync); 4] = [
            &rows.limits_user,
            &rows.limits_cap,
            &rows.limits_minor,
            &now,
        ];
        let mut calls: Vec<Call<'_>> = Vec::with_capacity(11);
        calls.push(Box::pin(client.execute(&st.txns, &txns)));
        if !rows.entry_txn.is_empty() {
            calls.push(Box::pin(client.execute(&st.entries, &entries)));
        }
        if !rows.gift_txn.is_empty() {
            calls.push(Box::pin(client.execute(&st.gifts, &gifts)));
        }
        if !rows.topup_txn.is_empty() {
            calls.push(Box::pin(client.execute(&st.topups, &topups)));
        }
        if !rows.refund_txn.is_empty() {
            calls.push(Box::pin(client.execute(&st.refunds, &refunds)));
        }
        let debit_call = calls.len();
        if !rows.debit_account.is_empty() {
            calls.push(Box::pin(client.execute(&st.debits, &debits)));
        }
        if !rows.credit_account.is_empty() {
            calls.push(Box::pin(client.execute(&st.upsert, &credits)));
        }
        if !rows.hot_account.is_empty() {
            calls.push(Box::pin(client.execute(&st.upsert, &hot)));
        }
        if self.probe {
            calls.push(Box::pin(client.execute(&st.probe, &probe)));
        }
        if !rows.seq_gift.is_empty() {
            calls.push(Box::pin(client.execute(&st.seqs, &seqs)));
        }
        if !rows.limits_user.is_empty() {
            calls.push(Box::pin(client.execute(&st.limits, &limits)));
        }
        let counts = futures_util::future::try_join_all(calls).await?;
        if counts[0] != self.txn_id.len() as u64 {
            return Err(Failed::Retry(
                "another node committed one of the batch's keys".into(),
            ));
        }
        if !rows.debit_account.is_empty() {
            assert_eq!(
                counts[debit_call],
                rows.debit_account.len() as u64,
                "a debited wallet row is missing"
            );
        }
        Ok(())
    }
}

/// A batch's rows as the column arrays its set-based statements take.
#[derive(Default)]
struct Rows {
    entry_txn: Vec<i64>,
    entry_account: Vec<String>,
    entry_amount: Vec<i64>,
    entry_channel: Vec<&'static str>,
    gift_txn: Vec<i64>,
    /// gift_id, room, sender, streamer, sticker.
    gift_text: [Vec<String>; 5],
    /// price, store, streamer, platform, funding ios/android/web, balance, created_ms.
    gift_int: [Vec<i64>; 9],
    topup_txn: Vec<i64>,
    topup_user: Vec<String>,
    topup_channel: Vec<&'static str>,
    topup_coins: Vec<i64>,
    topup_balance: Vec<i64>,
    topup_repaid: Vec<i64>,
    refund_txn: Vec<i64>,
    /// purchase_id, reason, user, channel.
    refund_text: [Vec<String>; 4],
    /// coins, wallet, debt, balance, owed, created_ms.
    refund_int: [Vec<i64>; 6],
    /// Wallets whose balance the batch lowers (rows that exist and are locked), in account order.
    debit_account: Vec<String>,
    debit_amount: Vec<i64>,
    /// Wallets the batch raises (rows may be new), in account order.
    credit_account: Vec<String>,
    credit_amount: Vec<i64>,
    credit_external: Vec<i16>,
    /// Hot accounts' summed changes, in account order.
    hot_account: Vec<String>,
    hot_amount: Vec<i64>,
    hot_external: Vec<i16>,
    seq_gift: Vec<String>,
    seq_value: Vec<i64>,
    /// Users' new limits, one row per user (the batch's last change of each).
    limits_user: Vec<String>,
    limits_cap: Vec<Option<i64>>,
    limits_minor: Vec<i16>,
}

impl Rows {
    fn of(plan: &mut Plan, seqs: &[(String, i64)]) -> Rows {
        let mut r = Rows::default();
        for (txn, e) in &plan.entries {
            r.entry_txn.push(*txn);
            r.entry_account.push(e.account.clone());
            r.entry_amount.push(e.amount_coins);
            r.entry_channel.push(e.channel.as_str());
        }
        for (txn, g) in &plan.gifts {
            r.gift_txn.push(*txn);
            for (col, v) in r.gift_text.iter_mut().zip([
                &g.gift_id,
                &g.room,
                &g.sender,
                &g.streamer,
                &g.sticker,
            ]) {
                col.push(v.clone());
            }
            let f = g.funding_coins;
            for (col, v) in r.gift_int.iter_mut().zip([
                g.price_coins,
                g.store_coins,
                g.streamer_coins,
                g.platform_coins,
                f[0],
                f[1],
                f[2],
                g.balance_coins,
                g.created_ms,
            ]) {
                col.push(v as i64);
            }
        }
        for (txn, t) in &plan.topups {
            r.topup_txn.push(*txn);
            r.topup_user.push(t.user.clone());
            r.topup_channel.push(t.channel.as_str());
            r.topup_coins.push(t.coins as i64);
            r.topup_balance.push(t.balance_coins as i64);
            r.topup_repaid.push(t.repaid_coins as i64);
        }
        for (txn, f) in &plan.refunds {
            r.refund_txn.push(*txn);
            for (col, v) in r.refund_text.iter_mut().zip([
                f.purchase_id.as_str(),
                f.reason.as_str(),
                f.user.as_str(),
                f.channel.as_str(),
            ]) {
                col.push(v.to_owned());
            }
            for (col, v) in r.refund_int.iter_mut().zip([
                f.coins,
                f.wallet_coins,
                f.debt_coins,
                f.balance_coins,
                f.owed_coins,
                f.created_ms,
            ]) {
                col.push(v as i64);
            }
        }
        // A wallet whose changes net to zero still goes through the upsert: it may be new in this
        // batch (topped up and spent in full), and its entries need its account row.
        let mut deltas: Vec<(String, i64)> = plan.wallet_deltas.drain().collect();
        deltas.sort_unstable();
        for (account, delta) in deltas {
            // A receivable may be new and negative at once: it is always upserted, as an
            // account that may go negative.
            let receivable =
                posting::AccountKind::of(&account) == Some(posting::AccountKind::Receivable);
            if receivable {
                r.credit_account.push(account);
                r.credit_amount.push(delta);
                r.credit_external.push(1);
            } else if delta < 0 {
                r.debit_account.push(account);
                r.debit_amount.push(delta);
            } else {
                r.credit_account.push(account);
                r.credit_amount.push(delta);
                r.credit_external.push(0);
            }
        }
        for (account, delta) in plan.hot.drain_sorted() {
            let external = posting::AccountKind::of(&account)
                .is_some_and(posting::AccountKind::may_go_negative);
            r.hot_account.push(account);
            r.hot_amount.push(delta);
            r.hot_external.push(external as i16);
        }
        for (id, seq) in seqs {
            r.seq_gift.push(id.clone());
            r.seq_value.push(*seq);
        }
        let last: HashMap<&String, &UserLimits> =
            plan.set_limits.iter().map(|(u, l)| (u, l)).collect();
        let mut last: Vec<_> = last.into_iter().collect();
        last.sort_unstable_by_key(|(u, _)| *u);
        for (user, limits) in last {
            r.limits_user.push(user.clone());
            r.limits_cap.push(limits.window_coins_max.map(|c| c as i64));
            r.limits_minor.push(limits.minor as i16);
        }
        r
    }
}

/// Records the room seqs of committed gifts: `$1` gift ids, `$2` seqs. The first seq noted for a
/// gift stays.
///
/// An insert, with no join: it was an `UPDATE gifts … FROM unnest(…) WHERE g.gift_id = ANY($1)
/// AND g.gift_id = d.gift_id`, whose generic plan (which guesses 10 elements for an array) took
/// the gifts found by `ANY` as the outer side and re-read the whole array for each (a join
/// filter: 1,000,000 comparisons and 0.47 s for a batch of 1,000 gifts). Public for the test
/// that checks its plan (`tests/shared_ledger.rs`).
pub const NOTE_GIFT_SEQS: &str = "INSERT INTO gift_seqs (gift_id, room_seq)
     SELECT * FROM unnest($1::TEXT[], $2::BIGINT[])
     ON CONFLICT (gift_id) DO NOTHING";

/// The batch's write statements, prepared once per connection (the pool caches them).
struct Statements {
    txns: tokio_postgres::Statement,
    entries: tokio_postgres::Statement,
    gifts: tokio_postgres::Statement,
    topups: tokio_postgres::Statement,
    refunds: tokio_postgres::Statement,
    debits: tokio_postgres::Statement,
    upsert: tokio_postgres::Statement,
    probe: tokio_postgres::Statement,
    seqs: tokio_postgres::Statement,
    limits: tokio_postgres::Statement,
}

impl Statements {
    async fn prepare(client: &deadpool_postgres::Client) -> std::result::Result<Self, Failed> {
        Ok(Statements {
            txns: client
                .prepare_cached(
                    "INSERT INTO txns (txn_id, kind, actor, idem_key, payload_sha256, created_ms)
                     SELECT * FROM unnest($1::BIGINT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], $6::BIGINT[])
                     ON CONFLICT (kind, actor, idem_key) DO NOTHING",
                )
                .await?,
            entries: client
                .prepare_cached(
                    "INSERT INTO entries (txn_id, account, amount_coins, channel)
                     SELECT * FROM unnest($1::BIGINT[], $2::TEXT[], $3::BIGINT[], $4::TEXT[])",
                )
                .await?,
            gifts: client
                .prepare_cached(
                    "INSERT INTO gifts (txn_id, gift_id, room, sender, streamer, sticker, price_coins,
                         store_coins, streamer_coins, platform_coins, funding_ios, funding_android,
                         funding_web, balance_coins, created_ms)
                     SELECT * FROM unnest($1::BIGINT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[],
                         $6::TEXT[], $7::BIGINT[], $8::BIGINT[], $9::BIGINT[], $10::BIGINT[], $11::BIGINT[],
                         $12::BIGINT[], $13::BIGINT[], $14::BIGINT[], $15::BIGINT[])",
                )
                .await?,
            topups: client
                .prepare_cached(
                    "INSERT INTO topups (txn_id, \"user\", channel, coins, balance_coins, repaid_coins)
                     SELECT * FROM unnest($1::BIGINT[], $2::TEXT[], $3::TEXT[], $4::BIGINT[], $5::BIGINT[], $6::BIGINT[])",
                )
                .await?,
            refunds: client
                .prepare_cached(
                    "INSERT INTO refunds (txn_id, purchase_id, reason, \"user\", channel, coins, wallet_coins,
                         debt_coins, balance_coins, owed_coins, created_ms)
                     SELECT * FROM unnest($1::BIGINT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[],
                         $6::BIGINT[], $7::BIGINT[], $8::BIGINT[], $9::BIGINT[], $10::BIGINT[], $11::BIGINT[])",
                )
                .await?,
            debits: client
                .prepare_cached(
                    "UPDATE account_rows AS a SET balance_coins = a.balance_coins + d.delta
                     FROM unnest($1::TEXT[], $2::BIGINT[]) AS d(account, delta)
                     WHERE a.account = ANY($1) AND a.shard = 0 AND a.account = d.account",
                )
                .await?,
            upsert: client
                .prepare_cached(
                    "INSERT INTO account_rows (account, shard, balance_coins, external)
                     SELECT a, $2, d, e FROM unnest($1::TEXT[], $3::BIGINT[], $4::SMALLINT[]) AS h(a, d, e)
                     ORDER BY a
                     ON CONFLICT (account, shard) DO UPDATE
                     SET balance_coins = account_rows.balance_coins + excluded.balance_coins",
                )
                .await?,
            probe: client
                .prepare_cached(
                    "INSERT INTO meta (key, value) VALUES ('probe_ms', $1)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                )
                .await?,
            seqs: client.prepare_cached(NOTE_GIFT_SEQS).await?,
            limits: client
                .prepare_cached(
                    "INSERT INTO user_limits (\"user\", window_coins_max, minor, updated_ms)
                     SELECT u, c, m, $4 FROM unnest($1::TEXT[], $2::BIGINT[], $3::SMALLINT[]) AS l(u, c, m)
                     ON CONFLICT (\"user\") DO UPDATE SET window_coins_max = excluded.window_coins_max,
                         minor = excluded.minor, updated_ms = excluded.updated_ms",
                )
                .await?,
        })
    }
}

/// What a user owes, from the batch's balances.
fn owed_of(balances: &HashMap<String, i64>, user: &str) -> u64 {
    let account = posting::receivable_account(user);
    owed_of_balance(&account, balances.get(&account).copied().unwrap_or(0))
}

/// A user's wallet per channel from the batch's balances.
fn wallet_of(balances: &HashMap<String, i64>, user: &str) -> ChannelCoins {
    Channel::ALL.map(|ch| {
        let account = posting::wallet_account(user, ch);
        nonnegative(&account, balances.get(&account).copied().unwrap_or(0))
    })
}

/// A red packet request and its reply.
enum PacketOp {
    Drop(Box<PacketDrop>, Reply<PacketReceipt>),
    Grab(PacketGrab, Reply<GrabReceipt>),
    Expire(u64, Reply<Vec<PacketEnd>>),
}

/// Red packets on PostgreSQL: each request is one transaction of its own, run by the writer
/// between batches. Its rows are locked in account order, as a batch locks them, so the two
/// never deadlock; a packet's accounts are locked by every grab and expiry of it, so grabs on
/// several nodes take shares one at a time and an expiry runs once.
mod packets {
    use super::*;
    use crate::gift::red_packet;
    use crate::ledger::{new_packet_id, GrabView, PacketEndReason, PACKETS_EXPIRED_PER_CALL_MAX};
    use std::future::Future;
    use std::pin::Pin;
    use tokio_postgres::Transaction;

    type Step<'a, T> = Pin<Box<dyn Future<Output = std::result::Result<T, Failed>> + Send + 'a>>;

    pub(super) async fn apply(writer: &Writer, op: PacketOp) {
        match op {
            PacketOp::Drop(req, r) => {
                let result = in_txn(writer, |tx| {
                    let req = req.clone();
                    Box::pin(async move { drop_packet(tx, &req).await })
                })
                .await;
                drop(r.send(result));
            }
            PacketOp::Grab(req, r) => {
                let result = in_txn(writer, |tx| {
                    let req = req.clone();
                    Box::pin(async move { grab(tx, &req).await })
                })
                .await;
                drop(r.send(result));
            }
            PacketOp::Expire(now, r) => {
                let result = expire(writer, now).await;
                drop(r.send(result));
            }
        }
    }

    /// Runs `step` in a transaction, deciding again after a lost race, up to the batch bound.
    async fn in_txn<T, F>(writer: &Writer, step: F) -> Result<T>
    where
        F: for<'a> Fn(&'a Transaction<'a>) -> Step<'a, T>,
    {
        let mut why = String::new();
        for _ in 0..BATCH_ATTEMPTS_MAX {
            let mut client = writer.pool.get().await.map_err(pool_error)?;
            let tx = client.transaction().await.map_err(pg)?;
            tx.batch_execute(&format!(
                "SET LOCAL statement_timeout = {}",
                writer.statement_timeout_ms
            ))
            .await
            .map_err(pg)?;
            match step(&tx).await {
                Ok(value) => match tx.commit().await {
                    Ok(()) => return Ok(value),
                    Err(e) => match Failed::from(e) {
                        Failed::Retry(w) => why = w,
                        _ => {
                            return Err(Error::LedgerUnavailable("red packet commit failed".into()))
                        }
                    },
                },
                Err(Failed::Retry(w)) => why = w,
                Err(Failed::Storage(e)) => return Err(e),
                Err(Failed::Unknown(e, ..)) => return Err(e),
            }
        }
        Err(Error::LedgerUnavailable(format!(
            "red packet lost {BATCH_ATTEMPTS_MAX} races: {why}"
        )))
    }

    /// Refusals travel as `Failed::Storage` of the crate's error, so the transaction rolls back.
    fn refuse(e: Error) -> Failed {
        Failed::Storage(e)
    }

    /// Locks `accounts` (shard 0) in account order and returns their balances.
    async fn lock(
        tx: &Transaction<'_>,
        accounts: &[String],
    ) -> std::result::Result<HashMap<String, i64>, Failed> {
        let rows = tx
            .query(
                "SELECT account, balance_coins FROM account_rows
                 WHERE shard = 0 AND account = ANY($1) ORDER BY account FOR UPDATE",
                &[&accounts],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    fn coins_of(
        balances: &HashMap<String, i64>,
        account: impl Fn(Channel) -> String,
    ) -> ChannelCoins {
        Channel::ALL.map(|ch| {
            let a = account(ch);
            nonnegative(&a, balances.get(&a).copied().unwrap_or(0))
        })
    }

    /// The prior application of `(kind, actor, key)`: its txn id, or a conflict.
    async fn prior(
        tx: &Transaction<'_>,
        kind: &str,
        actor: &str,
        key: &str,
        digest: &str,
    ) -> std::result::Result<Option<i64>, Failed> {
        let row = tx
            .query_opt(
                "SELECT txn_id, payload_sha256 FROM txns WHERE kind = $1 AND actor = $2 AND idem_key = $3",
                &[&kind, &actor, &key],
            )
            .await?;
        match row {
            Some(r) if r.get::<_, String>(1) != digest => {
                Err(refuse(Error::IdempotencyConflict(key.to_owned())))
            }
            Some(r) => Ok(Some(r.get(0))),
            None => Ok(None),
        }
    }

    /// Records a transaction and its entries; debits go to locked rows that exist.
    async fn post(
        tx: &Transaction<'_>,
        (kind, actor, key, digest): (&str, &str, &str, &str),
        created_ms: u64,
        entries: &[Entry],
    ) -> std::result::Result<i64, Failed> {
        let row = tx
            .query_opt(
                "INSERT INTO txns (txn_id, kind, actor, idem_key, payload_sha256, created_ms)
                 VALUES (nextval('txn_ids'), $1, $2, $3, $4, $5)
                 ON CONFLICT (kind, actor, idem_key) DO NOTHING RETURNING txn_id",
                &[&kind, &actor, &key, &digest, &(created_ms as i64)],
            )
            .await?;
        let Some(row) = row else {
            return Err(Failed::Retry("another node applied this key".into()));
        };
        let txn_id: i64 = row.get(0);
        for e in entries {
            assert!(
                !e.kind().is_hot(),
                "red packets move wallet and packet coins only"
            );
            tx.execute(
                "INSERT INTO entries (txn_id, account, amount_coins, channel) VALUES ($1, $2, $3, $4)",
                &[&txn_id, &e.account, &e.amount_coins, &e.channel.as_str()],
            )
            .await?;
            if e.amount_coins < 0 {
                let n = tx
                    .execute(
                        "UPDATE account_rows SET balance_coins = balance_coins + $2
                         WHERE account = $1 AND shard = 0",
                        &[&e.account, &e.amount_coins],
                    )
                    .await?;
                assert_eq!(n, 1, "a debited account row is locked and exists");
            } else {
                tx.execute(
                    "INSERT INTO account_rows (account, shard, balance_coins, external) VALUES ($1, 0, $2, 0)
                     ON CONFLICT (account, shard) DO UPDATE
                     SET balance_coins = account_rows.balance_coins + excluded.balance_coins",
                    &[&e.account, &e.amount_coins],
                )
                .await?;
            }
        }
        Ok(txn_id)
    }

    async fn drop_packet(
        tx: &Transaction<'_>,
        req: &PacketDrop,
    ) -> std::result::Result<PacketReceipt, Failed> {
        let wallets: Vec<String> = Channel::ALL
            .iter()
            .map(|ch| posting::wallet_account(&req.sender, *ch))
            .collect();
        let balances = lock(tx, &wallets).await?;
        let digest = req.payload_digest();
        if let Some(txn_id) = prior(tx, "packet", &req.sender, &req.key, &digest).await? {
            let mut receipt = load_packet(tx, txn_id).await?;
            receipt.replayed = true;
            return Ok(receipt);
        }
        let created_ms = now_ms();
        let users = vec![req.sender.clone()];
        let since = vec![created_ms.saturating_sub(req.caps.window_ms) as i64];
        let limits = read_limits_in(tx, &users).await?;
        let spent = read_spent_in(tx, &users, &since).await?;
        let allowance = Allowance::new(&req.caps, &limits, spent);
        let packet_id = new_packet_id(created_ms);
        let plan = posting::drop_packet(
            req,
            &packet_id,
            coins_of(&balances, |ch| posting::wallet_account(&req.sender, ch)),
            allowance,
        )
        .map_err(refuse)?;
        let cut = red_packet::cut(req.total_coins, req.shares, &mut rand::rng());
        let key = (
            "packet",
            req.sender.as_str(),
            req.key.as_str(),
            digest.as_str(),
        );
        let txn_id = post(tx, key, created_ms, plan.posting.entries()).await?;
        let f = plan.funding_coins.map(|c| c as i64);
        let balance_coins: u64 = plan.balances_after.iter().sum();
        tx.execute(
            "INSERT INTO packets (txn_id, packet_id, room, sender, total_coins, shares, funding_ios,
                 funding_android, funding_web, balance_coins, created_ms, expires_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            &[
                &txn_id,
                &packet_id,
                &req.room,
                &req.sender,
                &(req.total_coins as i64),
                &(req.shares as i64),
                &f[0],
                &f[1],
                &f[2],
                &(balance_coins as i64),
                &(created_ms as i64),
                &(req.expires_ms as i64),
            ],
        )
        .await?;
        let indexes: Vec<i64> = (0..cut.len() as i64).collect();
        let coins: Vec<i64> = cut.iter().map(|c| *c as i64).collect();
        tx.execute(
            "INSERT INTO packet_shares (packet_id, share_index, coins)
             SELECT $1, i, c FROM unnest($2::BIGINT[], $3::BIGINT[]) AS s(i, c)",
            &[&packet_id, &indexes, &coins],
        )
        .await?;
        load_packet(tx, txn_id).await
    }

    async fn read_limits_in(
        tx: &Transaction<'_>,
        users: &[String],
    ) -> std::result::Result<UserLimits, Failed> {
        let row = tx
            .query_opt(
                "SELECT window_coins_max, minor FROM user_limits WHERE \"user\" = $1",
                &[&users[0]],
            )
            .await?;
        Ok(row.map_or_else(UserLimits::default, |r| UserLimits {
            window_coins_max: r.get::<_, Option<i64>>(0).map(|c| c as u64),
            minor: r.get::<_, i16>(1) != 0,
        }))
    }

    async fn read_spent_in(
        tx: &Transaction<'_>,
        users: &[String],
        since: &[i64],
    ) -> std::result::Result<u64, Failed> {
        let row = tx
            .query_one(
                "SELECT ((SELECT COALESCE(SUM(price_coins), 0) FROM gifts WHERE sender = $1 AND created_ms > $2)
                       + (SELECT COALESCE(SUM(total_coins), 0) FROM packets WHERE sender = $1 AND created_ms > $2))::BIGINT",
                &[&users[0], &since[0]],
            )
            .await?;
        Ok(nonnegative("spending", row.get(0)))
    }

    async fn load_packet(
        tx: &Transaction<'_>,
        txn_id: i64,
    ) -> std::result::Result<PacketReceipt, Failed> {
        let r = tx
            .query_one(
                "SELECT packet_id, room, sender, total_coins, shares, funding_ios, funding_android,
                        funding_web, balance_coins, created_ms, expires_ms
                 FROM packets WHERE txn_id = $1",
                &[&txn_id],
            )
            .await?;
        let u = |i: usize| r.get::<_, i64>(i) as u64;
        Ok(PacketReceipt {
            packet_id: r.get(0),
            room: r.get(1),
            sender: r.get(2),
            total_coins: u(3),
            shares: u(4),
            funding_coins: [u(5), u(6), u(7)],
            balance_coins: u(8),
            created_ms: u(9),
            expires_ms: u(10),
            replayed: false,
        })
    }

    struct PacketRow {
        room: String,
        sender: String,
        total_coins: u64,
        shares: u64,
        grabbed_shares: u64,
        expires_ms: u64,
        ended: bool,
    }

    async fn packet_row(
        tx: &Transaction<'_>,
        packet_id: &str,
    ) -> std::result::Result<Option<PacketRow>, Failed> {
        let row = tx
            .query_opt(
                "SELECT room, sender, total_coins, shares, grabbed_shares, expires_ms, ended_ms IS NOT NULL
                 FROM packets WHERE packet_id = $1",
                &[&packet_id],
            )
            .await?;
        Ok(row.map(|r| PacketRow {
            room: r.get(0),
            sender: r.get(1),
            total_coins: r.get::<_, i64>(2) as u64,
            shares: r.get::<_, i64>(3) as u64,
            grabbed_shares: r.get::<_, i64>(4) as u64,
            expires_ms: r.get::<_, i64>(5) as u64,
            ended: r.get(6),
        }))
    }

    fn packet_accounts(packet_id: &str) -> Vec<String> {
        Channel::ALL
            .iter()
            .map(|ch| posting::packet_account(packet_id, *ch))
            .collect()
    }

    async fn grab(
        tx: &Transaction<'_>,
        req: &PacketGrab,
    ) -> std::result::Result<GrabReceipt, Failed> {
        let mut accounts = packet_accounts(&req.packet_id);
        accounts.extend(Channel::ALL.map(|ch| posting::wallet_account(&req.user, ch)));
        // The packet's rows serialise its grabs and its expiry, on every node.
        let balances = lock(tx, &accounts).await?;
        let packet = match packet_row(tx, &req.packet_id).await? {
            Some(p) if p.room == req.room => p,
            _ => return Err(refuse(Error::PacketNotFound(req.packet_id.clone()))),
        };
        if let Some(txn_id) = prior(tx, "grab", &req.user, &req.packet_id, &req.packet_id).await? {
            return load_grab(tx, txn_id, &packet).await;
        }
        if packet.grabbed_shares == packet.shares {
            return Err(refuse(Error::PacketEmpty));
        }
        if packet.ended || req.now_ms >= packet.expires_ms {
            return Err(refuse(Error::PacketExpired));
        }
        let share_index = packet.grabbed_shares;
        let coins: i64 = tx
            .query_one(
                "SELECT coins FROM packet_shares WHERE packet_id = $1 AND share_index = $2",
                &[&req.packet_id, &(share_index as i64)],
            )
            .await?
            .get(0);
        let left = coins_of(&balances, |ch| posting::packet_account(&req.packet_id, ch));
        let (taken, posting) = posting::grab(&req.packet_id, &req.user, left, coins as u64);
        let created_ms = now_ms();
        let key = (
            "grab",
            req.user.as_str(),
            req.packet_id.as_str(),
            req.packet_id.as_str(),
        );
        let txn_id = post(tx, key, created_ms, posting.entries()).await?;
        let before: u64 = coins_of(&balances, |ch| posting::wallet_account(&req.user, ch))
            .iter()
            .sum();
        let balance_coins = before + coins as u64;
        let t = taken.map(|c| c as i64);
        tx.execute(
            "INSERT INTO packet_grabs (txn_id, packet_id, share_index, grabber, coins, ch_ios,
                 ch_android, ch_web, balance_coins, created_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            &[
                &txn_id,
                &req.packet_id,
                &(share_index as i64),
                &req.user,
                &coins,
                &t[0],
                &t[1],
                &t[2],
                &(balance_coins as i64),
                &(created_ms as i64),
            ],
        )
        .await?;
        let last = share_index + 1 == packet.shares;
        let ended: Option<i64> = last.then_some(created_ms as i64);
        tx.execute(
            "UPDATE packets SET grabbed_shares = grabbed_shares + 1, grabbed_coins = grabbed_coins + $2,
                 ended_ms = COALESCE($3, ended_ms)
             WHERE packet_id = $1",
            &[&req.packet_id, &coins, &ended],
        )
        .await?;
        let mut receipt = load_grab(tx, txn_id, &packet).await?;
        receipt.replayed = false;
        if last {
            receipt.end = Some(packet_end(tx, &req.packet_id, PacketEndReason::AllTaken).await?);
        }
        Ok(receipt)
    }

    async fn load_grab(
        tx: &Transaction<'_>,
        txn_id: i64,
        packet: &PacketRow,
    ) -> std::result::Result<GrabReceipt, Failed> {
        let r = tx
            .query_one(
                "SELECT g.packet_id, g.grabber, g.share_index, g.coins, g.ch_ios, g.ch_android, g.ch_web,
                        g.balance_coins, p.grabbed_shares
                 FROM packet_grabs g JOIN packets p ON p.packet_id = g.packet_id WHERE g.txn_id = $1",
                &[&txn_id],
            )
            .await?;
        let u = |i: usize| r.get::<_, i64>(i) as u64;
        Ok(GrabReceipt {
            packet_id: r.get(0),
            user: r.get(1),
            share_index: u(2),
            coins: u(3),
            funding_coins: [u(4), u(5), u(6)],
            balance_coins: u(7),
            grabbed_shares: u(8),
            shares: packet.shares,
            replayed: true,
            end: None,
        })
    }

    async fn packet_end(
        tx: &Transaction<'_>,
        packet_id: &str,
        reason: PacketEndReason,
    ) -> std::result::Result<PacketEnd, Failed> {
        let r = tx
            .query_one(
                "SELECT room, sender, total_coins, shares, grabbed_shares, grabbed_coins, returned_coins
                 FROM packets WHERE packet_id = $1",
                &[&packet_id],
            )
            .await?;
        let u = |i: usize| r.get::<_, i64>(i) as u64;
        let grabs = tx
            .query(
                "SELECT grabber, coins FROM packet_grabs WHERE packet_id = $1 ORDER BY share_index",
                &[&packet_id],
            )
            .await?
            .iter()
            .map(|g| GrabView {
                user: g.get(0),
                coins: g.get::<_, i64>(1) as u64,
            })
            .collect();
        Ok(PacketEnd {
            packet_id: packet_id.to_owned(),
            room: r.get(0),
            sender: r.get(1),
            reason,
            total_coins: u(2),
            shares: u(3),
            grabbed_shares: u(4),
            grabbed_coins: u(5),
            returned_coins: u(6),
            grabs,
        })
    }

    /// Ends the packets due, one transaction each; a packet another node ended meanwhile is
    /// skipped (its row, locked first, says so).
    async fn expire(writer: &Writer, now: u64) -> Result<Vec<PacketEnd>> {
        let ids: Vec<String> = {
            let client = writer.pool.get().await.map_err(pool_error)?;
            client
                .query(
                    "SELECT packet_id FROM packets WHERE ended_ms IS NULL AND expires_ms <= $1
                     ORDER BY expires_ms LIMIT $2",
                    &[&(now as i64), &(PACKETS_EXPIRED_PER_CALL_MAX as i64)],
                )
                .await
                .map_err(pg)?
                .iter()
                .map(|r| r.get(0))
                .collect()
        };
        let mut ended = Vec::with_capacity(ids.len());
        for packet_id in ids {
            let end = in_txn(writer, |tx| {
                let id = packet_id.clone();
                Box::pin(async move { expire_one(tx, &id, now).await })
            })
            .await?;
            ended.extend(end);
        }
        Ok(ended)
    }

    async fn expire_one(
        tx: &Transaction<'_>,
        packet_id: &str,
        now: u64,
    ) -> std::result::Result<Option<PacketEnd>, Failed> {
        let Some(sender) = tx
            .query_opt(
                "SELECT sender FROM packets WHERE packet_id = $1",
                &[&packet_id],
            )
            .await?
            .map(|r| r.get::<_, String>(0))
        else {
            return Ok(None);
        };
        let mut accounts = packet_accounts(packet_id);
        accounts.extend(Channel::ALL.map(|ch| posting::wallet_account(&sender, ch)));
        let balances = lock(tx, &accounts).await?;
        let packet = packet_row(tx, packet_id).await?.expect("the packet exists");
        if packet.ended {
            return Ok(None);
        }
        let left = coins_of(&balances, |ch| posting::packet_account(packet_id, ch));
        let returned: u64 = left.iter().sum();
        assert!(returned <= packet.total_coins);
        if let Some(posting) = posting::packet_return(packet_id, &packet.sender, left) {
            let key = ("packet_return", "system", packet_id, "return");
            post(tx, key, now, posting.entries()).await?;
        }
        tx.execute(
            "UPDATE packets SET ended_ms = $2, returned_coins = $3 WHERE packet_id = $1",
            &[&packet_id, &(now as i64), &(returned as i64)],
        )
        .await?;
        Ok(Some(
            packet_end(tx, packet_id, PacketEndReason::Expired).await?,
        ))
    }
}

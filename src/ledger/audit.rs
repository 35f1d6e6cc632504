//! `giftd audit`: checks a ledger against the ledger's invariants, on either backend.
//!
//! The invariants are written once, as SQL both backends understand: the PostgreSQL schema
//! offers the same `accounts` relation as SQLite (a view summing each account's shard rows), so
//! one query per invariant serves both. It reads only, and scans each table a bounded number of
//! times. Each violated invariant becomes one line of the report; `giftd audit` exits non-zero
//! when there is any. The invariants:
//!
//! 1. The storage's own integrity check passes (SQLite's `integrity_check`; PostgreSQL checks
//!    its own pages and enforces the schema's constraints on every write).
//! 2. Every transaction has entries, and its entries sum to zero (double entry).
//! 3. All balances sum to zero (money is conserved: what left the external accounts is in
//!    wallets, stores, streamers or the platform).
//! 4. Every account's balance equals the sum of its entries, every entry names an existing
//!    account and transaction, and every record (gift, top-up, refund, red packet, grab) names
//!    an existing transaction of its kind.
//! 5. No balance other than an external account's is negative.
//! 6. No idempotency key was applied twice.
//! 7. Every gift's shares sum to its price, and its entries match its shares: the sender was
//!    debited the price, and the store, streamer and platform were credited their shares.
//! 8. Every top-up credited exactly its coins, to its wallet and to the user's debt (as much as
//!    it records having repaid), and the external accounts hold exactly minus the sum of all
//!    top-ups plus the sum of all refunds.
//! 9. Every refund reverses one recorded top-up of the same user, channel and coins, once; its
//!    entries send exactly those coins back out through the external account, taking what its
//!    record says from the wallet and adding the rest to the user's debt.
//! 10. No receivable (minus a user's debt) is above zero.
//! 11. Every red packet's recorded shares are as many as it says and sum to its total; its
//!     accounts hold exactly what was neither grabbed nor returned (nothing once it ended); every
//!     grab took its recorded share, from the packet's accounts into the grabber's wallet, and
//!     the packet's grab counts agree with its grabs.
//! 12. Every streamer's gifter totals (the all-time leaderboard) equal the sums of their gifts.
//! 13. Every PK battle that ran its time was won by the higher score (no winner for equal
//!     scores), one that never started has no winner, and a room's claim names an open battle
//!     of that room (an ended battle holds none).

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use super::sqlite::Db;
use crate::error::{Error, Result};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditReport {
    pub txns: u64,
    pub gifts: u64,
    pub topups: u64,
    pub entries: u64,
    pub topped_up_coins: u64,
    pub gifted_coins: u64,
    pub violations: Vec<String>,
}

/// Violating rows reported per invariant at most.
const ROWS_PER_CHECK_MAX: usize = 20;

/// The report's counts, in [`AuditReport`] field order.
const COUNTS: &str = "SELECT (SELECT COUNT(*) FROM txns), (SELECT COUNT(*) FROM gifts),
    (SELECT COUNT(*) FROM topups), (SELECT COUNT(*) FROM entries),
    (SELECT COALESCE(SUM(coins), 0) FROM topups), (SELECT COALESCE(SUM(price_coins), 0) FROM gifts)";

/// Each invariant as a query that returns its violating rows.
const CHECKS: &[(&str, &str)] = &[
    (
        "transaction entries do not sum to zero",
        "SELECT txn_id, SUM(amount_coins) FROM entries GROUP BY txn_id HAVING SUM(amount_coins) != 0",
    ),
    (
        "transaction has no entries",
        "SELECT txn_id FROM txns WHERE txn_id NOT IN (SELECT txn_id FROM entries)",
    ),
    (
        "money not conserved: balances sum to",
        "SELECT SUM(balance_coins) FROM accounts HAVING SUM(balance_coins) != 0",
    ),
    (
        "account balance differs from its entries",
        "SELECT a.account, a.balance_coins, COALESCE(SUM(e.amount_coins), 0) FROM accounts a
         LEFT JOIN entries e ON e.account = a.account GROUP BY a.account, a.balance_coins
         HAVING a.balance_coins != COALESCE(SUM(e.amount_coins), 0)",
    ),
    (
        "entry names no existing account or transaction",
        "SELECT e.txn_id, e.account FROM entries e WHERE NOT EXISTS (SELECT 1 FROM accounts a WHERE a.account = e.account)
            OR NOT EXISTS (SELECT 1 FROM txns t WHERE t.txn_id = e.txn_id)",
    ),
    (
        // Neither backend checks this per row (SQLite runs without foreign keys; the PostgreSQL
        // writer inserts a record with its transaction, without a per-row trigger).
        "record names no transaction of its kind (table, txn)",
        "SELECT 'gifts', r.txn_id FROM gifts r WHERE NOT EXISTS
             (SELECT 1 FROM txns t WHERE t.txn_id = r.txn_id AND t.kind = 'gift')
         UNION ALL SELECT 'topups', r.txn_id FROM topups r WHERE NOT EXISTS
             (SELECT 1 FROM txns t WHERE t.txn_id = r.txn_id AND t.kind = 'topup')
         UNION ALL SELECT 'refunds', r.txn_id FROM refunds r WHERE NOT EXISTS
             (SELECT 1 FROM txns t WHERE t.txn_id = r.txn_id AND t.kind = 'refund')
         UNION ALL SELECT 'packets', r.txn_id FROM packets r WHERE NOT EXISTS
             (SELECT 1 FROM txns t WHERE t.txn_id = r.txn_id AND t.kind = 'packet')
         UNION ALL SELECT 'packet_grabs', r.txn_id FROM packet_grabs r WHERE NOT EXISTS
             (SELECT 1 FROM txns t WHERE t.txn_id = r.txn_id AND t.kind = 'grab')",
    ),
    (
        "negative balance",
        "SELECT account, balance_coins FROM accounts WHERE external = 0 AND balance_coins < 0",
    ),
    (
        "idempotency key applied more than once",
        "SELECT kind, actor, idem_key, COUNT(*) FROM txns GROUP BY kind, actor, idem_key HAVING COUNT(*) > 1",
    ),
    (
        "gift transaction without a gift record",
        "SELECT txn_id FROM txns WHERE kind = 'gift' AND txn_id NOT IN (SELECT txn_id FROM gifts)",
    ),
    (
        "gift id issued twice",
        "SELECT gift_id, COUNT(*) FROM gifts GROUP BY gift_id HAVING COUNT(*) > 1",
    ),
    (
        "gift shares do not sum to its price",
        "SELECT gift_id FROM gifts WHERE store_coins + streamer_coins + platform_coins != price_coins
            OR funding_ios + funding_android + funding_web != price_coins",
    ),
    (
        "gift entries do not match its receipt",
        "SELECT g.gift_id FROM gifts g JOIN entries x ON x.txn_id = g.txn_id
         GROUP BY g.txn_id, g.gift_id, g.price_coins, g.store_coins, g.streamer_coins, g.platform_coins, g.streamer HAVING
            g.price_coins != -SUM(CASE WHEN x.account LIKE 'wallet:%' THEN x.amount_coins ELSE 0 END)
         OR g.store_coins != SUM(CASE WHEN x.account LIKE 'store:%' THEN x.amount_coins ELSE 0 END)
         OR g.streamer_coins != SUM(CASE WHEN x.account = 'streamer:' || g.streamer THEN x.amount_coins ELSE 0 END)
         OR g.platform_coins != SUM(CASE WHEN x.account = 'platform' THEN x.amount_coins ELSE 0 END)",
    ),
    (
        "top-up entries do not match its coins",
        "SELECT t.txn_id FROM topups t JOIN entries x ON x.txn_id = t.txn_id
         GROUP BY t.txn_id, t.coins, t.user, t.channel, t.repaid_coins HAVING
            t.coins != SUM(CASE WHEN x.account = 'wallet:' || t.user || ':' || t.channel
                                  OR x.account = 'receivable:' || t.user THEN x.amount_coins ELSE 0 END)
         OR t.repaid_coins != SUM(CASE WHEN x.account = 'receivable:' || t.user THEN x.amount_coins ELSE 0 END)",
    ),
    (
        "external accounts differ from top-ups minus refunds",
        "SELECT (SELECT COALESCE(SUM(coins), 0) FROM topups) - (SELECT COALESCE(SUM(coins), 0) FROM refunds),
                (SELECT -COALESCE(SUM(balance_coins), 0) FROM accounts WHERE account LIKE 'external:%')
         WHERE (SELECT COALESCE(SUM(coins), 0) FROM topups) - (SELECT COALESCE(SUM(coins), 0) FROM refunds)
            != (SELECT -COALESCE(SUM(balance_coins), 0) FROM accounts WHERE account LIKE 'external:%')",
    ),
    (
        "refund transaction without a refund record",
        "SELECT txn_id FROM txns WHERE kind = 'refund' AND txn_id NOT IN (SELECT txn_id FROM refunds)",
    ),
    (
        "refund reverses no recorded top-up",
        "SELECT r.purchase_id FROM refunds r WHERE r.wallet_coins + r.debt_coins != r.coins OR NOT EXISTS (
            SELECT 1 FROM txns x JOIN topups t ON t.txn_id = x.txn_id
            WHERE x.kind = 'topup' AND x.actor = 'store' AND x.idem_key = r.purchase_id
              AND t.user = r.user AND t.channel = r.channel AND t.coins = r.coins)",
    ),
    (
        "refund entries do not match its record",
        "SELECT r.purchase_id FROM refunds r JOIN entries x ON x.txn_id = r.txn_id
         GROUP BY r.txn_id, r.purchase_id, r.user, r.channel, r.coins, r.wallet_coins, r.debt_coins HAVING
            r.coins != SUM(CASE WHEN x.account = 'external:' || r.channel THEN x.amount_coins ELSE 0 END)
         OR r.wallet_coins != -SUM(CASE WHEN x.account LIKE 'wallet:%' THEN x.amount_coins ELSE 0 END)
         OR r.wallet_coins != -SUM(CASE WHEN x.account IN ('wallet:' || r.user || ':ios',
                'wallet:' || r.user || ':android', 'wallet:' || r.user || ':web') THEN x.amount_coins ELSE 0 END)
         OR r.debt_coins != -SUM(CASE WHEN x.account = 'receivable:' || r.user THEN x.amount_coins ELSE 0 END)",
    ),
    (
        "red packet or grab transaction without its record",
        "SELECT txn_id FROM txns WHERE (kind = 'packet' AND txn_id NOT IN (SELECT txn_id FROM packets))
            OR (kind = 'grab' AND txn_id NOT IN (SELECT txn_id FROM packet_grabs))",
    ),
    (
        "red packet shares do not cut its total",
        "SELECT p.packet_id FROM packets p LEFT JOIN packet_shares s ON s.packet_id = p.packet_id
         GROUP BY p.packet_id, p.total_coins, p.shares
         HAVING COUNT(s.coins) != p.shares OR COALESCE(SUM(s.coins), 0) != p.total_coins OR MIN(s.coins) < 1",
    ),
    (
        "red packet accounts differ from what was neither grabbed nor returned",
        "SELECT p.packet_id FROM packets p WHERE p.total_coins - p.grabbed_coins - p.returned_coins
            != COALESCE((SELECT SUM(a.balance_coins) FROM accounts a WHERE a.account LIKE 'packet:' || p.packet_id || ':%'), 0)
         OR (p.ended_ms IS NOT NULL AND p.grabbed_coins + p.returned_coins != p.total_coins)",
    ),
    (
        "red packet grabs disagree with its shares or counts",
        "SELECT p.packet_id FROM packets p WHERE p.grabbed_shares != (SELECT COUNT(*) FROM packet_grabs g WHERE g.packet_id = p.packet_id)
            OR p.grabbed_coins != (SELECT COALESCE(SUM(g.coins), 0) FROM packet_grabs g WHERE g.packet_id = p.packet_id)
            OR EXISTS (SELECT 1 FROM packet_grabs g JOIN packet_shares s ON s.packet_id = g.packet_id
                AND s.share_index = g.share_index WHERE g.packet_id = p.packet_id AND s.coins != g.coins)",
    ),
    (
        "red packet grab entries do not match it",
        "SELECT g.packet_id, g.grabber FROM packet_grabs g JOIN entries x ON x.txn_id = g.txn_id
         GROUP BY g.txn_id, g.packet_id, g.grabber, g.coins HAVING
            g.coins != -SUM(CASE WHEN x.account LIKE 'packet:' || g.packet_id || ':%' THEN x.amount_coins ELSE 0 END)
         OR g.coins != SUM(CASE WHEN x.account LIKE 'wallet:' || g.grabber || ':%' THEN x.amount_coins ELSE 0 END)",
    ),
    (
        "gifter total differs from the sum of the gifts (streamer, sender, total, gifts)",
        "SELECT t.streamer, t.sender, t.coins, COALESCE(g.coins, 0) FROM gifter_totals t
         LEFT JOIN (SELECT streamer, sender, SUM(price_coins) AS coins FROM gifts GROUP BY streamer, sender) g
            ON g.streamer = t.streamer AND g.sender = t.sender
         WHERE g.coins IS NULL OR g.coins != t.coins
         UNION ALL
         SELECT g.streamer, g.sender, 0, g.coins
         FROM (SELECT streamer, sender, SUM(price_coins) AS coins FROM gifts GROUP BY streamer, sender) g
         WHERE NOT EXISTS (SELECT 1 FROM gifter_totals t WHERE t.streamer = g.streamer AND t.sender = g.sender)",
    ),
    (
        "PK battle result disagrees with its scores (battle, reason, winner)",
        "SELECT battle_id, reason, COALESCE(winner, '-') FROM pk_battles WHERE status = 'ended' AND (
            (started_ms IS NULL AND winner IS NOT NULL)
            OR (reason = 'time_up' AND NOT (
                (challenger_score_coins > opponent_score_coins AND winner = challenger_room)
                OR (challenger_score_coins < opponent_score_coins AND winner = opponent_room)
                OR (challenger_score_coins = opponent_score_coins AND winner IS NULL))))",
    ),
    (
        "PK claim does not name an open battle of its room (room, battle)",
        "SELECT r.room, r.battle_id FROM pk_rooms r LEFT JOIN pk_battles b ON b.battle_id = r.battle_id
         WHERE b.battle_id IS NULL OR b.status = 'ended'
            OR (b.challenger_room != r.room AND b.opponent_room != r.room)",
    ),
    (
        "receivable above zero",
        "SELECT account, balance_coins FROM accounts WHERE account LIKE 'receivable:%' AND balance_coins > 0",
    ),
    (
        "account may go negative but is not external or a receivable",
        "SELECT account FROM accounts WHERE external = 1
            AND account NOT LIKE 'external:%' AND account NOT LIKE 'receivable:%'",
    ),
];

/// Builds the report from the counts row and each check's violating rows (as text).
fn assemble(
    counts: &[String],
    found: Vec<(&str, Vec<Vec<String>>)>,
    mut violations: Vec<String>,
) -> Result<AuditReport> {
    let n = |i: usize| -> Result<u64> {
        counts
            .get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| Error::LedgerUnavailable(format!("audit: bad count {counts:?}")))
    };
    for (label, rows) in found {
        for row in rows.into_iter().take(ROWS_PER_CHECK_MAX) {
            violations.push(format!("{label}: {}", row.join(", ")));
        }
    }
    Ok(AuditReport {
        txns: n(0)?,
        gifts: n(1)?,
        topups: n(2)?,
        entries: n(3)?,
        topped_up_coins: n(4)?,
        gifted_coins: n(5)?,
        violations,
    })
}

/// Audits the SQLite ledger file at `path`.
pub fn audit(path: &Path) -> Result<AuditReport> {
    if !path.exists() {
        return Err(Error::LedgerUnavailable(format!(
            "{} does not exist",
            path.display()
        )));
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .db()?;
    conn.busy_timeout(std::time::Duration::from_secs(5)).db()?;
    let rows = |sql: &str| -> Result<Vec<Vec<String>>> {
        let mut stmt = conn.prepare(sql).db()?;
        let columns = stmt.column_count();
        let found = stmt
            .query_map([], |r| {
                (0..columns)
                    .map(|i| {
                        r.get::<_, rusqlite::types::Value>(i).map(|v| match v {
                            rusqlite::types::Value::Integer(i) => i.to_string(),
                            rusqlite::types::Value::Text(t) => t,
                            other => format!("{other:?}"),
                        })
                    })
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .db()?;
        found.take(ROWS_PER_CHECK_MAX).map(|r| r.db()).collect()
    };
    let mut violations = Vec::new();
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .db()?;
    if integrity != "ok" {
        violations.push(format!("integrity_check: {integrity}"));
    }
    let counts = rows(COUNTS)?.pop().unwrap_or_default();
    let mut found = Vec::with_capacity(CHECKS.len());
    for (label, sql) in CHECKS {
        found.push((*label, rows(sql)?));
    }
    assemble(&counts, found, violations)
}

/// Audits the PostgreSQL ledger at `url` (a libpq-style URL or key=value string; the schema is
/// the first on its `search_path`). Reads in one repeatable-read transaction, so every check sees
/// the same snapshot even while nodes keep writing.
pub async fn audit_postgres(url: &str) -> Result<AuditReport> {
    let client = super::postgres::connect(url).await?;
    let pg = |e: tokio_postgres::Error| Error::LedgerUnavailable(format!("audit: {e}"));
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(pg)?;
    let mut all: Vec<Vec<Vec<String>>> = Vec::with_capacity(CHECKS.len() + 1);
    for sql in std::iter::once(COUNTS).chain(CHECKS.iter().map(|c| c.1)) {
        let mut rows = Vec::new();
        for message in client.simple_query(sql).await.map_err(pg)? {
            if let tokio_postgres::SimpleQueryMessage::Row(row) = message {
                let cells: Vec<String> = (0..row.len())
                    .map(|i| row.get(i).unwrap_or("NULL").to_owned())
                    .collect();
                rows.push(cells);
            }
        }
        all.push(rows);
    }
    client.batch_execute("COMMIT").await.map_err(pg)?;
    let counts = all.remove(0).pop().unwrap_or_default();
    let found = CHECKS.iter().map(|c| c.0).zip(all).collect();
    assemble(&counts, found, Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::sqlite::{open_connection, SqliteLedger, SqliteOptions};

    /// A SQLite ledger writing the file at `path`.
    fn ledger_at(path: &Path) -> SqliteLedger {
        let options = SqliteOptions {
            path: path.to_owned(),
            batch_max: 8,
            queue_max: 8,
            call_timeout_ms: 5_000,
        };
        let histogram =
            prometheus::Histogram::with_opts(prometheus::HistogramOpts::new("t", "t")).unwrap();
        SqliteLedger::open(options, histogram).unwrap()
    }

    /// A SQLite ledger file holding one top-up of 10 coins to `v` on web, written by hand, that
    /// audits clean; its directory, path and an open connection to it.
    fn one_top_up() -> (tempfile::TempDir, std::path::PathBuf, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.db");
        let conn = open_connection(&path).unwrap();
        conn.execute_batch(
            "INSERT INTO txns(txn_id, kind, actor, idem_key, payload_sha256, created_ms) VALUES (1, 'topup', 'store', 'p', 'd', 0);
             INSERT INTO accounts VALUES ('external:web', -10, 1), ('wallet:v:web', 10, 0);
             INSERT INTO entries(txn_id, account, amount_coins, channel) VALUES (1, 'external:web', -10, 'web'), (1, 'wallet:v:web', 10, 'web');
             INSERT INTO topups(txn_id, user, channel, coins, balance_coins) VALUES (1, 'v', 'web', 10, 10);",
        )
        .unwrap();
        assert!(audit(&path).unwrap().violations.is_empty());
        (dir, path, conn)
    }

    #[test]
    fn detects_a_forged_balance() {
        let (_dir, path, conn) = one_top_up();
        conn.execute_batch(
            "UPDATE accounts SET balance_coins = 1000 WHERE account = 'wallet:v:web'",
        )
        .unwrap();
        let report = audit(&path).unwrap();
        let text = report.violations.join("\n");
        assert!(text.contains("money not conserved"), "{text}");
        assert!(text.contains("account balance differs"), "{text}");
    }

    #[test]
    fn detects_a_record_without_its_transaction() {
        let (_dir, path, conn) = one_top_up();
        // A top-up record that claims the transaction of a gift.
        conn.execute_batch(
            "INSERT INTO txns(txn_id, kind, actor, idem_key, payload_sha256, created_ms) VALUES (2, 'gift', 'v', 'k', 'd', 0);
             INSERT INTO entries(txn_id, account, amount_coins, channel) VALUES (2, 'wallet:v:web', -1, 'web'), (2, 'wallet:v:web', 1, 'web');
             INSERT INTO topups(txn_id, user, channel, coins, balance_coins) VALUES (2, 'v', 'web', 1, 10);",
        )
        .unwrap();
        let text = audit(&path).unwrap().violations.join("\n");
        assert!(
            text.contains("record names no transaction of its kind (table, txn): topups, 2"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn detects_entries_that_disagree_with_their_gift() {
        use crate::config::SplitConfig;
        use crate::gift::Channel;
        use crate::ledger::{GiftPurpose, GiftRequest, Ledger, TopUpRequest};

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.db");
        let ledger = ledger_at(&path);
        let top_up = TopUpRequest {
            user: "v".into(),
            channel: Channel::Ios,
            coins: 100,
            purchase_id: "p".into(),
        };
        ledger.top_up(top_up).await.unwrap();
        let split = SplitConfig::default();
        let gift = GiftRequest {
            sender: "v".into(),
            streamer: "star".into(),
            room: "r".into(),
            sticker: "s".into(),
            price_coins: 100,
            idempotency_key: "k".into(),
            purpose: GiftPurpose::Sticker,
            policy: crate::ledger::SplitPolicy {
                store_fees: split.store_fee_bps,
                streamer_share_bps: split.streamer_share_bps_default,
                spend_order: split.spend_order.clone(),
            },
            caps: crate::ledger::CapPolicy {
                window_ms: 1_000,
                window_coins_max: 1_000,
                minor_window_coins_max: 0,
            },
        };
        ledger.gift(gift).await.unwrap();
        ledger.close().await;
        assert!(audit(&path).unwrap().violations.is_empty());

        // Move the streamer's credit to another streamer, balances and all: every sum still
        // balances, but the gift's streamer was not paid.
        let conn = open_connection(&path).unwrap();
        conn.execute_batch(
            "UPDATE entries SET account = 'streamer:thief' WHERE account = 'streamer:star';
             UPDATE accounts SET account = 'streamer:thief' WHERE account = 'streamer:star';",
        )
        .unwrap();
        let text = audit(&path).unwrap().violations.join("\n");
        assert!(
            text.contains("gift entries do not match its receipt"),
            "{text}"
        );
        assert!(!text.contains("money not conserved"), "{text}");
    }

    #[tokio::test]
    async fn detects_a_refund_whose_wallet_coins_were_booked_as_another_users_debt() {
        use crate::gift::Channel;
        use crate::ledger::{Ledger, RefundReason, RefundRequest, TopUpRequest};

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.db");
        let ledger = ledger_at(&path);
        let top_up = |user: &str, coins, id: &str| TopUpRequest {
            user: user.into(),
            channel: Channel::Web,
            coins,
            purchase_id: id.into(),
        };
        ledger.top_up(top_up("v", 100, "p1")).await.unwrap();
        let refund = |id: &str| RefundRequest {
            purchase_id: id.into(),
            reason: RefundReason::Chargeback,
            spend_order: Channel::ALL.to_vec(),
        };
        ledger.refund(refund("p1")).await.unwrap();
        ledger.top_up(top_up("v", 30, "p3")).await.unwrap();
        let r = ledger.refund(refund("p3")).await.unwrap();
        assert_eq!((r.wallet_coins, r.debt_coins), (30, 0));
        ledger.close().await;
        assert!(audit(&path).unwrap().violations.is_empty());

        // Book the coins the reversal took from v's wallet as w's debt instead: every account
        // still equals its entries and money is conserved, but the refund is not what it says.
        let conn = open_connection(&path).unwrap();
        conn.execute_batch(
            "UPDATE entries SET account = 'receivable:w' WHERE account = 'wallet:v:web'
                 AND txn_id = (SELECT txn_id FROM refunds WHERE purchase_id = 'p3');
             INSERT INTO accounts VALUES ('receivable:w', -30, 1);
             UPDATE accounts SET balance_coins = balance_coins + 30 WHERE account = 'wallet:v:web';",
        )
        .unwrap();
        let text = audit(&path).unwrap().violations.join("\n");
        assert!(
            text.contains("refund entries do not match its record"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn detects_a_pk_result_or_claim_that_disagrees_with_the_battle() {
        use crate::ledger::pk::{PkChallenge, PkChange, PkEndReason, PkStatus};
        use crate::ledger::Ledger;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.db");
        let ledger = ledger_at(&path);
        let battle = ledger
            .pk_create(PkChallenge {
                duration_ms: 1,
                ..PkChallenge::example()
            })
            .await
            .unwrap();
        let id = battle.battle_id;
        let answer = PkChange::Answer {
            room: "b".into(),
            accept: true,
        };
        assert_eq!(
            ledger.pk_change(&id, answer).await.unwrap().status,
            PkStatus::Active
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let finish = PkChange::Finish {
            room: "a".into(),
            reason: PkEndReason::TimeUp,
        };
        let ended = ledger.pk_change(&id, finish).await.unwrap();
        assert_eq!(
            (ended.reason, ended.winner),
            (Some(PkEndReason::TimeUp), None)
        );
        ledger.close().await;
        assert!(audit(&path).unwrap().violations.is_empty());

        let conn = open_connection(&path).unwrap();
        conn.execute_batch(&format!(
            "UPDATE pk_battles SET winner = 'b' WHERE battle_id = '{id}';
             INSERT INTO pk_rooms (room, battle_id) VALUES ('a', '{id}');"
        ))
        .unwrap();
        let text = audit(&path).unwrap().violations.join("\n");
        assert!(text.contains("PK battle result disagrees"), "{text}");
        assert!(
            text.contains("PK claim does not name an open battle"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn detects_a_red_packet_share_rewritten_after_its_grab() {
        use crate::gift::Channel;
        use crate::ledger::{CapPolicy, Ledger, PacketDrop, PacketGrab, TopUpRequest};

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.db");
        let ledger = ledger_at(&path);
        ledger
            .top_up(TopUpRequest {
                user: "s".into(),
                channel: Channel::Web,
                coins: 100,
                purchase_id: "p1".into(),
            })
            .await
            .unwrap();
        let packet = ledger
            .drop_packet(PacketDrop {
                sender: "s".into(),
                room: "r".into(),
                total_coins: 60,
                shares: 3,
                key: "k".into(),
                expires_ms: u64::MAX / 2,
                spend_order: Channel::ALL.to_vec(),
                caps: CapPolicy {
                    window_ms: 1_000,
                    window_coins_max: 1_000,
                    minor_window_coins_max: 0,
                },
            })
            .await
            .unwrap();
        let grab = ledger
            .grab_packet(PacketGrab {
                packet_id: packet.packet_id.clone(),
                user: "g".into(),
                room: "r".into(),
                now_ms: 0,
            })
            .await
            .unwrap();
        assert_eq!(grab.share_index, 0);
        ledger.close().await;
        assert!(audit(&path).unwrap().violations.is_empty());

        // Make the first share one coin larger and the largest later one (at least 10 coins,
        // as the first is at most 40) one smaller: the cut still sums to the total, but the
        // grab no longer took its recorded share.
        let conn = open_connection(&path).unwrap();
        conn.execute_batch(
            "UPDATE packet_shares SET coins = coins - 1 WHERE share_index = (SELECT share_index
                 FROM packet_shares WHERE share_index > 0 ORDER BY coins DESC LIMIT 1);
             UPDATE packet_shares SET coins = coins + 1 WHERE share_index = 0;",
        )
        .unwrap();
        let text = audit(&path).unwrap().violations.join("\n");
        assert!(
            text.contains("red packet grabs disagree with its shares"),
            "{text}"
        );
    }

    #[test]
    fn missing_file_is_an_error() {
        assert!(audit(Path::new("/nonexistent/giftd.db")).is_err());
    }
}

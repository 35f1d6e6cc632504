//! `giftd audit`: checks a ledger database file against the ledger's invariants.
//!
//! It reads only, and scans each table a bounded number of times (joins on `txn_id` use
//! SQLite's automatic indexes; the writer keeps no index it does not need). Each violated invariant becomes one line of the report; `giftd audit` exits
//! non-zero when there is any. The invariants:
//!
//! 1. SQLite's own `integrity_check` passes.
//! 2. Every transaction has entries, and its entries sum to zero (double entry).
//! 3. All balances sum to zero (money is conserved: what left the external accounts is in
//!    wallets, stores, streamers or the platform).
//! 4. Every account's balance equals the sum of its entries, and every entry names an existing
//!    account and transaction.
//! 5. No balance other than an external account's is negative.
//! 6. No idempotency key was applied twice.
//! 7. Every gift's shares sum to its price, and its entries match its shares: the sender was
//!    debited the price, and the store, streamer and platform were credited their shares.
//! 8. Every top-up credited its wallet with exactly its coins, and the external accounts hold
//!    exactly minus the sum of all top-ups.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

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

/// Audits the ledger database at `path`.
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
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let count =
        |sql: &str| -> Result<u64> { Ok(conn.query_row(sql, [], |r| r.get::<_, i64>(0))? as u64) };
    let mut report = AuditReport {
        txns: count("SELECT COUNT(*) FROM txns")?,
        gifts: count("SELECT COUNT(*) FROM gifts")?,
        topups: count("SELECT COUNT(*) FROM topups")?,
        entries: count("SELECT COUNT(*) FROM entries")?,
        topped_up_coins: count("SELECT COALESCE(SUM(coins), 0) FROM topups")?,
        gifted_coins: count("SELECT COALESCE(SUM(price_coins), 0) FROM gifts")?,
        violations: Vec::new(),
    };
    let v = &mut report.violations;

    let integrity: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    if integrity != "ok" {
        v.push(format!("integrity_check: {integrity}"));
    }
    let mut rows = |label: &str, sql: &str| -> Result<()> {
        let mut stmt = conn.prepare(sql)?;
        let columns = stmt.column_count();
        let found = stmt.query_map([], |r| {
            (0..columns)
                .map(|i| {
                    r.get::<_, rusqlite::types::Value>(i)
                        .map(|v| format!("{v:?}"))
                })
                .collect::<rusqlite::Result<Vec<_>>>()
        })?;
        for row in found.take(20) {
            v.push(format!("{label}: {}", row?.join(", ")));
        }
        Ok(())
    };
    rows(
        "transaction entries do not sum to zero",
        "SELECT txn_id, SUM(amount_coins) FROM entries GROUP BY txn_id HAVING SUM(amount_coins) != 0",
    )?;
    rows(
        "transaction has no entries",
        "SELECT txn_id FROM txns WHERE txn_id NOT IN (SELECT txn_id FROM entries)",
    )?;
    rows(
        "money not conserved: balances sum to",
        "SELECT SUM(balance_coins) FROM accounts HAVING SUM(balance_coins) != 0",
    )?;
    rows(
        "account balance differs from its entries",
        "SELECT a.account, a.balance_coins, COALESCE(SUM(e.amount_coins), 0) FROM accounts a
         LEFT JOIN entries e ON e.account = a.account GROUP BY a.account
         HAVING a.balance_coins != COALESCE(SUM(e.amount_coins), 0)",
    )?;
    rows(
        "entry names no existing account or transaction",
        "SELECT entry_id, account FROM entries e WHERE NOT EXISTS (SELECT 1 FROM accounts a WHERE a.account = e.account)
            OR NOT EXISTS (SELECT 1 FROM txns t WHERE t.txn_id = e.txn_id)",
    )?;
    rows(
        "negative balance",
        "SELECT account, balance_coins FROM accounts WHERE external = 0 AND balance_coins < 0",
    )?;
    rows(
        "idempotency key applied more than once",
        "SELECT kind, actor, idem_key, COUNT(*) FROM txns GROUP BY kind, actor, idem_key HAVING COUNT(*) > 1",
    )?;
    rows(
        "gift transaction without a gift record",
        "SELECT txn_id FROM txns WHERE kind = 'gift' AND txn_id NOT IN (SELECT txn_id FROM gifts)",
    )?;
    rows(
        "gift shares do not sum to its price",
        "SELECT gift_id FROM gifts WHERE store_coins + streamer_coins + platform_coins != price_coins
            OR funding_ios + funding_android + funding_web != price_coins",
    )?;
    rows(
        "gift entries do not match its receipt",
        "SELECT g.gift_id FROM gifts g JOIN entries x ON x.txn_id = g.txn_id GROUP BY g.txn_id HAVING
            g.price_coins != -SUM(CASE WHEN x.account LIKE 'wallet:%' THEN x.amount_coins ELSE 0 END)
         OR g.store_coins != SUM(CASE WHEN x.account LIKE 'store:%' THEN x.amount_coins ELSE 0 END)
         OR g.streamer_coins != SUM(CASE WHEN x.account = 'streamer:' || g.streamer THEN x.amount_coins ELSE 0 END)
         OR g.platform_coins != SUM(CASE WHEN x.account = 'platform' THEN x.amount_coins ELSE 0 END)",
    )?;
    rows(
        "top-up entries do not match its coins",
        "SELECT t.txn_id FROM topups t JOIN entries x ON x.txn_id = t.txn_id GROUP BY t.txn_id HAVING
            t.coins != SUM(CASE WHEN x.account = 'wallet:' || t.user || ':' || t.channel THEN x.amount_coins ELSE 0 END)",
    )?;
    rows(
        "external accounts differ from the sum of top-ups",
        "SELECT (SELECT COALESCE(SUM(coins), 0) FROM topups),
                (SELECT -COALESCE(SUM(balance_coins), 0) FROM accounts WHERE external = 1)
         WHERE (SELECT COALESCE(SUM(coins), 0) FROM topups)
            != (SELECT -COALESCE(SUM(balance_coins), 0) FROM accounts WHERE external = 1)",
    )?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::sqlite::open_connection;

    #[test]
    fn detects_a_forged_balance() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.db");
        let conn = open_connection(&path).unwrap();
        conn.execute_batch(
            "INSERT INTO txns(txn_id, kind, actor, idem_key, payload_sha256, created_ms) VALUES (1, 'topup', 'store', 'p', 'd', 0);
             INSERT INTO accounts VALUES ('external:web', -10, 1), ('wallet:v:web', 10, 0);
             INSERT INTO entries(txn_id, account, amount_coins, channel) VALUES (1, 'external:web', -10, 'web'), (1, 'wallet:v:web', 10, 'web');
             INSERT INTO topups VALUES (1, 'v', 'web', 10, 10);",
        )
        .unwrap();
        assert!(audit(&path).unwrap().violations.is_empty());
        conn.execute_batch(
            "UPDATE accounts SET balance_coins = 1000 WHERE account = 'wallet:v:web'",
        )
        .unwrap();
        let report = audit(&path).unwrap();
        let text = report.violations.join("\n");
        assert!(text.contains("money not conserved"), "{text}");
        assert!(text.contains("account balance differs"), "{text}");
    }

    #[tokio::test]
    async fn detects_entries_that_disagree_with_their_gift() {
        use crate::config::SplitConfig;
        use crate::gift::Channel;
        use crate::ledger::sqlite::{SqliteLedger, SqliteOptions};
        use crate::ledger::{GiftPurpose, GiftRequest, Ledger, TopUpRequest};

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.db");
        let options = SqliteOptions {
            path: path.clone(),
            batch_max: 8,
            queue_max: 8,
        };
        let histogram =
            prometheus::Histogram::with_opts(prometheus::HistogramOpts::new("t", "t")).unwrap();
        let ledger = SqliteLedger::open(options, histogram).unwrap();
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
            store_fees: split.store_fee_bps,
            streamer_share_bps: split.streamer_share_bps_default,
            spend_order: split.spend_order.clone(),
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

    #[test]
    fn missing_file_is_an_error() {
        assert!(audit(Path::new("/nonexistent/giftd.db")).is_err());
    }
}

//! PK battles in the PostgreSQL ledger: the `pk_battles` and `pk_rooms` tables, the statement
//! trigger that adds each batch's committed gifts to their rooms' active battles, and the writes
//! and reads of `ledger/pk.rs`, whose rules decide every change.
//!
//! A battle's writes run in their own short transaction on the pool (not on the gift writer:
//! they are rare and move no money), with the battle's row locked (`FOR UPDATE`). The trigger's
//! `UPDATE … WHERE status = 'active'` takes the same row lock, and under `READ COMMITTED` it
//! re-checks the status once the lock is free, so a gift batch that commits after the battle
//! ended does not count, on any node. Two rooms claiming the same room at once meet on
//! `pk_rooms`' primary key: the second gets `pk_busy`.

use deadpool_postgres::{GenericClient, Pool};
use tokio_postgres::error::SqlState;
use tokio_postgres::Row;

use super::{pg, pool_error};
use crate::error::{Error, Result};
use crate::ledger::now_ms;
use crate::ledger::pk::{PkBattle, PkChallenge, PkChange, PkEndReason, PkRow, PkStatus, COLUMNS};

/// The migration that adds battles (appended to the backend's list).
pub(super) const MIGRATION: &str = r#"
CREATE TABLE pk_battles (
    battle_id              TEXT PRIMARY KEY,
    challenger_room        TEXT NOT NULL,
    challenger             TEXT NOT NULL,
    challenger_score_coins BIGINT NOT NULL DEFAULT 0 CHECK (challenger_score_coins >= 0),
    opponent_room          TEXT NOT NULL,
    opponent               TEXT NOT NULL,
    opponent_score_coins   BIGINT NOT NULL DEFAULT 0 CHECK (opponent_score_coins >= 0),
    status                 TEXT NOT NULL CHECK (status IN ('invited', 'active', 'ended')),
    created_ms             BIGINT NOT NULL,
    answer_by_ms           BIGINT NOT NULL,
    duration_ms            BIGINT NOT NULL CHECK (duration_ms > 0),
    started_ms             BIGINT,
    ends_ms                BIGINT,
    ended_ms               BIGINT,
    reason                 TEXT,
    winner                 TEXT,
    CHECK (challenger_room <> opponent_room),
    CHECK (winner IS NULL OR winner IN (challenger_room, opponent_room)),
    CHECK ((status = 'ended') = (reason IS NOT NULL))
);
CREATE TABLE pk_rooms (
    room      TEXT PRIMARY KEY,
    battle_id TEXT NOT NULL REFERENCES pk_battles (battle_id)
);
CREATE FUNCTION giftd_add_to_pk_scores() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE pk_battles b SET
        challenger_score_coins = b.challenger_score_coins + s.challenger_coins,
        opponent_score_coins = b.opponent_score_coins + s.opponent_coins
    FROM (SELECT p.battle_id,
                 SUM(CASE WHEN g.room = p.challenger_room THEN g.price_coins ELSE 0 END)::BIGINT
                     AS challenger_coins,
                 SUM(CASE WHEN g.room = p.opponent_room THEN g.price_coins ELSE 0 END)::BIGINT
                     AS opponent_coins
          FROM new_gifts g
          JOIN pk_rooms r ON r.room = g.room
          JOIN pk_battles p ON p.battle_id = r.battle_id
          WHERE g.created_ms < p.ends_ms
          GROUP BY p.battle_id) s
    WHERE b.battle_id = s.battle_id AND b.status = 'active';
    RETURN NULL;
END
$$;
CREATE TRIGGER gifts_add_to_pk_scores AFTER INSERT ON gifts
    REFERENCING NEW TABLE AS new_gifts FOR EACH STATEMENT
    EXECUTE FUNCTION giftd_add_to_pk_scores();
"#;

impl PkRow for Row {
    type Error = tokio_postgres::Error;
    fn text(&self, i: usize) -> std::result::Result<Option<String>, tokio_postgres::Error> {
        self.try_get(i)
    }
    fn int(&self, i: usize) -> std::result::Result<Option<i64>, tokio_postgres::Error> {
        self.try_get(i)
    }
}

/// The battle `battle_id` as committed; `lock` takes its row for the rest of the transaction.
pub(super) async fn read(
    client: &impl GenericClient,
    battle_id: &str,
    lock: bool,
) -> Result<Option<PkBattle>> {
    let lock = if lock { " FOR UPDATE" } else { "" };
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM pk_battles WHERE battle_id = $1{lock}"
        ))
        .await
        .map_err(pg)?;
    let row = client.query_opt(&stmt, &[&battle_id]).await.map_err(pg)?;
    row.as_ref().map(PkBattle::from_row).transpose().map_err(pg)
}

/// Records a challenge; see [`crate::ledger::Ledger::pk_create`].
pub(super) async fn create(pool: &Pool, challenge: &PkChallenge) -> Result<PkBattle> {
    let mut client = pool.get().await.map_err(pool_error)?;
    let tx = client.transaction().await.map_err(pg)?;
    let now = now_ms();
    let battle = challenge.battle(now)?;
    let rooms = [&challenge.challenger_room, &challenge.opponent_room];
    for room in rooms {
        let claimed = tx
            .query_opt(
                "SELECT battle_id FROM pk_rooms WHERE room = $1 FOR UPDATE",
                &[room],
            )
            .await
            .map_err(pg)?;
        let Some(claimed) = claimed else { continue };
        let claimed: String = claimed.get(0);
        let mut open = read(&tx, &claimed, true)
            .await?
            .expect("a claim names its battle");
        if !open.is_due(now) {
            return Err(Error::PkBusy(room.clone()));
        }
        open.apply(
            &PkChange::Finish {
                room: room.clone(),
                reason: PkEndReason::TimeUp,
            },
            now,
        )?;
        store(&tx, &open).await?;
    }
    tx.execute(
        "INSERT INTO pk_battles (battle_id, challenger_room, challenger, opponent_room, opponent,
             status, created_ms, answer_by_ms, duration_ms)
         VALUES ($1, $2, $3, $4, $5, 'invited', $6, $7, $8)",
        &[
            &battle.battle_id,
            &battle.challenger.room,
            &battle.challenger.streamer,
            &battle.opponent.room,
            &battle.opponent.streamer,
            &(battle.created_ms as i64),
            &(battle.answer_by_ms as i64),
            &(battle.duration_ms as i64),
        ],
    )
    .await
    .map_err(pg)?;
    for room in rooms {
        let claimed = tx
            .execute(
                "INSERT INTO pk_rooms (room, battle_id) VALUES ($1, $2)",
                &[room, &battle.battle_id],
            )
            .await;
        if let Err(e) = claimed {
            // Another node claimed the room since it was read: that battle came first.
            if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
                return Err(Error::PkBusy(room.clone()));
            }
            return Err(pg(e));
        }
    }
    tx.commit().await.map_err(pg)?;
    Ok(battle)
}

/// Applies a change; see [`crate::ledger::Ledger::pk_change`].
pub(super) async fn change(pool: &Pool, battle_id: &str, change: &PkChange) -> Result<PkBattle> {
    let mut client = pool.get().await.map_err(pool_error)?;
    let tx = client.transaction().await.map_err(pg)?;
    let mut battle = read(&tx, battle_id, true)
        .await?
        .ok_or_else(|| Error::PkNotFound(battle_id.to_owned()))?;
    let before = battle.clone();
    let result = battle.apply(change, now_ms());
    if battle != before {
        store(&tx, &battle).await?;
        tx.commit().await.map_err(pg)?;
    }
    result.map(|()| battle)
}

/// Writes a battle's new state; an ended battle releases its rooms' claims.
async fn store(client: &impl GenericClient, battle: &PkBattle) -> Result<()> {
    let opt = |v: Option<u64>| v.map(|v| v as i64);
    client
        .execute(
            "UPDATE pk_battles SET status = $2, started_ms = $3, ends_ms = $4, ended_ms = $5,
                 reason = $6, winner = $7 WHERE battle_id = $1",
            &[
                &battle.battle_id,
                &battle.status.as_str(),
                &opt(battle.started_ms),
                &opt(battle.ends_ms),
                &opt(battle.ended_ms),
                &battle.reason.map(PkEndReason::as_str),
                &battle.winner,
            ],
        )
        .await
        .map_err(pg)?;
    if battle.status == PkStatus::Ended {
        client
            .execute(
                "DELETE FROM pk_rooms WHERE battle_id = $1",
                &[&battle.battle_id],
            )
            .await
            .map_err(pg)?;
    }
    Ok(())
}

//! PK battles in the SQLite ledger: the `pk_battles` and `pk_rooms` tables, the trigger that
//! adds each committed gift to its room's active battle, and the writes and reads of
//! `ledger/pk.rs`, whose rules decide every change. Writes run on the ledger's writer, in its
//! batches, so a battle's end and the gifts around it are serialised: a gift committed after the
//! end finds the battle `ended` and does not count.

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::Db;
use crate::error::{Error, Result};
use crate::ledger::now_ms;
use crate::ledger::pk::{PkBattle, PkChallenge, PkChange, PkEndReason, PkRow, PkStatus, COLUMNS};

pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS pk_battles (
    battle_id              TEXT PRIMARY KEY,
    challenger_room        TEXT NOT NULL,
    challenger             TEXT NOT NULL,
    challenger_score_coins INTEGER NOT NULL DEFAULT 0 CHECK (challenger_score_coins >= 0),
    opponent_room          TEXT NOT NULL,
    opponent               TEXT NOT NULL,
    opponent_score_coins   INTEGER NOT NULL DEFAULT 0 CHECK (opponent_score_coins >= 0),
    status                 TEXT NOT NULL CHECK (status IN ('invited', 'active', 'ended')),
    created_ms             INTEGER NOT NULL,
    answer_by_ms           INTEGER NOT NULL,
    duration_ms            INTEGER NOT NULL CHECK (duration_ms > 0),
    started_ms             INTEGER,
    ends_ms                INTEGER,
    ended_ms               INTEGER,
    reason                 TEXT,
    winner                 TEXT,
    CHECK (challenger_room <> opponent_room),
    CHECK (winner IS NULL OR winner IN (challenger_room, opponent_room)),
    CHECK ((status = 'ended') = (reason IS NOT NULL))
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pk_rooms (
    room      TEXT PRIMARY KEY,
    battle_id TEXT NOT NULL
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS gifts_add_to_pk_scores AFTER INSERT ON gifts
WHEN EXISTS (SELECT 1 FROM pk_rooms WHERE room = NEW.room) BEGIN
    UPDATE pk_battles SET
        challenger_score_coins = challenger_score_coins
            + CASE WHEN challenger_room = NEW.room THEN NEW.price_coins ELSE 0 END,
        opponent_score_coins = opponent_score_coins
            + CASE WHEN opponent_room = NEW.room THEN NEW.price_coins ELSE 0 END
    WHERE battle_id = (SELECT battle_id FROM pk_rooms WHERE room = NEW.room)
      AND status = 'active' AND NEW.created_ms < ends_ms;
END;
"#;

/// A write of `ledger/pk.rs`, queued to the writer.
pub(super) enum PkWrite {
    Create(PkChallenge),
    Change(String, PkChange),
}

impl PkRow for Row<'_> {
    type Error = rusqlite::Error;
    fn text(&self, i: usize) -> rusqlite::Result<Option<String>> {
        self.get(i)
    }
    fn int(&self, i: usize) -> rusqlite::Result<Option<i64>> {
        self.get(i)
    }
}

/// The battle `battle_id`, as committed.
pub(super) fn read(conn: &Connection, battle_id: &str) -> Result<Option<PkBattle>> {
    conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM pk_battles WHERE battle_id = ?1"
    ))
    .db()?
    .query_row(params![battle_id], |r| PkBattle::from_row(r))
    .optional()
    .db()
}

/// Applies one write inside the writer's transaction.
pub(super) fn apply(conn: &Connection, write: &PkWrite) -> Result<PkBattle> {
    let now = now_ms();
    match write {
        PkWrite::Create(challenge) => create(conn, challenge, now),
        PkWrite::Change(battle_id, change) => {
            let mut battle =
                read(conn, battle_id)?.ok_or_else(|| Error::PkNotFound(battle_id.clone()))?;
            let before = battle.clone();
            let result = battle.apply(change, now);
            if battle != before {
                store(conn, &battle)?;
            }
            result.map(|()| battle)
        }
    }
}

fn create(conn: &Connection, challenge: &PkChallenge, now: u64) -> Result<PkBattle> {
    let battle = challenge.battle(now)?;
    for room in [&challenge.challenger_room, &challenge.opponent_room] {
        let claimed: Option<String> = conn
            .prepare_cached("SELECT battle_id FROM pk_rooms WHERE room = ?1")
            .db()?
            .query_row(params![room], |r| r.get(0))
            .optional()
            .db()?;
        let Some(claimed) = claimed else { continue };
        let mut open = read(conn, &claimed)?.expect("a claim names its battle");
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
        store(conn, &open)?;
    }
    conn.prepare_cached(
        "INSERT INTO pk_battles (battle_id, challenger_room, challenger, opponent_room, opponent,
             status, created_ms, answer_by_ms, duration_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, 'invited', ?6, ?7, ?8)",
    )
    .db()?
    .execute(params![
        battle.battle_id,
        battle.challenger.room,
        battle.challenger.streamer,
        battle.opponent.room,
        battle.opponent.streamer,
        battle.created_ms as i64,
        battle.answer_by_ms as i64,
        battle.duration_ms as i64
    ])
    .db()?;
    for room in [&battle.challenger.room, &battle.opponent.room] {
        conn.prepare_cached("INSERT INTO pk_rooms (room, battle_id) VALUES (?1, ?2)")
            .db()?
            .execute(params![room, battle.battle_id])
            .db()?;
    }
    Ok(battle)
}

/// Writes a battle's new state; an ended battle releases its rooms' claims.
fn store(conn: &Connection, battle: &PkBattle) -> Result<()> {
    let opt = |v: Option<u64>| v.map(|v| v as i64);
    conn.prepare_cached(
        "UPDATE pk_battles SET status = ?2, started_ms = ?3, ends_ms = ?4, ended_ms = ?5,
             reason = ?6, winner = ?7 WHERE battle_id = ?1",
    )
    .db()?
    .execute(params![
        battle.battle_id,
        battle.status.as_str(),
        opt(battle.started_ms),
        opt(battle.ends_ms),
        opt(battle.ended_ms),
        battle.reason.map(PkEndReason::as_str),
        battle.winner
    ])
    .db()?;
    if battle.status == PkStatus::Ended {
        conn.prepare_cached("DELETE FROM pk_rooms WHERE battle_id = ?1")
            .db()?
            .execute(params![battle.battle_id])
            .db()?;
    }
    Ok(())
}

//! PK commands: `pk_challenge`, `pk_accept`, `pk_decline` and `pk_leave`, each by the streamer of
//! the current room and run on that room's node; and the notices that keep the battle's other
//! room (possibly on another node) up to date.
//!
//! Every change is the ledger's (`ledger/pk.rs`): a command asks the ledger, the room publishes
//! the record it gets back (`room/pk.rs`), and the other room is sent the same record, which it
//! publishes on its own node. A lost notice costs only time: each room reads its battle from the
//! ledger on every beat of the room ticker.

use std::sync::Arc;

use serde_json::json;

use super::{ack, Reply, Session};
use crate::app::App;
use crate::cluster::remote::Request;
use crate::error::{Error, Result};
use crate::ledger::pk::{PkBattle, PkChallenge, PkChange, PkEndReason};
use crate::protocol::client::check_room_id;
use crate::room::pk::Learned;
use crate::room::{Room, RoomSummary};

impl Session {
    pub(super) async fn handle_pk_challenge(&mut self, id: u64, opponent: &str) -> Result<Reply> {
        let own = self.owned_room()?;
        check_room_id(opponent)?;
        if opponent == own.id {
            return Err(Error::InvalidMessage(
                "a room cannot challenge itself".into(),
            ));
        }
        if own.pk_current().is_some() {
            return Err(Error::PkBusy(own.id.clone()));
        }
        let other = live_room(&self.app, opponent).await?;
        let rooms = &self.app.config.rooms;
        let challenge = PkChallenge {
            challenger_room: own.id.clone(),
            challenger: own.streamer.clone(),
            opponent_room: other.room,
            opponent: other.streamer,
            answer_ms: rooms.pk_answer_ms,
            duration_ms: rooms.pk_duration_ms,
        };
        let battle = self.app.ledger.pk_create(challenge).await?;
        let seq = show(&self.app, &own, &battle).await;
        ack(id, &json!({ "battle": battle, "seq": seq }))
    }

    /// `pk_accept` and `pk_decline`.
    pub(super) async fn handle_pk_answer(
        &mut self,
        id: u64,
        battle_id: &str,
        accept: bool,
    ) -> Result<Reply> {
        let own = self.owned_room()?;
        let change = PkChange::Answer {
            room: own.id.clone(),
            accept,
        };
        self.change_pk(id, own, battle_id, change).await
    }

    pub(super) async fn handle_pk_leave(&mut self, id: u64, battle_id: &str) -> Result<Reply> {
        let own = self.owned_room()?;
        let change = PkChange::Finish {
            room: own.id.clone(),
            reason: PkEndReason::Left,
        };
        self.change_pk(id, own, battle_id, change).await
    }

    /// Applies `change` to the room's battle `battle_id`, which the room must show.
    async fn change_pk(
        &mut self,
        id: u64,
        own: Arc<Room>,
        battle_id: &str,
        change: PkChange,
    ) -> Result<Reply> {
        if own.pk_current().is_none_or(|b| b.battle_id != battle_id) {
            return Err(Error::PkNotFound(battle_id.to_owned()));
        }
        let battle = match self.app.ledger.pk_change(battle_id, change).await {
            Ok(battle) => battle,
            Err(e @ Error::PkNotFound(_)) => {
                // Refused because the battle's clock ran out, which the ledger recorded: show it.
                if let Ok(Some(battle)) = self.app.ledger.pk_battle(battle_id).await {
                    show(&self.app, &own, &battle).await;
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let seq = show(&self.app, &own, &battle).await;
        ack(id, &json!({ "battle": battle, "seq": seq }))
    }
}

/// The summary of live room `id`, on this node or another.
async fn live_room(app: &App, id: &str) -> Result<RoomSummary> {
    if let Some(room) = app.rooms.get(id).filter(|r| !r.is_closed()) {
        return Ok(room.summary());
    }
    if let Some(cluster) = &app.cluster {
        if let Some(lease) = cluster.lease_of(id).await? {
            return Ok(lease.summary);
        }
    }
    Err(Error::RoomNotFound(id.to_owned()))
}

/// Makes `room` show `battle`, first catching up on an older battle it still shows (which the
/// ledger has ended, or it could not be in this one). Returns the `seq` of the event published
/// for `battle`, if any.
pub(crate) async fn learn(app: &App, room: &Room, battle: &PkBattle) -> Option<u64> {
    match room.pk_learn(battle) {
        Learned::Done(seq) => seq,
        Learned::Behind(old) => {
            match app.ledger.pk_battle(&old).await {
                Ok(Some(old)) => {
                    room.pk_learn(&old);
                }
                Ok(None) => {
                    tracing::error!(room = %room.id, battle = %old, "a shown PK battle is not in the ledger")
                }
                Err(e) => tracing::warn!(room = %room.id, error = %e, "could not read a PK battle"),
            }
            match room.pk_learn(battle) {
                Learned::Done(seq) => seq,
                Learned::Behind(_) => None,
            }
        }
    }
}

/// Makes `room`, whose node just changed `battle` in the ledger, show it, and sends the record to
/// the battle's other room. Returns the `seq` of the event published here, if any.
async fn show(app: &Arc<App>, room: &Room, battle: &PkBattle) -> Option<u64> {
    let seq = learn(app, room, battle).await;
    notify(app, battle.other_room(&room.id), battle);
    seq
}

/// Sends `battle`'s record to room `room`: learnt at once if this node runs it, else sent to
/// its node, which learns it the same way.
fn notify(app: &Arc<App>, room: &str, battle: &PkBattle) {
    if let Some(room) = app.rooms.get(room) {
        let (app, battle) = (app.clone(), battle.clone());
        tokio::spawn(async move { learn(&app, &room, &battle).await });
    } else if let Some(cluster) = &app.cluster {
        let notice = Request::Pk {
            battle: Box::new(battle.clone()),
        };
        cluster.notify_room(room, &notice);
    }
}

/// The room ticker's call for a battling room (`Room::pk_due`): reads the battle, or ends it
/// once its clock ran out and tells the other room at once, as a command would.
pub(crate) async fn beat(app: &Arc<App>, room: &Room, battle_id: &str, change: Option<PkChange>) {
    let Some(change) = change else {
        room.pk_called(app.ledger.pk_battle(battle_id).await);
        return;
    };
    let ended = app.ledger.pk_change(battle_id, change).await;
    if let Ok(battle) = &ended {
        notify(app, battle.other_room(&room.id), battle);
    }
    room.pk_called(ended.map(Some));
}

/// Ends the room's battle, if it has one, as the room closes: the other room wins a running
/// battle, a challenge just ends. Publishes `pk_ended` here and tells the other room.
pub(crate) async fn end_for_close(app: &Arc<App>, room: &Room) {
    let Some(shown) = room.pk_current() else {
        return;
    };
    let change = PkChange::Finish {
        room: room.id.clone(),
        reason: PkEndReason::RoomClosed,
    };
    match app.ledger.pk_change(&shown.battle_id, change).await {
        Ok(battle) => {
            show(app, room, &battle).await;
        }
        Err(e) => {
            tracing::warn!(room = %room.id, error = %e, "could not end the PK battle of a closing room")
        }
    }
}

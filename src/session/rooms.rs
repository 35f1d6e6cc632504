//! Room commands: `open_room`, `close_room`, `join` (with recovery from a position) and `leave`.

use std::sync::Arc;

use serde_json::json;

use super::{ack, Reply, Session};
use crate::auth::Role;
use crate::bounds::EPOCH_CHARS_MAX;
use crate::error::{Error, Result};
use crate::outbox::Outbound;
use crate::protocol::client::{check_room_id, check_text, Since};
use crate::protocol::server::{self, Recovered};
use crate::room::{Entry, Position, Room};

/// Checks a client's `since` position: an epoch is 1 to `EPOCH_CHARS_MAX` ASCII alphanumerics.
fn check_since(since: Since) -> Result<Position> {
    let ok = !since.epoch.is_empty()
        && since.epoch.len() <= EPOCH_CHARS_MAX
        && since.epoch.bytes().all(|b| b.is_ascii_alphanumeric());
    if !ok {
        return Err(Error::InvalidMessage(format!(
            "since.epoch must be 1 to {EPOCH_CHARS_MAX} letters or digits"
        )));
    }
    Ok(Position {
        epoch: since.epoch,
        seq: since.seq,
    })
}

impl Session {
    pub(super) fn handle_close_room(&mut self, id: u64) -> Result<Reply> {
        let room = self.owned_room()?;
        let seq = room.close("closed by the streamer")?;
        self.app.rooms.remove(&room);
        self.room = None;
        ack(id, &json!({ "room": room.id, "seq": seq }))
    }

    pub(super) fn handle_leave(&mut self, id: u64) -> Result<Reply> {
        let room = self.current_room()?;
        room.leave(self.conn);
        self.outbox.send(Outbound::Unsubscribe);
        self.room = None;
        ack(id, &json!({ "room": room.id }))
    }

    fn enter_check(&mut self, room: &str) -> Result<()> {
        check_room_id(room)?;
        self.who().check_room(room)?;
        if let Ok(current) = self.current_room() {
            return Err(Error::AlreadyInRoom(current.id.clone()));
        }
        Ok(())
    }

    pub(super) fn handle_open_room(
        &mut self,
        id: u64,
        room_id: &str,
        title: &str,
    ) -> Result<Reply> {
        self.who().require(Role::Streamer)?;
        self.enter_check(room_id)?;
        check_text(title, self.app.config.rooms.title_chars_max)?;
        let room = Room::new(
            room_id,
            &self.who().user,
            title,
            &self.app.config.rooms,
            self.app.metrics.clone(),
            self.app.fanout.as_ref(),
        );
        let room = self.app.rooms.open(room)?;
        self.enter(id, room)
    }

    pub(super) fn handle_join(
        &mut self,
        id: u64,
        room_id: &str,
        since: Option<Since>,
    ) -> Result<Reply> {
        self.enter_check(room_id)?;
        let since = since.map(check_since).transpose()?;
        let room = self
            .app
            .rooms
            .get(room_id)
            .ok_or_else(|| Error::RoomNotFound(room_id.to_owned()))?;
        self.enter_since(id, room, since.as_ref())
    }

    fn enter(&mut self, id: u64, room: Arc<Room>) -> Result<Reply> {
        self.enter_since(id, room, None)
    }

    fn enter_since(&mut self, id: u64, room: Arc<Room>, since: Option<&Position>) -> Result<Reply> {
        let who = self.who();
        // The room's own streamer (on any of their connections) is a member but not a viewer.
        let role = if who.role == Role::Streamer && who.user == room.streamer {
            Role::Streamer
        } else {
            Role::Viewer
        };
        let (entry, ring) = room.join_since(self.conn, role, self.outbox.clone(), since)?;
        if since.is_some() {
            let recovered = matches!(entry, Entry::Recovered { .. });
            self.app.metrics.recovery(recovered);
        }
        let reply = match entry {
            Entry::Fresh(snapshot) => {
                Reply::AckThenSubscribe(server::ack(id, &snapshot), Vec::new(), ring)
            }
            Entry::Recovered { since_seq, missed } => {
                let result = Recovered {
                    room: room.id.clone(),
                    title: room.title.clone(),
                    streamer: room.streamer.clone(),
                    epoch: room.epoch.clone(),
                    seq: since_seq,
                    recovered: true,
                };
                Reply::AckThenSubscribe(server::ack(id, &result), missed, ring)
            }
        };
        tracing::Span::current().record("room", room.id.as_str());
        self.room = Some(room);
        Ok(reply)
    }
}

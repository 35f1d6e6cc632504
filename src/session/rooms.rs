//! Room commands: `open_room`, `close_room`, `join` (with recovery from a position) and `leave`.
//!
//! A join finds the room on this node, or in a cluster joins this node's replica of the room
//! that another node runs: the member is subscribed to the replica first, then the owner answers
//! with the member's entry (`cluster/remote.rs`), and the member's writer skips the replica's
//! events that the entry covers.

use std::sync::Arc;

use serde_json::json;

use super::{ack, Membership, Reply, Session};
use crate::auth::Role;
use crate::bounds::EPOCH_CHARS_MAX;
use crate::cluster::remote::{self, Request};
use crate::error::{Error, Result};
use crate::outbox::Outbound;
use crate::protocol::client::{check_room_id, check_text, Since};
use crate::protocol::server::{self, Recovered};
use crate::protocol::{EventFrame, Frame};
use crate::room::replica::Replica;
use crate::room::{Entry, Position, Room};

/// The ack of a join to `room` with request id `id`, and the events to replay after it.
pub(crate) fn entry_reply(id: u64, room: &Room, entry: Entry) -> (Frame, Vec<EventFrame>) {
    match entry {
        Entry::Fresh(snapshot) => (server::ack(id, &snapshot), Vec::new()),
        Entry::Recovered { since_seq, missed } => {
            let result = Recovered {
                room: room.id.clone(),
                title: room.title.clone(),
                streamer: room.streamer.clone(),
                epoch: room.epoch.clone(),
                seq: since_seq,
                recovered: true,
            };
            (server::ack(id, &result), missed)
        }
    }
}

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
    pub(super) async fn handle_close_room(&mut self, id: u64) -> Result<Reply> {
        let room = self.owned_room()?;
        super::end_for_close(&self.app, &room).await;
        let seq = room.close("closed by the streamer")?;
        self.app.forget_room(&room);
        self.room = None;
        ack(id, &json!({ "room": room.id, "seq": seq }))
    }

    pub(super) fn handle_leave(&mut self, id: u64) -> Result<Reply> {
        let room = self.membership()?;
        room.leave(self.conn);
        self.outbox.send(Outbound::Unsubscribe);
        self.room = None;
        ack(id, &json!({ "room": room.id() }))
    }

    fn enter_check(&mut self, room: &str) -> Result<()> {
        check_room_id(room)?;
        self.who().check_room(room)?;
        if let Ok(current) = self.membership() {
            return Err(Error::AlreadyInRoom(current.id().to_owned()));
        }
        Ok(())
    }

    pub(super) async fn handle_open_room(
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
        let room = self.app.open_room(room).await?;
        self.enter(id, room)
    }

    pub(super) async fn handle_join(
        &mut self,
        id: u64,
        room_id: &str,
        since: Option<Since>,
    ) -> Result<Reply> {
        self.enter_check(room_id)?;
        let since = since.map(check_since).transpose()?;
        if let Some(room) = self.app.rooms.get(room_id) {
            return self.enter_since(id, room, since.as_ref());
        }
        let Some(cluster) = self.app.cluster.clone() else {
            return Err(Error::RoomNotFound(room_id.to_owned()));
        };
        // A replica found empty by the node's report, and ended, between being found and being
        // joined is replaced once: the next one is new, and the member is in it before any report.
        let replica = cluster.replica(room_id, &self.app.config.rooms).await?;
        match self.enter_replica(id, replica.clone(), since.clone()).await {
            Err(Error::RoomNotFound(_)) if replica.is_closed() => {
                let replica = cluster.replica(room_id, &self.app.config.rooms).await?;
                self.enter_replica(id, replica, since).await
            }
            entered => entered,
        }
    }

    /// The role a member has in a room of `streamer`: the room's own streamer (on any of their
    /// connections) is a member but not a viewer.
    fn role_in(&self, streamer: &str) -> Role {
        let who = self.who();
        if who.role == Role::Streamer && who.user == streamer {
            Role::Streamer
        } else {
            Role::Viewer
        }
    }

    /// Joins a room that another node runs, through this node's replica of it.
    async fn enter_replica(
        &mut self,
        id: u64,
        replica: Arc<Replica>,
        since: Option<Position>,
    ) -> Result<Reply> {
        let role = self.role_in(&replica.streamer);
        let user = self.who().user.clone();
        let mut subscription = replica.join(self.conn, role, &user, self.outbox.clone())?;
        let request = Request::Join {
            id,
            since: since.as_ref().map(|p| (p.epoch.clone(), p.seq)),
        };
        let answer = match remote::ask(&self.app, &replica.id, &request).await {
            Ok(answer) if answer.joined => answer,
            Ok(refused) => {
                replica.leave(self.conn);
                return Ok(Reply::Ack(Frame::from(refused.frame)));
            }
            Err(e) => {
                replica.leave(self.conn);
                return Err(e);
            }
        };
        subscription.through_seq = answer.through_seq;
        let missed = answer.missed_events(replica.epoch_id);
        tracing::Span::current().record("room", replica.id.as_str());
        self.room = Some(Membership::Relayed(replica));
        Ok(Reply::AckThenSubscribe(
            Frame::from(answer.frame),
            missed,
            subscription,
        ))
    }

    fn enter(&mut self, id: u64, room: Arc<Room>) -> Result<Reply> {
        self.enter_since(id, room, None)
    }

    fn enter_since(&mut self, id: u64, room: Arc<Room>, since: Option<&Position>) -> Result<Reply> {
        let role = self.role_in(&room.streamer);
        let user = self.who().user.clone();
        let (entry, subscription) =
            room.join_since(self.conn, role, &user, self.outbox.clone(), since)?;
        if since.is_some() {
            let recovered = matches!(entry, Entry::Recovered { .. });
            self.app.metrics.recovery(recovered);
        }
        let (ack, missed) = entry_reply(id, &room, entry);
        tracing::Span::current().record("room", room.id.as_str());
        self.room = Some(Membership::Owned(room));
        Ok(Reply::AckThenSubscribe(ack, missed, subscription))
    }
}

//! What each client command does, for one connection.
//!
//! A [`Session`] holds a connection's identity, current room and rate buckets. The connection's
//! reader hands it each text frame; it decodes, checks auth, role and rate limits before any work
//! or money moves, runs the command, and queues exactly one `ack` or `error` carrying the
//! client's `id`. It returns a close code only when the connection must end.
//!
//! This file holds the session's lifecycle and the checks every command shares (authentication,
//! rate limits, roles, the current room); each command's handler lives with its family:
//! `session/rooms.rs`, `session/gifts.rs`, `session/questions.rs`, `session/red_packets.rs`,
//! `session/goals.rs`, `session/leaderboards.rs` and `session/pk.rs`.
//!
//! **Gifts in flight.** A `send_gift` needs nothing of the session once its checks pass (role,
//! room, sticker, rate limits), only the ledger and the room. So its commit runs as an owned
//! future ([`InFlight`]) while the connection reads on: up to `server.gifts_in_flight_max` per
//! connection, so one connection's gifts share ledger batches instead of waiting for each
//! other's commits. Their acks come as each commits, in any order. Any other command waits until
//! the connection's gifts in flight are answered, so everything else still runs in the order
//! sent (`docs/PROTOCOL.md` §2).
//!
//! In a cluster, a member of a room that another node runs is in that room through a replica
//! (`room/replica.rs`). Its commands that act on the room are checked here (authentication, rate
//! limits) and then run by the room's owner (`cluster/remote.rs`), whose session code is this
//! same file, entered through [`Session::run_forwarded`].

mod gifts;
mod goals;
mod leaderboards;
mod pk;
mod questions;
mod red_packets;
mod rooms;

pub(crate) use pk::{beat as beat_pk, end_for_close, learn as learn_pk};
pub(crate) use rooms::entry_reply;

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use serde::Serialize;
use serde_json::json;
use tokio::time::Instant;

use crate::app::App;
use crate::auth::{Identity, Role};
use crate::cluster::remote::{self, Request};
use crate::error::{CloseCode, Error, Result};
use crate::gift::catalog::Sticker;
use crate::metrics::OutKind;
use crate::outbox::COMMAND_ITEMS_MAX;
use crate::outbox::{Outbound, Outbox};
use crate::protocol::server;
use crate::protocol::{self, Command, EventFrame, Frame};
use crate::ratelimit::{self, Buckets};
use crate::room::hub::Subscription;
use crate::room::replica::Replica;
use crate::room::{ConnId, Room};

fn ack<T: Serialize>(id: u64, result: &T) -> Result<Reply> {
    Ok(Reply::Ack(server::ack(id, result)))
}

/// A successful command's reply.
enum Reply {
    Ack(Frame),
    /// An ack, the member's recovered events (if any), then a room subscription, queued in that
    /// order so the client sees its snapshot or its missed events before the room's next event.
    AckThenSubscribe(Frame, Vec<EventFrame>, Subscription),
}

/// A pipelined command that has run: its reply, for [`Session::finish`].
pub struct Finished {
    id: u64,
    name: &'static str,
    started: Instant,
    result: Result<Reply>,
}

/// A connection's gifts still committing. Empty, it allocates nothing: most connections never
/// gift.
#[derive(Default)]
pub struct InFlight {
    /// Boxed: an idle connection's future keeps a pointer, not the set.
    running: Option<Box<FuturesUnordered<BoxFuture<'static, Finished>>>>,
}

impl InFlight {
    pub fn len(&self) -> usize {
        self.running.as_ref().map_or(0, |running| running.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push(&mut self, command: BoxFuture<'static, Finished>) {
        self.running.get_or_insert_with(Box::default).push(command);
    }

    /// The next one to finish; pending forever while none runs.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Finished> {
        match self.running.as_mut() {
            Some(running) if !running.is_empty() => running
                .poll_next_unpin(cx)
                .map(|done| done.expect("checked non-empty")),
            _ => Poll::Pending,
        }
    }
}

/// The room a connection is in: one this node runs, or another node's through its replica.
#[derive(Clone)]
enum Membership {
    Owned(Arc<Room>),
    Relayed(Arc<Replica>),
}

impl Membership {
    fn id(&self) -> &str {
        match self {
            Membership::Owned(room) => &room.id,
            Membership::Relayed(replica) => &replica.id,
        }
    }

    fn is_closed(&self) -> bool {
        match self {
            Membership::Owned(room) => room.is_closed(),
            Membership::Relayed(replica) => replica.is_closed(),
        }
    }

    fn leave(&self, conn: ConnId) {
        match self {
            Membership::Owned(room) => room.leave(conn),
            Membership::Relayed(replica) => replica.leave(conn),
        }
    }
}

pub struct Session {
    app: Arc<App>,
    conn: ConnId,
    outbox: Outbox,
    identity: Option<Identity>,
    user_buckets: Option<Arc<Mutex<Buckets>>>,
    conn_buckets: Buckets,
    /// Stands in for the user bucket before authentication; dropped after it.
    anonymous_buckets: Option<Box<Buckets>>,
    room: Option<Membership>,
    protocol_errors: u32,
}

impl Session {
    pub fn new(app: Arc<App>, conn: ConnId, outbox: Outbox) -> Session {
        let conn_buckets = Buckets::new(&app.config.limits.connection);
        let anonymous_buckets = Some(Box::new(Buckets::new(&app.config.limits.connection)));
        Session {
            app,
            conn,
            outbox,
            identity: None,
            user_buckets: None,
            conn_buckets,
            anonymous_buckets,
            room: None,
            protocol_errors: 0,
        }
    }

    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// The connection's outbox.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    /// Binds the connection to a verified identity.
    pub fn authenticate(&mut self, identity: Identity) {
        debug_assert!(self.identity.is_none());
        self.user_buckets = Some(self.app.register_user(
            &identity.user,
            self.conn,
            self.outbox.clone(),
        ));
        self.anonymous_buckets = None;
        tracing::Span::current().record("user", identity.user.as_str());
        self.identity = Some(identity);
    }

    /// Replies to a binary frame, which the protocol does not use.
    pub fn reject_binary(&mut self) -> Option<CloseCode> {
        self.reply_error(None, &Error::BinaryFrame, Instant::now(), "binary")
    }

    /// Handles one text frame. A gift may be left running in `in_flight`, to be answered with
    /// [`Session::finish`]; any other command first waits until `in_flight` is answered.
    pub async fn handle_text(&mut self, text: &str, in_flight: &mut InFlight) -> Option<CloseCode> {
        let started = Instant::now();
        let (id, decoded) = protocol::decode(text);
        let name = decoded.as_ref().map_or("invalid", Command::name);
        self.app
            .metrics
            .messages_in
            .with_label_values(&[name])
            .inc();
        let result = match decoded {
            Err(e) => Err(e),
            Ok(command) => {
                let id = id.expect("decoded commands carry an id");
                match self.admit(&command) {
                    Err(e) => Err(e),
                    Ok(()) => match command {
                        Command::SendGift { sticker, key }
                            if in_flight.len() < self.app.config.server.gifts_in_flight_max =>
                        {
                            match self.start_gift(id, sticker, key, text) {
                                Ok(gift) => {
                                    self.app.metrics.gifts_in_flight.inc();
                                    in_flight.push(Box::pin(async move {
                                        Finished {
                                            id,
                                            name,
                                            started,
                                            result: gift.await,
                                        }
                                    }));
                                    return None;
                                }
                                Err(e) => Err(e),
                            }
                        }
                        command => {
                            if let Some(code) = self.drain(in_flight).await {
                                return Some(code);
                            }
                            match self.relayed_room(&command) {
                                Some(replica) => self.forward(&replica, text).await,
                                None => self.dispatch(id, command).await,
                            }
                        }
                    },
                }
            }
        };
        self.answer(id, name, started, result)
    }

    /// Answers a gift that was left running.
    pub fn finish(&mut self, done: Finished) -> Option<CloseCode> {
        self.app.metrics.gifts_in_flight.dec();
        self.answer(Some(done.id), done.name, done.started, done.result)
    }

    /// Answers every gift still running, as each finishes.
    pub async fn drain(&mut self, in_flight: &mut InFlight) -> Option<CloseCode> {
        let mut code = None;
        while !in_flight.is_empty() {
            let done = std::future::poll_fn(|cx| in_flight.poll_next(cx)).await;
            code = code.or(self.finish(done));
        }
        code
    }

    /// Queues a command's ack or error.
    fn answer(
        &mut self,
        id: Option<u64>,
        name: &str,
        started: Instant,
        result: Result<Reply>,
    ) -> Option<CloseCode> {
        match result {
            Ok(reply) => {
                match reply {
                    Reply::Ack(frame) => {
                        self.outbox.push(OutKind::Ack, frame);
                    }
                    Reply::AckThenSubscribe(frame, missed, ring) => {
                        self.outbox.push(OutKind::Ack, frame);
                        if !missed.is_empty() {
                            self.outbox.send(Outbound::Replay(missed));
                        }
                        self.outbox.send(Outbound::Subscribe(ring));
                    }
                }
                self.app
                    .metrics
                    .ack_seconds
                    .with_label_values(&[name])
                    .observe(started.elapsed().as_secs_f64());
                None
            }
            Err(e) => self.reply_error(id, &e, started, name),
        }
    }

    fn reply_error(
        &mut self,
        id: Option<u64>,
        e: &Error,
        started: Instant,
        name: &str,
    ) -> Option<CloseCode> {
        self.outbox.push(OutKind::Error, server::error(id, e));
        self.app
            .metrics
            .errors
            .with_label_values(&[e.reason()])
            .inc();
        self.app
            .metrics
            .ack_seconds
            .with_label_values(&[name])
            .observe(started.elapsed().as_secs_f64());
        if matches!(e, Error::InvalidToken(_) | Error::TokenExpired) && self.identity.is_none() {
            return Some(CloseCode::AuthFailed);
        }
        if e.is_protocol_violation() {
            self.protocol_errors += 1;
            if self.protocol_errors > self.app.config.server.protocol_errors_max {
                return Some(CloseCode::TooManyErrors);
            }
        }
        None
    }

    /// Checks authentication and rate limits before any work is done.
    fn admit(&mut self, command: &Command) -> Result<()> {
        let class = command.rate_class();
        match &self.user_buckets {
            Some(user) => {
                let mut user = user.lock().unwrap_or_else(|p| p.into_inner());
                let limits = &self.app.config.limits;
                ratelimit::admit(
                    (&mut self.conn_buckets, &limits.connection),
                    (&mut user, &limits.user),
                    class,
                )
            }
            None => {
                let anonymous = self
                    .anonymous_buckets
                    .as_mut()
                    .expect("kept until authentication");
                let rates = &self.app.config.limits.connection;
                ratelimit::admit((&mut self.conn_buckets, rates), (anonymous, rates), class)?;
                match command {
                    Command::Auth { .. } => Ok(()),
                    _ => Err(Error::NotAuthenticated),
                }
            }
        }
    }

    fn who(&self) -> &Identity {
        self.identity
            .as_ref()
            .expect("admit() lets only auth through unauthenticated")
    }

    /// The live room this connection is in, wherever it runs; forgets a room that closed.
    fn membership(&mut self) -> Result<Membership> {
        match &self.room {
            Some(room) if !room.is_closed() => Ok(room.clone()),
            Some(_) => {
                self.room = None;
                Err(Error::NotInRoom)
            }
            None => Err(Error::NotInRoom),
        }
    }

    /// The live room this connection is in, run by this node. Commands for a room another node
    /// runs never get here: they are forwarded first.
    fn current_room(&mut self) -> Result<Arc<Room>> {
        match self.membership()? {
            Membership::Owned(room) => {
                room.admit()?;
                Ok(room)
            }
            Membership::Relayed(_) => unreachable!("room commands of relayed rooms are forwarded"),
        }
    }

    /// The replica `command` must go to, if it acts on a room that another node runs.
    fn relayed_room(&mut self, command: &Command) -> Option<Arc<Replica>> {
        if !command.acts_on_room() {
            return None;
        }
        self.replica()
    }

    /// The replica of the room this connection is in, if another node runs it.
    fn replica(&mut self) -> Option<Arc<Replica>> {
        match self.membership() {
            Ok(Membership::Relayed(replica)) => Some(replica),
            _ => None,
        }
    }

    /// Has the room's owner run `text`, and returns its ack or error as the owner encoded it.
    async fn forward(&mut self, replica: &Replica, text: &str) -> Result<Reply> {
        self.forwarding(replica, text).await
    }

    /// [`Session::forward`] as a future that needs nothing of the session.
    fn forwarding(&self, replica: &Replica, text: &str) -> BoxFuture<'static, Result<Reply>> {
        let who = self.who();
        let request = Request::Command {
            user: who.user.clone(),
            role: who.role,
            frame: text.to_owned(),
        };
        let (app, room) = (self.app.clone(), replica.id.clone());
        Box::pin(async move {
            let answer = remote::ask(&app, &room, &request).await?;
            Ok(Reply::Ack(Frame::from(answer.frame)))
        })
    }

    /// Runs a command that a member on another node sent for `room`, which this node runs, as
    /// that member's own node would run it here; returns the ack or error for the client.
    ///
    /// Boxed, because a forwarded command may open rooms whose own command service runs
    /// forwarded commands: the future's type would otherwise contain itself.
    pub fn run_forwarded(
        app: Arc<App>,
        identity: Identity,
        room: Arc<Room>,
        text: String,
    ) -> futures_util::future::BoxFuture<'static, Frame> {
        Box::pin(Self::run_forwarded_inner(app, identity, room, text))
    }

    async fn run_forwarded_inner(
        app: Arc<App>,
        identity: Identity,
        room: Arc<Room>,
        text: String,
    ) -> Frame {
        let (id, decoded) = protocol::decode(&text);
        let command = match decoded {
            Ok(command) if command.acts_on_room() => command,
            Ok(_) => {
                let e = Error::InvalidMessage("only room commands are forwarded".into());
                return server::error(id, &e);
            }
            Err(e) => return server::error(id, &e),
        };
        let id = id.expect("decoded commands carry an id");
        // The member's node already checked the member's rate limits and holds its connection;
        // the room commands queue nothing on this outbox, which only satisfies the session.
        let (outbox, queued) = Outbox::new(COMMAND_ITEMS_MAX * 2, 1 << 16);
        let mut session = Session::new(app, 0, outbox);
        session.identity = Some(identity);
        session.room = Some(Membership::Owned(room));
        let reply = session.dispatch(id, command).await;
        assert!(
            queued.try_recv().is_none(),
            "room commands reply only by their result"
        );
        match reply {
            Ok(Reply::Ack(frame)) => frame,
            Ok(Reply::AckThenSubscribe(..)) => unreachable!("joins are not forwarded commands"),
            Err(e) => {
                session
                    .app
                    .metrics
                    .errors
                    .with_label_values(&[e.reason()])
                    .inc();
                server::error(Some(id), &e)
            }
        }
    }

    fn sticker(&self, id: String) -> Result<Sticker> {
        self.app
            .catalog
            .get(&id)
            .cloned()
            .ok_or(Error::UnknownSticker(id))
    }

    /// The current room, which the caller must own as its streamer.
    fn owned_room(&mut self) -> Result<Arc<Room>> {
        self.who().require(Role::Streamer)?;
        let room = self.current_room()?;
        if room.streamer != self.who().user {
            return Err(Error::NotRoomOwner);
        }
        Ok(room)
    }

    /// One handler per command: the handlers live with their family in `session/*.rs`.
    async fn dispatch(&mut self, id: u64, command: Command) -> Result<Reply> {
        match command {
            Command::Auth { token } => self.handle_auth(id, &token),
            Command::OpenRoom { room, title } => self.handle_open_room(id, &room, &title).await,
            Command::CloseRoom {} => self.handle_close_room(id).await,
            Command::Join { room, since } => self.handle_join(id, &room, since).await,
            Command::Leave {} => self.handle_leave(id),
            Command::SendGift { sticker, key } => self.gift(id, sticker, key)?.await,
            Command::Ask { text, sticker, key } => self.handle_ask(id, text, sticker, key).await,
            Command::Answer { question_id, text } => self.handle_answer(id, question_id, &text),
            Command::Thank { gift_id, text } => self.handle_thank(id, gift_id, text),
            Command::SetGoal {
                target_coins,
                sticker,
                duration_ms,
            } => self.handle_set_goal(id, target_coins, sticker, duration_ms),
            Command::EndGoal {} => self.handle_end_goal(id),
            Command::Leaderboard { board, around } => {
                self.handle_leaderboard(id, board, around).await
            }
            Command::PkChallenge { room } => self.handle_pk_challenge(id, &room).await,
            Command::PkAccept { battle_id } => self.handle_pk_answer(id, &battle_id, true).await,
            Command::PkDecline { battle_id } => self.handle_pk_answer(id, &battle_id, false).await,
            Command::PkLeave { battle_id } => self.handle_pk_leave(id, &battle_id).await,
            Command::Balance {} => self.handle_balance(id).await,
            Command::DropRedPacket {
                total_coins,
                shares,
                key,
            } => {
                self.handle_drop_red_packet(id, total_coins, shares, &key)
                    .await
            }
            Command::GrabRedPacket { packet_id } => {
                self.handle_grab_red_packet(id, &packet_id).await
            }
            Command::Ping {} => ack(id, &json!({ "server_time_ms": crate::ledger::now_ms() })),
        }
    }

    fn handle_auth(&mut self, id: u64, token: &str) -> Result<Reply> {
        if self.identity.is_some() {
            return Err(Error::AlreadyAuthenticated);
        }
        let identity = self.app.auth.verify(token)?;
        let result = json!({ "user": identity.user, "role": identity.role });
        self.authenticate(identity);
        ack(id, &result)
    }

    /// Leaves the room and forgets the user; called once when the connection ends.
    pub fn end(&mut self) {
        if let Some(room) = self.room.take() {
            room.leave(self.conn);
        }
        if let Some(identity) = &self.identity {
            self.app.unregister_user(&identity.user, self.conn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::testing::{app, TestApp};
    use crate::outbox::OutboxReceiver;

    /// A session on its own connection, and the receiving end of its outbox.
    fn session(
        app: &TestApp,
        conn: ConnId,
        user: Option<(&str, Role)>,
    ) -> (Session, OutboxReceiver) {
        let (outbox, rx) = Outbox::new(64, 1 << 20);
        let mut s = Session::new(app.app.clone(), conn, outbox);
        if let Some((user, role)) = user {
            s.authenticate(Identity {
                user: user.into(),
                role,
                room: None,
            });
        }
        (s, rx)
    }

    /// Sends one frame and returns the reply it queued, as JSON.
    async fn call(s: &mut Session, rx: &OutboxReceiver, text: &str) -> serde_json::Value {
        let mut in_flight = InFlight::default();
        s.handle_text(text, &mut in_flight).await;
        s.drain(&mut in_flight).await;
        loop {
            match rx.try_recv().expect("a reply") {
                Outbound::Frame(_, f) => return serde_json::from_str(f.as_str()).unwrap(),
                Outbound::Replay(_)
                | Outbound::Subscribe(_)
                | Outbound::Unsubscribe
                | Outbound::Control(_) => continue,
            }
        }
    }

    #[tokio::test]
    async fn commands_before_auth_are_refused_and_auth_by_message_works_once() {
        let app = app(|_| {});
        let (mut s, rx) = session(&app, 1, None);
        let e = call(&mut s, &rx, r#"{"type":"ping","id":1}"#).await;
        assert_eq!(
            (e["id"].as_u64(), e["code"].as_u64()),
            (Some(1), Some(11005))
        );
        let token = app.auth.mint("bob", Role::Viewer, None, 60).unwrap();
        let auth = format!(r#"{{"type":"auth","id":2,"token":"{token}"}}"#);
        let ack = call(&mut s, &rx, &auth).await;
        assert_eq!(ack["result"], json!({ "user": "bob", "role": "viewer" }));
        let again = call(&mut s, &rx, &auth.replace("\"id\":2", "\"id\":3")).await;
        assert_eq!(again["reason"], "already_authenticated");
    }

    #[tokio::test]
    async fn a_bad_auth_message_closes_with_auth_failed() {
        let app = app(|_| {});
        let (mut s, _rx) = session(&app, 1, None);
        let code = s
            .handle_text(
                r#"{"type":"auth","id":1,"token":"x.y.z"}"#,
                &mut InFlight::default(),
            )
            .await;
        assert_eq!(code, Some(CloseCode::AuthFailed));
    }

    #[tokio::test]
    async fn a_full_room_and_a_full_node_have_their_own_codes() {
        let app = app(|c| {
            c.rooms.rooms_max = 1;
            c.rooms.members_max = 1;
        });
        let (mut star, star_rx) = session(&app, 1, Some(("star", Role::Streamer)));
        let open = r#"{"type":"open_room","id":1,"room":"a","title":"t"}"#;
        assert_eq!(call(&mut star, &star_rx, open).await["type"], "ack");

        let (mut other, other_rx) = session(&app, 2, Some(("nova", Role::Streamer)));
        let e = call(&mut other, &other_rx, &open.replace("\"a\"", "\"b\"")).await;
        assert_eq!(
            (e["code"].as_u64(), e["reason"].as_str()),
            (Some(15005), Some("too_many_rooms"))
        );

        let (mut bob, bob_rx) = session(&app, 3, Some(("bob", Role::Viewer)));
        let e = call(&mut bob, &bob_rx, r#"{"type":"join","id":1,"room":"a"}"#).await;
        assert_eq!(
            (e["code"].as_u64(), e["reason"].as_str()),
            (Some(15004), Some("room_full"))
        );
    }

    #[tokio::test]
    async fn roles_are_checked_before_anything_happens() {
        let app = app(|_| {});
        let (mut viewer, rx) = session(&app, 1, Some(("bob", Role::Viewer)));
        let e = call(
            &mut viewer,
            &rx,
            r#"{"type":"open_room","id":1,"room":"a","title":"t"}"#,
        )
        .await;
        assert_eq!(e["reason"], "wrong_role");
        let (mut star, star_rx) = session(&app, 2, Some(("star", Role::Streamer)));
        call(
            &mut star,
            &star_rx,
            r#"{"type":"open_room","id":1,"room":"a","title":"t"}"#,
        )
        .await;
        // A streamer-role token cannot gift, even in its own room.
        let e = call(
            &mut star,
            &star_rx,
            r#"{"type":"send_gift","id":2,"sticker":"rose","key":"k"}"#,
        )
        .await;
        assert_eq!(e["reason"], "wrong_role");
    }
}

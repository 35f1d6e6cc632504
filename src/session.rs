//! What each client command does, for one connection.
//!
//! A [`Session`] holds a connection's identity, current room and rate buckets. The connection's
//! reader hands it each text frame; it decodes, checks auth, role and rate limits before any work
//! or money moves, runs the command, and queues exactly one `ack` or `error` carrying the
//! client's `id`. It returns a close code only when the connection must end.

use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::json;
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::app::App;
use crate::auth::{Identity, Role};
use crate::bounds::EPOCH_CHARS_MAX;
use crate::error::{CloseCode, Error, Result};
use crate::gift::catalog::Sticker;
use crate::gifting;
use crate::metrics::OutKind;
use crate::outbox::{Outbound, Outbox};
use crate::protocol::client::Since;
use crate::protocol::client::{check_room_id, check_text};
use crate::protocol::server::{self, encode, ReceiptView, Recovered, ServerMessage};
use crate::protocol::{self, Command, Frame};
use crate::ratelimit::{self, Buckets};
use crate::room::{ConnId, Entry, Position, Room};

/// Default text of a streamer's thank-you when none is given.
const THANKS_TEXT_DEFAULT: &str = "Thank you!";

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

fn ack<T: Serialize>(id: u64, result: &T) -> Result<Reply> {
    Ok(Reply::Ack(server::ack(id, result)))
}

/// A successful command's reply.
enum Reply {
    Ack(Frame),
    /// An ack, the member's recovered events (if any), then a room subscription, queued in that
    /// order so the client sees its snapshot or its missed events before the room's next event.
    AckThenSubscribe(Frame, Vec<Frame>, broadcast::Receiver<Frame>),
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
    room: Option<Arc<Room>>,
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

    /// Handles one text frame.
    pub async fn handle_text(&mut self, text: &str) -> Option<CloseCode> {
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
                    Ok(()) => self.dispatch(id, command).await,
                    Err(e) => Err(e),
                }
            }
        };
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

    /// The live room this connection is in; forgets a room that closed.
    fn current_room(&mut self) -> Result<Arc<Room>> {
        match &self.room {
            Some(room) if !room.is_closed() => Ok(room.clone()),
            Some(_) => {
                self.room = None;
                Err(Error::NotInRoom)
            }
            None => Err(Error::NotInRoom),
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

    async fn dispatch(&mut self, id: u64, command: Command) -> Result<Reply> {
        let ack = |result: &serde_json::Value| ack(id, result);
        match command {
            Command::Auth { token } => {
                if self.identity.is_some() {
                    return Err(Error::AlreadyAuthenticated);
                }
                let identity = self.app.auth.verify(&token)?;
                let result = json!({ "user": identity.user, "role": identity.role });
                self.authenticate(identity);
                ack(&result)
            }
            Command::OpenRoom { room, title } => self.open_room(id, &room, &title),
            Command::CloseRoom {} => {
                let room = self.owned_room()?;
                let seq = room.close("closed by the streamer")?;
                self.app.rooms.remove(&room);
                self.room = None;
                ack(&json!({ "room": room.id, "seq": seq }))
            }
            Command::Join { room, since } => self.join(id, &room, since),
            Command::Leave {} => {
                let room = self.current_room()?;
                room.leave(self.conn);
                self.outbox.send(Outbound::Unsubscribe);
                self.room = None;
                ack(&json!({ "room": room.id }))
            }
            Command::SendGift { sticker, key } => {
                self.who().require(Role::Viewer)?;
                let room = self.current_room()?;
                let sticker = self.sticker(sticker)?;
                let user = self.who().user.clone();
                let done = gifting::send(&self.app, &room, &user, &sticker, &key, None).await?;
                self::ack(
                    id,
                    &ReceiptView::new(&done.outcome.receipt, done.outcome.replayed),
                )
            }
            Command::Ask { text, sticker, key } => self.ask(id, text, sticker, key).await,
            Command::Answer { question_id, text } => {
                let room = self.owned_room()?;
                check_text(&text, self.app.config.rooms.answer_chars_max)?;
                let (question, seq) = room.answer(question_id, &text)?;
                let private = encode(&ServerMessage::Answered {
                    room: &room.id,
                    question_id,
                    text: &text,
                });
                self.app
                    .send_to_user(&question.from, OutKind::Answered, &private);
                ack(&json!({ "question_id": question_id, "seq": seq }))
            }
            Command::Thank { gift_id, text } => {
                let room = self.owned_room()?;
                let text = text.unwrap_or_else(|| THANKS_TEXT_DEFAULT.to_owned());
                check_text(&text, self.app.config.rooms.thanks_chars_max)?;
                let (sender, seq) = room.thank(&gift_id, &text)?;
                let private = encode(&ServerMessage::Thanks {
                    room: &room.id,
                    gift_id: &gift_id,
                    from: &room.streamer,
                    text: &text,
                });
                self.app.send_to_user(&sender, OutKind::Thanks, &private);
                ack(&json!({ "gift_id": gift_id, "to": sender, "seq": seq }))
            }
            Command::Balance {} => {
                let user = self.who().user.clone();
                let wallet = self.app.ledger.wallet(&user).await?;
                let mut result = json!({
                    "balance_coins": wallet.total_coins(),
                    "ios_coins": wallet.ios_coins,
                    "android_coins": wallet.android_coins,
                    "web_coins": wallet.web_coins,
                });
                if self.who().role == Role::Streamer {
                    result["earnings_coins"] = self.app.ledger.earnings(&user).await?.into();
                }
                ack(&result)
            }
            Command::Ping {} => ack(&json!({ "server_time_ms": crate::ledger::now_ms() })),
        }
    }

    fn enter_check(&mut self, room: &str) -> Result<()> {
        check_room_id(room)?;
        self.who().check_room(room)?;
        if let Ok(current) = self.current_room() {
            return Err(Error::AlreadyInRoom(current.id.clone()));
        }
        Ok(())
    }

    fn open_room(&mut self, id: u64, room_id: &str, title: &str) -> Result<Reply> {
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

    fn join(&mut self, id: u64, room_id: &str, since: Option<Since>) -> Result<Reply> {
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

    async fn ask(
        &mut self,
        id: u64,
        text: String,
        sticker: Option<String>,
        key: Option<String>,
    ) -> Result<Reply> {
        self.who().require(Role::Viewer)?;
        let room = self.current_room()?;
        check_text(&text, self.app.config.rooms.question_chars_max)?;
        let user = self.who().user.clone();
        let Some(sticker) = sticker else {
            let (view, seq) = room.ask(&user, &text, None, 0)?;
            return ack(id, &json!({ "question_id": view.question_id, "seq": seq }));
        };
        let key = key.ok_or_else(|| Error::InvalidMessage("a paid question needs `key`".into()))?;
        let sticker = self.sticker(sticker)?;
        let done = gifting::send(&self.app, &room, &user, &sticker, &key, Some(&text)).await?;
        #[derive(Serialize)]
        struct PaidAck<'a> {
            question_id: Option<u64>,
            seq: Option<u64>,
            receipt: ReceiptView<'a>,
        }
        let receipt = ReceiptView::new(&done.outcome.receipt, done.outcome.replayed);
        let result = PaidAck {
            question_id: done.question_id,
            seq: done.outcome.receipt.seq,
            receipt,
        };
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
        s.handle_text(text).await;
        loop {
            match rx.try_recv().expect("a reply") {
                Outbound::Frame(_, f) => return serde_json::from_str(f.as_str()).unwrap(),
                Outbound::Replay(_) | Outbound::Subscribe(_) | Outbound::Unsubscribe => continue,
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
            .handle_text(r#"{"type":"auth","id":1,"token":"x.y.z"}"#)
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

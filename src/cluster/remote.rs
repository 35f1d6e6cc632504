//! Commands for a room that another node runs: what the member's node sends to the room's
//! owner, and how the owner serves them.
//!
//! The member's node checks authentication and rate limits, then forwards the client's frame
//! verbatim with the member's identity. The owner decodes it again and runs it through the same
//! session code as its own members' commands (`session.rs`), so the ledger commits before the
//! event is numbered and the receipt, ack or error is encoded by the owner, with the client's
//! `id`; the member's node passes it on unchanged. A forwarded command that gets no answer within
//! `cluster.request_timeout_ms` is answered `room_unavailable`; a gift's idempotency key makes
//! its retry safe whether or not the first attempt was charged.
//!
//! Joins go the same way: the member's node subscribes its member to its replica first, then
//! asks the owner for the member's entry (a snapshot, or the missed events after `since` from
//! the owner's history) and the position it covers, past which the replica's events follow.

use std::sync::Arc;

use async_nats::Subscriber;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::link::Outgoing;
use crate::app::App;
use crate::auth::{Identity, Role};
use crate::error::{Error, Result};
use crate::ledger::pk::PkBattle;
use crate::ledger::PacketEndReason;
use crate::protocol::server::EventKind;
use crate::protocol::{EventFrame, Frame};
use crate::room::hub::Counts;
use crate::room::{Position, Room};
use crate::session::Session;

/// What a node asks of a room's owner.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Run a client's command frame for `user`.
    Command {
        user: String,
        role: Role,
        frame: String,
    },
    /// The entry of a member joining with request id `id`, from `since` if given.
    Join {
        id: u64,
        since: Option<(String, u64)>,
    },
    /// The node's members in the room. Sent without a reply subject.
    Report { node: String, counts: Counts },
    /// A red packet of the room expired and was returned by another node's sweeper: the room
    /// announces its end. Sent without a reply subject.
    RedPacketEnded {
        packet_id: String,
        reason: PacketEndReason,
        grabbed_shares: u64,
        grabbed_coins: u64,
        returned_coins: u64,
    },
    /// A PK battle of the room changed (`session/pk.rs`): the room shows the ledger's record.
    /// Sent without a reply subject.
    Pk { battle: Box<PkBattle> },
}

impl Request {
    pub fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("requests serialize"))
    }
}

/// One missed event in a join's answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct Missed {
    pub seq: u64,
    pub frame: String,
}

/// The owner's answer: the frame for the client (an ack or an error), and for a join that
/// succeeded, the events to replay and the last position they cover.
#[derive(Debug, Serialize, Deserialize)]
pub struct Answer {
    pub frame: String,
    pub joined: bool,
    pub through_seq: u64,
    pub missed: Vec<Missed>,
}

impl Answer {
    fn frame(frame: Frame) -> Answer {
        Answer {
            frame: frame.as_str().to_owned(),
            joined: false,
            through_seq: 0,
            missed: Vec::new(),
        }
    }

    fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("answers serialize"))
    }

    /// The missed events as frames of the room with epoch `epoch`.
    pub fn missed_events(&self, epoch: u64) -> Vec<EventFrame> {
        self.missed
            .iter()
            .map(|m| EventFrame {
                epoch,
                seq: m.seq,
                bytes: Frame::from(m.frame.clone()),
            })
            .collect()
    }
}

/// Serves other nodes' requests for `room`, which this node owns, until `stop` or the node's
/// shutdown. Each request runs in its own task, at most `cluster.remote_commands_max` at once,
/// so one slow ledger commit does not hold up the room's other commands.
pub async fn serve_room(
    app: Arc<App>,
    room: Arc<Room>,
    mut requests: Subscriber,
    stop: CancellationToken,
) {
    let cluster = app.cluster.as_ref().expect("a cluster").clone();
    loop {
        let message = tokio::select! {
            m = requests.next() => match m { Some(m) => m, None => return },
            _ = stop.cancelled() => return,
            _ = app.shutdown.cancelled() => return,
        };
        let Ok(request) = serde_json::from_slice::<Request>(&message.payload) else {
            tracing::warn!(room = %room.id, "ignored a malformed cluster request");
            continue;
        };
        match request {
            Request::Report { node, counts } => {
                room.report(&node, counts);
                continue;
            }
            Request::RedPacketEnded {
                packet_id,
                reason,
                grabbed_shares,
                grabbed_coins,
                returned_coins,
            } => {
                let _ = room.announce(&EventKind::RedPacketEnd {
                    packet_id,
                    reason,
                    grabbed_shares,
                    grabbed_coins,
                    returned_coins,
                });
                continue;
            }
            Request::Pk { battle } => {
                let (app, room) = (app.clone(), room.clone());
                tokio::spawn(async move { crate::session::learn_pk(&app, &room, &battle).await });
                continue;
            }
            Request::Command { .. } | Request::Join { .. } => {}
        }
        let Some(reply) = message.reply else {
            continue;
        };
        let Ok(permit) = cluster.remote_permits.clone().acquire_owned().await else {
            return;
        };
        let (app, room, cluster) = (app.clone(), room.clone(), cluster.clone());
        tokio::spawn(async move {
            app.metrics
                .cluster_remote_commands
                .with_label_values(&["served"])
                .inc();
            let answer = answer(&app, &room, request).await;
            // Through the node's ordered queue, behind the command's event: an owner that dies
            // after sending a receipt has published the event it numbers.
            cluster.queue(Outgoing {
                subject: reply.to_string(),
                headers: async_nats::HeaderMap::new(),
                payload: answer.encode(),
                numbered_at: None,
                hold: None,
            });
            drop(permit);
        });
    }
}

async fn answer(app: &Arc<App>, room: &Arc<Room>, request: Request) -> Answer {
    match request {
        Request::Command { user, role, frame } => {
            let identity = Identity {
                user,
                role,
                room: None,
            };
            Answer::frame(Session::run_forwarded(app.clone(), identity, room.clone(), frame).await)
        }
        Request::Join { id, since } => {
            let since = since.map(|(epoch, seq)| Position { epoch, seq });
            match room.entry_since(since.as_ref()) {
                Ok(entry) => {
                    if since.is_some() {
                        app.metrics
                            .recovery(matches!(entry, crate::room::Entry::Recovered { .. }));
                    }
                    let through_seq = entry.through_seq();
                    let (frame, missed) = crate::session::entry_reply(id, room, entry);
                    Answer {
                        frame: frame.as_str().to_owned(),
                        joined: true,
                        through_seq,
                        missed: missed
                            .into_iter()
                            .map(|e| Missed {
                                seq: e.seq,
                                frame: e.bytes.as_str().to_owned(),
                            })
                            .collect(),
                    }
                }
                Err(e) => Answer::frame(crate::protocol::server::error(Some(id), &e)),
            }
        }
        Request::Report { .. } | Request::RedPacketEnded { .. } | Request::Pk { .. } => {
            unreachable!("notices are handled without an answer")
        }
    }
}

/// Sends `request` for `room` to its owner and decodes the answer.
pub async fn ask(app: &App, room: &str, request: &Request) -> Result<Answer> {
    let cluster = app.cluster.as_ref().expect("a cluster");
    app.metrics
        .cluster_remote_commands
        .with_label_values(&["sent"])
        .inc();
    let payload = cluster.request(room, request.encode()).await?;
    serde_json::from_slice(&payload)
        .map_err(|e| Error::Internal(format!("bad answer from the room's node: {e}")))
}

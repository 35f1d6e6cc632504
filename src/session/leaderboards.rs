//! The `leaderboard` command: a board's top N and, with `around`, a user's rank with their
//! neighbours. The session and window boards are the room sequencer's (`room/leaderboard.rs`);
//! the all-time board is read from the ledger at the time of the command, so it is exact even
//! between the room's coalesced `leaderboard` events.

use serde_json::json;

use super::{ack, Membership, Reply, Session};
use crate::auth;
use crate::error::{Error, Result};
use crate::protocol::server::Board;
use crate::room::ranked;

impl Session {
    pub(super) async fn handle_leaderboard(
        &mut self,
        id: u64,
        board: Board,
        around: Option<String>,
    ) -> Result<Reply> {
        // A read: a busy room still answers it, so this does not go through `admit`.
        let room = match self.membership()? {
            Membership::Owned(room) => room,
            Membership::Relayed(_) => unreachable!("room commands of relayed rooms are forwarded"),
        };
        if let Some(user) = &around {
            auth::check_user_id(user).map_err(|_| {
                Error::InvalidMessage(format!(
                    "around must be a user id: [A-Za-z0-9_.-]{{1,{}}}",
                    auth::USER_ID_BYTES_MAX
                ))
            })?;
        }
        let neighbours = self.app.config.rooms.leaderboard_neighbours;
        let (top, around_entries) = match board {
            Board::AllTime => {
                let ledger = &self.app.ledger;
                let top = ledger
                    .top_gifters(&room.streamer, room.leaderboard_top_n())
                    .await?;
                let around_entries = match &around {
                    Some(user) => ledger
                        .gifter_around(&room.streamer, user, neighbours)
                        .await?
                        .map_or_else(Vec::new, |n| ranked(n.first_rank, n.gifters)),
                    None => Vec::new(),
                };
                (ranked(1, top), around_entries)
            }
            Board::Session | Board::Window => {
                room.leaderboard(board, around.as_deref(), neighbours)?
            }
        };
        let mut body = json!({ "board": board, "top": top });
        if around.is_some() {
            body["around"] = json!(around_entries);
        }
        ack(id, &body)
    }
}

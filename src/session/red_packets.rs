//! Red packet commands: `drop_red_packet` and `grab_red_packet`, for any member of a room (a
//! viewer or the room's streamer). What they do lives in `red_packets.rs`; this file only binds
//! them to the connection's identity and room.

use serde_json::json;

use super::{ack, Reply, Session};
use crate::error::Result;
use crate::red_packets;

impl Session {
    pub(super) async fn handle_drop_red_packet(
        &mut self,
        id: u64,
        total_coins: u64,
        shares: u64,
        key: &str,
    ) -> Result<Reply> {
        let room = self.current_room()?;
        let user = self.who().user.clone();
        let (r, seq) = red_packets::drop(&self.app, &room, &user, total_coins, shares, key).await?;
        ack(
            id,
            &json!({
                "packet_id": r.packet_id,
                "room": r.room,
                "total_coins": r.total_coins,
                "shares": r.shares,
                "funding": {
                    "ios_coins": r.funding_coins[0],
                    "android_coins": r.funding_coins[1],
                    "web_coins": r.funding_coins[2],
                },
                "balance_coins": r.balance_coins,
                "expires_ms": r.expires_ms,
                "seq": seq,
                "replayed": r.replayed,
            }),
        )
    }

    pub(super) async fn handle_grab_red_packet(
        &mut self,
        id: u64,
        packet_id: &str,
    ) -> Result<Reply> {
        let room = self.current_room()?;
        let user = self.who().user.clone();
        let (r, seq) = red_packets::grab(&self.app, &room, &user, packet_id).await?;
        ack(
            id,
            &json!({
                "packet_id": r.packet_id,
                "share_index": r.share_index,
                "coins": r.coins,
                "funding": {
                    "ios_coins": r.funding_coins[0],
                    "android_coins": r.funding_coins[1],
                    "web_coins": r.funding_coins[2],
                },
                "balance_coins": r.balance_coins,
                "seq": seq,
                "replayed": r.replayed,
            }),
        )
    }
}

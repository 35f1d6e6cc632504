//! Red packets end to end: dropping one into a room, grabbing shares, and ending it when the last
//! share is taken or when it expires, with the room events and the sender's summary.
//!
//! The money and the packet's whole state live in the ledger (`ledger/posting.rs` for the rules,
//! `gift/red_packet.rs` for the cut), so every node can serve grabs of any packet and an expiry
//! survives restarts. This module only orders things: the ledger commits first, then the room
//! hears of it. Each node's sweeper ([`sweeper`]) asks the ledger to end the packets whose time
//! ran out; the ledger ends each exactly once, whichever node asks first, and that node
//! publishes the end in the room (through the room's node in a cluster) and tells the sender.

use std::sync::Arc;
use std::time::Duration;

use crate::app::App;
use crate::error::{Error, Result};
use crate::ledger::{
    now_ms, GrabReceipt, PacketDrop, PacketEnd, PacketGrab, PacketReceipt,
    PACKETS_EXPIRED_PER_CALL_MAX,
};
use crate::metrics::OutKind;
use crate::protocol::server::{encode, EventKind, ServerMessage};
use crate::room::Room;

/// Drops a red packet of `total_coins` in `shares` shares from `sender` into `room`, then
/// announces it. Returns the receipt and the event's sequence number (none on a replay, or if
/// the room closed meanwhile).
pub async fn drop(
    app: &App,
    room: &Arc<Room>,
    sender: &str,
    total_coins: u64,
    shares: u64,
    key: &str,
) -> Result<(PacketReceipt, Option<u64>)> {
    crate::ledger::check_key(key, "key")?;
    let config = &app.config.red_packets;
    if shares == 0 || shares > config.shares_max {
        return Err(Error::InvalidAmount(format!(
            "shares must be from 1 to {}",
            config.shares_max
        )));
    }
    if total_coins < shares || total_coins > config.total_coins_max {
        return Err(Error::InvalidAmount(format!(
            "total_coins must be at least one per share and at most {}",
            config.total_coins_max
        )));
    }
    let req = PacketDrop {
        sender: sender.to_owned(),
        room: room.id.clone(),
        total_coins,
        shares,
        key: key.to_owned(),
        expires_ms: now_ms() + config.expiry_ms,
        spend_order: app.config.split.spend_order.clone(),
        caps: app.cap_policy(),
    };
    let receipt = app.ledger.drop_packet(req).await?;
    if receipt.replayed {
        return Ok((receipt, None));
    }
    app.metrics
        .red_packet_coins
        .with_label_values(&["dropped"])
        .inc_by(receipt.total_coins);
    let seq = room
        .announce(&EventKind::RedPacket {
            packet_id: receipt.packet_id.clone(),
            from: receipt.sender.clone(),
            total_coins: receipt.total_coins,
            shares: receipt.shares,
            expires_ms: receipt.expires_ms,
        })
        .ok();
    Ok((receipt, seq))
}

/// Grabs the next share of `packet_id` for `user` in `room`, then announces the grab (and the
/// packet's end, if this was its last share).
pub async fn grab(
    app: &App,
    room: &Arc<Room>,
    user: &str,
    packet_id: &str,
) -> Result<(GrabReceipt, Option<u64>)> {
    crate::ledger::check_key(packet_id, "packet_id")?;
    let req = PacketGrab {
        packet_id: packet_id.to_owned(),
        user: user.to_owned(),
        room: room.id.clone(),
        now_ms: now_ms(),
    };
    let receipt = app.ledger.grab_packet(req).await?;
    if receipt.replayed {
        return Ok((receipt, None));
    }
    app.metrics
        .red_packet_coins
        .with_label_values(&["grabbed"])
        .inc_by(receipt.coins);
    let seq = room
        .announce(&EventKind::RedPacketGrab {
            packet_id: receipt.packet_id.clone(),
            user: receipt.user.clone(),
            coins: receipt.coins,
            grabbed_shares: receipt.grabbed_shares,
            shares: receipt.shares,
        })
        .ok();
    if let Some(end) = &receipt.end {
        publish_end(app, end);
    }
    Ok((receipt, seq))
}

/// Announces a packet's end in its room (on this node, or in a cluster through the room's node)
/// and sends its sender the summary.
fn publish_end(app: &App, end: &PacketEnd) {
    if end.returned_coins > 0 {
        app.metrics
            .red_packet_coins
            .with_label_values(&["returned"])
            .inc_by(end.returned_coins);
    }
    if let Some(room) = app.rooms.get(&end.room) {
        let _ = room.announce(&EventKind::RedPacketEnd {
            packet_id: end.packet_id.clone(),
            reason: end.reason,
            grabbed_shares: end.grabbed_shares,
            grabbed_coins: end.grabbed_coins,
            returned_coins: end.returned_coins,
        });
    } else if let Some(cluster) = &app.cluster {
        cluster.notify_room(
            &end.room,
            &crate::cluster::remote::Request::RedPacketEnded {
                packet_id: end.packet_id.clone(),
                reason: end.reason,
                grabbed_shares: end.grabbed_shares,
                grabbed_coins: end.grabbed_coins,
                returned_coins: end.returned_coins,
            },
        );
    }
    let summary = encode(&ServerMessage::RedPacketSummary(end));
    app.send_to_user(&end.sender, OutKind::RedPacketSummary, &summary);
}

/// Every `red_packets.sweep_interval_ms`: ends the packets whose time ran out, in bounded calls,
/// until none is left; a failure is logged and retried at the next tick.
pub async fn sweeper(app: Arc<App>) {
    let every = Duration::from_millis(app.config.red_packets.sweep_interval_ms);
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = app.shutdown.cancelled() => return,
        }
        loop {
            match app.ledger.expire_packets(now_ms()).await {
                Ok(ended) => {
                    for end in &ended {
                        tracing::info!(
                            packet_id = end.packet_id,
                            returned_coins = end.returned_coins,
                            "red packet expired"
                        );
                        publish_end(&app, end);
                    }
                    if ended.len() < PACKETS_EXPIRED_PER_CALL_MAX {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not end expired red packets; retrying later");
                    break;
                }
            }
        }
    }
}

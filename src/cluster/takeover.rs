//! Taking over a room whose owner node died.
//!
//! An owner renews its room's lease every third of `cluster.lease_ms`; a node that dies (or
//! loses NATS) stops renewing, and the lease expires. Every node that relays the room to members
//! of its own checks, on the same beat, whether the lease is still there. When it is gone, the
//! node reads the room's latest events back from the JetStream stream `<namespace>_events`
//! (every event the owner published is kept there, `rooms.history_events_max` per room for
//! `cluster.events_kept_ms`), claims the lease with a create-if-absent (so of several nodes
//! trying at once exactly one wins), and continues the room: the same epoch, `seq` from the last
//! kept event, and the history, questions and recent gifts those events give
//! (`Room::resume`), with the leaderboards rebuilt from the ledger's gifts in the room. Its
//! replica's members stay subscribed: the hub passes from the replica to the room, after the
//! events the relay had not delivered yet. The other nodes' replicas go on relaying, now from
//! the new owner, with no gap and no new epoch.
//!
//! What cannot be continued is not: a room whose kept events are gone (idle longer than
//! `cluster.events_kept_ms`) or end with its close ends here too, and its members are sent
//! away with close 4002 `resync`, after which a re-join finds no room.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::stream::DirectGetErrorKind;

use super::link::{HEADER_EPOCH, HEADER_SEQ, HEADER_TERM};
use super::Cluster;
use crate::app::App;
use crate::error::{CloseCode, Error, Result};
use crate::protocol::{EventFrame, Frame};
use crate::room::hub::Counts;
use crate::room::leaderboard::ONE_STEP_MS;
use crate::room::replica::Replica;
use crate::room::Room;

/// Takes over every room this node relays to members whose lease has expired.
pub(super) async fn take_over_orphans(app: &Arc<App>) {
    let cluster = app.cluster.as_ref().expect("a cluster").clone();
    let replicas: Vec<Arc<Replica>> = cluster.replicas.iter().map(|r| r.clone()).collect();
    for replica in replicas {
        if replica.is_closed() || replica.counts() == Counts::default() {
            continue;
        }
        if !matches!(cluster.lease_of(&replica.id).await, Ok(None)) {
            continue;
        }
        match take_over(app, &cluster, &replica).await {
            Ok(true) => tracing::info!(room = %replica.id, "took over a room whose node is gone"),
            Ok(false) => {}
            Err(e) => tracing::warn!(room = %replica.id, error = %e, "could not take over a room"),
        }
    }
}

/// Claims `replica`'s room and runs it here. `Ok(false)` if another node was faster.
async fn take_over(app: &Arc<App>, cluster: &Arc<Cluster>, replica: &Arc<Replica>) -> Result<bool> {
    let kept = kept_events(cluster, &replica.id, replica.epoch_id).await?;
    let mut summary = replica.summary.clone();
    summary.seq = kept.last().map_or(0, |(e, _)| e.seq);
    let Some(claim) = cluster.claim(&summary).await? else {
        return Ok(false);
    };
    // The room is this node's now. The relay stops; what it had not delivered yet, the hub gets
    // from the kept events.
    let (hub, delivered_seq) = replica.hand_over();
    cluster.forget_replica(replica);
    for (event, _) in kept.iter().filter(|(e, _)| e.seq > delivered_seq) {
        hub.deliver(event.clone());
    }
    let resumed = Room::resume(
        &summary,
        replica.epoch_id,
        hub.clone(),
        kept,
        &app.config.rooms,
        app.metrics.clone(),
        app.fanout.as_ref(),
    );
    if let Some(room) = &resumed {
        // The leaderboards come back from the ledger, which holds every gift the room committed.
        let ledger = &app.ledger;
        let (window_ms, step_ms) = (room.boards_window_since_ms(), room.boards_step_ms());
        let read = tokio::try_join!(
            ledger.room_gifts_since(&room.id, room.opened_ms, ONE_STEP_MS),
            ledger.room_gifts_since(&room.id, window_ms, step_ms),
        );
        match read {
            Ok((session, window)) => room.restore_boards(&session, &window),
            Err(e) => {
                tracing::warn!(room = %room.id, error = %e, "leaderboards not restored: the ledger did not answer");
            }
        }
    }
    let room = match resumed.map(|room| app.rooms.open(room)) {
        Some(Ok(room)) => room,
        Some(Err(e)) => {
            hub.kick_all(CloseCode::Resync);
            let _ = cluster.leases.delete(&replica.id).await;
            return Err(e);
        }
        None => {
            hub.kick_all(CloseCode::Resync);
            let _ = cluster.leases.delete(&replica.id).await;
            return Ok(false);
        }
    };
    cluster.serve(app, room, claim);
    cluster.metrics.cluster_takeovers.inc();
    Ok(true)
}

/// The room's kept events of epoch `epoch`, oldest first, each with its age: the latest
/// gap-free run of them, leaving out any that a former owner published after a newer term's.
async fn kept_events(
    cluster: &Cluster,
    room: &str,
    epoch: u64,
) -> Result<Vec<(EventFrame, Duration)>> {
    let subject = cluster.events_subject(room);
    let mut kept: Vec<(EventFrame, Duration)> = Vec::new();
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    let mut latest_term = 0;
    let mut next = cluster
        .events
        .direct_get_first_for_subject(subject.clone())
        .await;
    // Bounded: the stream keeps at most `history_events_max` messages per room.
    for _ in 0..=cluster.events_per_room_max {
        let message = match next {
            Ok(m) => m,
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => break,
            Err(e) => return Err(Error::RoomUnavailable(format!("NATS: {e}"))),
        };
        let stream_seq = message.sequence;
        let header = |name: &str| message.headers.get(name).map(|v| v.as_str().to_owned());
        let their_epoch = header(HEADER_EPOCH).and_then(|e| u64::from_str_radix(&e, 16).ok());
        let seq = header(HEADER_SEQ).and_then(|s| s.parse::<u64>().ok());
        let term = header(HEADER_TERM)
            .and_then(|t| t.parse::<u64>().ok())
            .unwrap_or(0);
        if let (Some(e), Some(seq), Ok(bytes)) =
            (their_epoch, seq, Frame::try_from(message.payload.clone()))
        {
            if e == epoch && term >= latest_term {
                if term > latest_term {
                    // A new owner continues from its own reading of the stream: what a former
                    // owner published beyond it was never part of the room.
                    kept.retain(|(e, _)| e.seq < seq);
                }
                latest_term = term;
                if kept.last().is_some_and(|(last, _)| seq != last.seq + 1) {
                    kept.clear(); // only the latest gap-free run continues the room
                }
                let age_ns = (now_ns - message.time.unix_timestamp_nanos()).max(0);
                let age = Duration::from_nanos(u64::try_from(age_ns).unwrap_or(u64::MAX));
                kept.push((EventFrame { epoch, seq, bytes }, age));
            }
        }
        next = cluster
            .events
            .direct_get_next_for_subject(subject.clone(), Some(stream_seq + 1))
            .await;
    }
    Ok(kept)
}

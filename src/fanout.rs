//! Fan-out: how a room's numbered, encoded events reach its members.
//!
//! A room sequences and encodes each event once, then hands the frame to its [`RoomChannel`].
//! On one node the channel is a bounded broadcast ring ([`LocalFanout`]): every member's writer
//! reads it at its own pace, and one that falls a whole ring behind is a slow consumer. This trait
//! is the seam for scale-out: a NATS-backed fan-out returns channels that also publish each frame
//! to the room's subject and feed the local ring from it on the other nodes, while rooms and
//! connections stay as they are.

use tokio::sync::broadcast;

use crate::protocol::Frame;

/// Makes the event channel of each room.
pub trait Fanout: Send + Sync + 'static {
    /// The channel for a newly opened room, buffering at most `ring_frames` events per member.
    fn channel(&self, room: &str, ring_frames: usize) -> Box<dyn RoomChannel>;
}

/// One room's event channel.
pub trait RoomChannel: Send + Sync {
    /// Delivers one event to every subscriber. Called under the room's lock, in `seq` order, so it
    /// must not block.
    fn send(&self, frame: Frame);

    /// A new subscriber that receives every event sent after this call.
    fn subscribe(&self) -> broadcast::Receiver<Frame>;
}

/// Fan-out within this process.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalFanout;

struct LocalChannel {
    ring: broadcast::Sender<Frame>,
}

impl Fanout for LocalFanout {
    fn channel(&self, _room: &str, ring_frames: usize) -> Box<dyn RoomChannel> {
        assert!(ring_frames >= 1);
        let (ring, _) = broadcast::channel(ring_frames);
        Box::new(LocalChannel { ring })
    }
}

impl RoomChannel for LocalChannel {
    fn send(&self, frame: Frame) {
        // No subscribers is fine: an empty room still numbers its events.
        let _ = self.ring.send(frame);
    }

    fn subscribe(&self) -> broadcast::Receiver<Frame> {
        self.ring.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribers_see_later_frames_and_lag_is_reported() {
        let ch = LocalFanout.channel("r", 2);
        ch.send(Frame::from("before"));
        let mut rx = ch.subscribe();
        for i in 0..3 {
            ch.send(Frame::from(format!("f{i}")));
        }
        assert!(matches!(
            rx.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(1))
        ));
        assert_eq!(rx.try_recv().unwrap().as_str(), "f1");
    }
}

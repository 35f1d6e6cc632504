//! Sending a gift end to end: idempotency, the ledger commit, the room event, the streamer's
//! private `gift_received` with the split, metrics and the optional automatic thank-you.
//!
//! Order matters for money: the ledger commits first, and only then is the gift published and the
//! receipt sent. A retry of the same idempotency key that arrives while the first attempt is
//! still in flight on this node waits for that attempt and gets its result, room sequence number
//! included, rather than racing it to the ledger. Retries after it finished, after a reconnect or
//! after a restart are answered by the ledger itself from its idempotency record.

use std::future::Future;
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use tokio::sync::watch;

use crate::app::App;
use crate::error::{Error, Result};
use crate::gift::catalog::Sticker;
use crate::ledger::{GiftOutcome, GiftPurpose, GiftRequest, SplitPolicy};
use crate::metrics::OutKind;
use crate::protocol::server::encode;
use crate::protocol::server::{PaidView, ServerMessage};
use crate::question::pinned_secs;
use crate::room::Room;

/// The result of a gift as its sender sees it.
#[derive(Debug, Clone)]
pub struct GiftDone {
    pub outcome: GiftOutcome,
    /// For a paid question: the question it created (absent on a replay from the ledger).
    pub question_id: Option<u64>,
}

type Slot = (String, watch::Receiver<Option<Result<GiftDone>>>);

/// Gifts in flight on this node, by `(sender, key)`. An entry lives only while its first attempt
/// runs, so the map is bounded by the number of connections.
#[derive(Default)]
pub struct Inflight {
    slots: DashMap<(String, String), Slot>,
}

/// Removes the in-flight entry even if the leading attempt is cancelled mid-way.
struct SlotGuard<'a> {
    inflight: &'a Inflight,
    key: (String, String),
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        self.inflight.slots.remove(&self.key);
    }
}

impl Inflight {
    /// Runs `attempt` unless the same `(sender, key)` is already running, in which case it waits
    /// for that run and returns its result marked as replayed.
    async fn once<F>(&self, sender: &str, key: &str, digest: &str, attempt: F) -> Result<GiftDone>
    where
        F: Future<Output = Result<GiftDone>>,
    {
        let slot_key = (sender.to_owned(), key.to_owned());
        loop {
            let waiting = match self.slots.entry(slot_key.clone()) {
                Entry::Occupied(e) => {
                    let (their_digest, rx) = e.get();
                    if their_digest != digest {
                        return Err(Error::IdempotencyConflict(key.to_owned()));
                    }
                    rx.clone()
                }
                Entry::Vacant(v) => {
                    let (tx, rx) = watch::channel(None);
                    v.insert((digest.to_owned(), rx));
                    let _guard = SlotGuard {
                        inflight: self,
                        key: slot_key,
                    };
                    let result = attempt.await;
                    let _ = tx.send(Some(result.clone()));
                    return result;
                }
            };
            let mut rx = waiting;
            let finished = rx.wait_for(Option::is_some).await.map(|done| done.clone());
            match finished {
                Ok(done) => {
                    let mut result = done.expect("waited for Some");
                    if let Ok(d) = &mut result {
                        d.outcome.replayed = true;
                    }
                    return result;
                }
                // The leading attempt was cancelled before finishing; try again ourselves. The
                // ledger still guarantees at most one debit.
                Err(_) => continue,
            }
        }
    }
}

/// Charges `sender` for `sticker` in `room` and publishes the result.
pub async fn send(
    app: &App,
    room: &Arc<Room>,
    sender: &str,
    sticker: &Sticker,
    key: &str,
    question: Option<&str>,
) -> Result<GiftDone> {
    crate::ledger::check_key(key, "key")?;
    if room.streamer == sender {
        return Err(Error::SelfGift);
    }
    let purpose = match question {
        Some(text) => GiftPurpose::Question {
            text: text.to_owned(),
        },
        None => GiftPurpose::Sticker,
    };
    let req = GiftRequest {
        sender: sender.to_owned(),
        streamer: room.streamer.clone(),
        room: room.id.clone(),
        sticker: sticker.id.clone(),
        price_coins: sticker.price_coins,
        idempotency_key: key.to_owned(),
        purpose,
        policy: SplitPolicy {
            store_fees: app.config.split.store_fee_bps,
            streamer_share_bps: app.streamer_share_bps(&room.streamer),
            spend_order: app.config.split.spend_order.clone(),
        },
        caps: app.cap_policy(),
    };
    let digest = req.payload_digest();
    app.inflight
        .once(
            sender,
            key,
            &digest,
            commit_and_publish(app, room, sticker, req, question),
        )
        .await
}

async fn commit_and_publish(
    app: &App,
    room: &Arc<Room>,
    sticker: &Sticker,
    req: GiftRequest,
    question: Option<&str>,
) -> Result<GiftDone> {
    let mut outcome = app.ledger.gift(req).await?;
    if outcome.replayed {
        return Ok(GiftDone {
            outcome,
            question_id: None,
        });
    }
    let split = outcome.split.expect("a fresh gift carries its split");
    app.metrics.record_split(&split);
    let r = &mut outcome.receipt;
    // The gift is committed. If the room closed meanwhile the money stays moved (the viewer paid
    // while it was live) and the receipt simply has no sequence number.
    let (seq, question_id) = match question {
        None => (
            room.gift(
                &r.gift_id,
                &r.sender,
                &sticker.id,
                &sticker.name,
                r.price_coins,
            )
            .ok(),
            None,
        ),
        Some(text) => {
            let paid = PaidView {
                gift_id: r.gift_id.clone(),
                sticker: sticker.id.clone(),
                price_coins: r.price_coins,
            };
            let pin_secs = pinned_secs(r.price_coins, &app.config.rooms.pin_tiers);
            match room.ask(&r.sender, text, Some(paid), pin_secs) {
                Ok((view, seq)) => (Some(seq), Some(view.question_id)),
                Err(_) => (None, None),
            }
        }
    };
    r.seq = seq;
    let earned = encode(&ServerMessage::GiftReceived {
        room: &room.id,
        gift_id: &r.gift_id,
        from: &r.sender,
        sticker: &r.sticker,
        price_coins: r.price_coins,
        store_coins: r.store_coins,
        streamer_coins: r.streamer_coins,
        platform_coins: r.platform_coins,
        seq,
    });
    app.send_to_user(&room.streamer, OutKind::GiftReceived, &earned);
    if let Some(seq) = seq {
        app.ledger.note_gift_seq(&r.gift_id, seq);
        auto_thank(app, room, &r.gift_id, &r.sender, &sticker.name);
    }
    Ok(GiftDone {
        outcome,
        question_id,
    })
}

fn auto_thank(app: &App, room: &Room, gift_id: &str, sender: &str, sticker_name: &str) {
    let template = &app.config.rooms.auto_thanks;
    if template.is_empty() {
        return;
    }
    let text = template
        .replace("{sender}", sender)
        .replace("{sticker}", sticker_name);
    if room.thank(gift_id, &text).is_ok() {
        let frame = encode(&ServerMessage::Thanks {
            room: &room.id,
            gift_id,
            from: &room.streamer,
            text: &text,
        });
        app.send_to_user(sender, OutKind::Thanks, &frame);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::testing::{app, open_room};
    use crate::auth::Role;
    use crate::gift::Channel;
    use crate::ledger::TopUpRequest;
    use crate::outbox::{Outbound, Outbox};

    /// A room `r` of streamer `star` with `bob` as a member, and bob's outbox receiver.
    fn room(app: &App) -> (Arc<Room>, crate::outbox::OutboxReceiver) {
        let room = open_room(app, "r", "star");
        let (outbox, rx) = Outbox::new(64, 1 << 20);
        app.register_user("bob", 7, outbox.clone());
        room.join(7, Role::Viewer, "u", outbox).unwrap();
        (room, rx)
    }

    async fn fund(app: &App, coins: u64) {
        app.ledger
            .top_up(TopUpRequest {
                user: "bob".into(),
                channel: Channel::Web,
                coins,
                purchase_id: "p1".into(),
            })
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn concurrent_retries_share_one_attempt_and_one_debit() {
        let app = app(|_| {});
        let (room, _rx) = room(&app);
        fund(&app, 1_000).await;
        let coffee = app.catalog.get("coffee").unwrap().clone();
        let attempts = (0..8).map(|_| send(&app, &room, "bob", &coffee, "k1", None));
        let results = futures_util::future::join_all(attempts).await;
        let gift_ids: Vec<_> = results
            .iter()
            .map(|r| r.as_ref().unwrap().outcome.receipt.gift_id.clone())
            .collect();
        assert!(gift_ids.iter().all(|g| *g == gift_ids[0]));
        let fresh = results
            .iter()
            .filter(|r| !r.as_ref().unwrap().outcome.replayed)
            .count();
        assert_eq!(fresh, 1, "exactly one attempt applied the gift");
        assert_eq!(app.ledger.wallet("bob").await.unwrap().total_coins(), 900);
    }

    #[tokio::test]
    async fn the_same_key_with_another_sticker_is_a_conflict_and_charges_nothing() {
        let app = app(|_| {});
        let (room, _rx) = room(&app);
        fund(&app, 1_000).await;
        let coffee = app.catalog.get("coffee").unwrap().clone();
        let rose = app.catalog.get("rose").unwrap().clone();
        send(&app, &room, "bob", &coffee, "k1", None).await.unwrap();
        let e = send(&app, &room, "bob", &rose, "k1", None)
            .await
            .unwrap_err();
        assert_eq!(e, Error::IdempotencyConflict("k1".into()));
        assert_eq!(app.ledger.wallet("bob").await.unwrap().total_coins(), 900);
    }

    #[tokio::test]
    async fn the_streamer_gifting_their_own_room_is_refused_before_any_money_moves() {
        let app = app(|_| {});
        let (room, _rx) = room(&app);
        let coffee = app.catalog.get("coffee").unwrap().clone();
        let e = send(&app, &room, "star", &coffee, "k1", None)
            .await
            .unwrap_err();
        assert_eq!(e, Error::SelfGift);
    }

    #[tokio::test]
    async fn auto_thanks_name_the_sender_and_the_sticker_display_name() {
        let app = app(|c| c.rooms.auto_thanks = "Thank you {sender} for the {sticker}!".into());
        let (room, rx) = room(&app);
        fund(&app, 1_000).await;
        let coffee = app.catalog.get("coffee").unwrap().clone();
        send(&app, &room, "bob", &coffee, "k1", None).await.unwrap();
        let mut private = Vec::new();
        while let Some(item) = rx.try_recv() {
            if let Outbound::Frame(OutKind::Thanks, frame) = item {
                private.push(frame.as_str().to_owned());
            }
        }
        assert_eq!(private.len(), 1, "{private:?}");
        assert!(
            private[0].contains("Thank you bob for the Coffee!"),
            "{}",
            private[0]
        );
    }
}

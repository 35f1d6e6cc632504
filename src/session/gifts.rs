//! Money commands: `send_gift`, the streamer's `thank`, and `balance`. A paid question is a gift
//! too; it lives with the questions (`questions.rs`) and goes through the same `gifting::send`.

use futures_util::future::BoxFuture;
use serde_json::json;

use super::{ack, Reply, Session};
use crate::auth::Role;
use crate::error::Result;
use crate::gifting;
use crate::metrics::OutKind;
use crate::protocol::client::check_text;
use crate::protocol::server::{encode, ReceiptView, ServerMessage};

/// Default text of a streamer's thank-you when none is given.
const THANKS_TEXT_DEFAULT: &str = "Thank you!";

impl Session {
    /// Checks a `send_gift` and returns its commit as a future that needs nothing of the
    /// session, so the connection can read on while it runs (`session.rs`, gifts in flight). For
    /// a room another node runs, the future forwards `text` to it.
    pub(super) fn start_gift(
        &mut self,
        id: u64,
        sticker: String,
        key: String,
        text: &str,
    ) -> Result<BoxFuture<'static, Result<Reply>>> {
        if let Some(replica) = self.replica() {
            return Ok(self.forwarding(&replica, text));
        }
        self.gift(id, sticker, key)
    }

    /// Checks a `send_gift` in a room this node runs and returns its commit as a future.
    pub(super) fn gift(
        &mut self,
        id: u64,
        sticker: String,
        key: String,
    ) -> Result<BoxFuture<'static, Result<Reply>>> {
        self.who().require(Role::Viewer)?;
        let room = self.current_room()?;
        let sticker = self.sticker(sticker)?;
        let (app, user) = (self.app.clone(), self.who().user.clone());
        Ok(Box::pin(async move {
            let done = gifting::send(&app, &room, &user, &sticker, &key, None).await?;
            ack(
                id,
                &ReceiptView::new(&done.outcome.receipt, done.outcome.replayed),
            )
        }))
    }

    pub(super) fn handle_thank(
        &mut self,
        id: u64,
        gift_id: String,
        text: Option<String>,
    ) -> Result<Reply> {
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
        ack(id, &json!({ "gift_id": gift_id, "to": sender, "seq": seq }))
    }

    pub(super) async fn handle_balance(&mut self, id: u64) -> Result<Reply> {
        let user = self.who().user.clone();
        let wallet = self.app.ledger.wallet(&user).await?;
        let mut result = json!({
            "balance_coins": wallet.total_coins(),
            "ios_coins": wallet.ios_coins,
            "android_coins": wallet.android_coins,
            "web_coins": wallet.web_coins,
            "owed_coins": wallet.owed_coins,
        });
        if self.who().role == Role::Streamer {
            result["earnings_coins"] = self.app.ledger.earnings(&user).await?.into();
        }
        ack(id, &result)
    }
}

//! Question commands: `ask` (free, or paid with a sticker) and the streamer's `answer`.

use serde::Serialize;
use serde_json::json;

use super::{ack, Reply, Session};
use crate::auth::Role;
use crate::error::{Error, Result};
use crate::gifting;
use crate::metrics::OutKind;
use crate::protocol::client::check_text;
use crate::protocol::server::{encode, ReceiptView, ServerMessage};

impl Session {
    pub(super) fn handle_answer(&mut self, id: u64, question_id: u64, text: &str) -> Result<Reply> {
        let room = self.owned_room()?;
        check_text(text, self.app.config.rooms.answer_chars_max)?;
        let (question, seq) = room.answer(question_id, text)?;
        let private = encode(&ServerMessage::Answered {
            room: &room.id,
            question_id,
            text,
        });
        self.app
            .send_to_user(&question.from, OutKind::Answered, &private);
        ack(id, &json!({ "question_id": question_id, "seq": seq }))
    }

    pub(super) async fn handle_ask(
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
}

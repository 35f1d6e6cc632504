//! The wire protocol: JSON text frames, one message per frame.
//!
//! `protocol/client.rs` holds what clients send, `protocol/server.rs` what giftd sends. This file
//! holds the frame type shared by both and the decoder of untrusted input, which turns any bad
//! frame into an [`Error`] with a stable code instead of a panic or a dropped connection.
//! `docs/PROTOCOL.md` is the human description of the same thing and must stay in step.

pub mod client;
pub mod server;

use tokio_tungstenite::tungstenite::Utf8Bytes;

pub use client::{Command, Request};
pub use server::{Event, EventKind, ServerMessage};

use crate::error::{Error, Result};

/// An encoded frame, ready to write. It wraps `Bytes`, so a clone shares the buffer: a room event
/// is encoded once and every member's writer gets a clone.
pub type Frame = Utf8Bytes;

/// A numbered room event: its encoded frame and its position in the room. Relays and writers
/// check order and skip what a member already has by `seq` alone, without parsing the JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFrame {
    /// The room's incarnation; the wire shows it as 16 hex digits.
    pub epoch: u64,
    pub seq: u64,
    pub bytes: Frame,
}

/// An epoch as the wire shows it.
pub fn epoch_hex(epoch: u64) -> String {
    format!("{epoch:016x}")
}

/// Decodes one client text frame. Returns the request id (when one could be read) alongside the
/// result, so that errors can still be correlated by the client.
pub fn decode(text: &str) -> (Option<u64>, Result<Command>) {
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return (None, Err(Error::BadJson(e.to_string()))),
    };
    let serde_json::Value::Object(mut map) = value else {
        return (
            None,
            Err(Error::InvalidMessage(
                "a message must be a JSON object".into(),
            )),
        );
    };
    let id = match map.remove("id") {
        None => None,
        Some(v) => match v.as_u64() {
            Some(id) => Some(id),
            None => {
                return (
                    None,
                    Err(Error::InvalidMessage(
                        "`id` must be a non-negative integer".into(),
                    )),
                )
            }
        },
    };
    let kind = match map.remove("type") {
        Some(serde_json::Value::String(s)) => s,
        Some(_) => {
            return (
                id,
                Err(Error::InvalidMessage("`type` must be a string".into())),
            )
        }
        None => {
            return (
                id,
                Err(Error::InvalidMessage("missing field `type`".into())),
            )
        }
    };
    if id.is_none() {
        return (
            None,
            Err(Error::InvalidMessage("missing field `id`".into())),
        );
    }
    (id, client::parse(&kind, map))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_gift() {
        let (id, cmd) = decode(r#"{"type":"send_gift","id":7,"sticker":"rose","key":"k1"}"#);
        assert_eq!(id, Some(7));
        assert_eq!(
            cmd.unwrap(),
            Command::SendGift {
                sticker: "rose".into(),
                key: "k1".into()
            }
        );
    }

    #[test]
    fn bad_input_gets_stable_codes() {
        assert_eq!(decode("{nope").1.unwrap_err().code(), 11001);
        assert_eq!(decode("[1,2]").1.unwrap_err().code(), 11003);
        let (id, r) = decode(r#"{"type":"teleport","id":3}"#);
        assert_eq!((id, r.unwrap_err().code()), (Some(3), 11002));
        let (id, r) = decode(r#"{"type":"send_gift","id":4,"sticker":"rose"}"#);
        assert_eq!(id, Some(4));
        let e = r.unwrap_err();
        assert_eq!(e.code(), 11003);
        assert!(e.to_string().contains("key"), "{e}");
        assert_eq!(decode(r#"{"type":"ping"}"#).1.unwrap_err().code(), 11003);
        assert_eq!(
            decode(r#"{"type":"ping","id":-1}"#).1.unwrap_err().code(),
            11003
        );
        assert_eq!(
            decode(r#"{"type":"ping","id":1,"extra":true}"#)
                .1
                .unwrap_err()
                .code(),
            11003
        );
    }
}

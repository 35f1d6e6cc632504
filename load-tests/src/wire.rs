//! The client side of the giftd wire protocol: building client messages, decoding replies, and a
//! byte-level scanner for room events.
//!
//! Room events are the hot path of every scenario (a 10,000-viewer room turns one gift into
//! 10,000 frames to read), so they are not decoded with serde: [`scan_event`] pulls `room`, `seq`,
//! `kind` and `gift_id` out of the fixed field order the server writes
//! (`{"type":"event","room":..,"seq":..,"kind":..,...}`). Everything else (acks, errors,
//! welcome, private messages) is rare per connection and goes through serde_json.

use serde::Deserialize;

/// The fields of a room event that the load generator needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EventRef<'a> {
    pub(crate) room: &'a str,
    pub(crate) seq: u64,
    pub(crate) kind: &'a str,
    /// Present for `gift` events.
    pub(crate) gift_id: Option<&'a str>,
}

const EVENT_PREFIX: &str = r#"{"type":"event","#;

/// Scans a room event; `None` for anything that is not one.
pub(crate) fn scan_event(text: &str) -> Option<EventRef<'_>> {
    let rest = text.strip_prefix(EVENT_PREFIX)?;
    let (room, rest) = string_after(rest, r#""room":""#)?;
    let (seq, rest) = number_after(rest, r#""seq":"#)?;
    let (kind, rest) = string_after(rest, r#""kind":""#)?;
    let gift_id = if kind == "gift" {
        string_after(rest, r#""gift_id":""#).map(|(g, _)| g)
    } else {
        None
    };
    Some(EventRef {
        room,
        seq,
        kind,
        gift_id,
    })
}

/// The count of a `viewers` event (the room's viewers across the cluster), read after the
/// event's fixed leading fields.
pub(crate) fn viewer_count_of_event(text: &str) -> Option<u64> {
    let ev = scan_event(text)?;
    if ev.kind != "viewers" {
        return None;
    }
    number_after(text, r#""count":"#).map(|(n, _)| n)
}

/// The string value following `key` (which ends with the opening quote). Values the scanner reads
/// (room ids, kinds, gift ids) never contain escapes.
fn string_after<'a>(text: &'a str, key: &str) -> Option<(&'a str, &'a str)> {
    let start = text.find(key)? + key.len();
    let len = text[start..].find('"')?;
    Some((&text[start..start + len], &text[start + len + 1..]))
}

fn number_after<'a>(text: &'a str, key: &str) -> Option<(u64, &'a str)> {
    let start = text.find(key)? + key.len();
    let digits = text[start..].bytes().take_while(u8::is_ascii_digit).count();
    let n = text[start..start + digits].parse().ok()?;
    Some((n, &text[start + digits..]))
}

/// Any message that is not a room event, decoded loosely: only the fields the generator reads.
#[derive(Debug, Deserialize)]
pub(crate) struct Reply {
    #[serde(rename = "type")]
    pub(crate) kind: String,
    #[serde(default)]
    pub(crate) id: Option<u64>,
    #[serde(default)]
    pub(crate) result: Option<ReplyResult>,
    #[serde(default)]
    pub(crate) reason: Option<String>,
    #[serde(default)]
    pub(crate) message: Option<String>,
}

/// The union of the ack results the generator reads (snapshots, receipts, paid questions).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ReplyResult {
    #[serde(default)]
    pub(crate) seq: Option<u64>,
    #[serde(default)]
    pub(crate) gift_id: Option<String>,
    #[serde(default)]
    pub(crate) replayed: Option<bool>,
    /// Present on the ack of a paid question.
    #[serde(default)]
    pub(crate) receipt: Option<Box<ReplyResult>>,
}

pub(crate) fn parse_reply(text: &str) -> Option<Reply> {
    serde_json::from_str(text).ok()
}

/// The question id of a `question` event, which the streamer answers (rare, so decoded fully).
pub(crate) fn question_id_of_event(text: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    v.get("question_id")?.as_u64()
}

pub(crate) fn join(id: u64, room: &str) -> String {
    format!(r#"{{"type":"join","id":{id},"room":"{room}"}}"#)
}

pub(crate) fn open_room(id: u64, room: &str, title: &str) -> String {
    serde_json::json!({"type": "open_room", "id": id, "room": room, "title": title}).to_string()
}

pub(crate) fn close_room(id: u64) -> String {
    format!(r#"{{"type":"close_room","id":{id}}}"#)
}

pub(crate) fn send_gift(id: u64, sticker: &str, key: &str) -> String {
    format!(r#"{{"type":"send_gift","id":{id},"sticker":"{sticker}","key":"{key}"}}"#)
}

pub(crate) fn ask(id: u64, text: &str, paid: Option<(&str, &str)>) -> String {
    let mut v = serde_json::json!({"type": "ask", "id": id, "text": text});
    if let Some((sticker, key)) = paid {
        v["sticker"] = sticker.into();
        v["key"] = key.into();
    }
    v.to_string()
}

pub(crate) fn answer(id: u64, question_id: u64, text: &str) -> String {
    serde_json::json!({"type": "answer", "id": id, "question_id": question_id, "text": text})
        .to_string()
}

pub(crate) fn thank(id: u64, gift_id: &str) -> String {
    format!(r#"{{"type":"thank","id":{id},"gift_id":"{gift_id}","text":"thank you"}}"#)
}

pub(crate) fn set_goal(id: u64, target_coins: u64) -> String {
    format!(r#"{{"type":"set_goal","id":{id},"target_coins":{target_coins}}}"#)
}

/// A PK challenge to `room` (a load room id, which needs no escaping).
pub(crate) fn pk_challenge(id: u64, room: &str) -> String {
    format!(r#"{{"type":"pk_challenge","id":{id},"room":"{room}"}}"#)
}

pub(crate) fn pk_accept(id: u64, battle_id: &str) -> String {
    format!(r#"{{"type":"pk_accept","id":{id},"battle_id":"{battle_id}"}}"#)
}

/// The battle id and the challenged room of a `pk_*` event (rare: decoded with serde).
pub(crate) fn pk_of_event(text: &str) -> Option<(String, String)> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let battle = v.get("battle")?;
    Some((
        battle.get("battle_id")?.as_str()?.to_owned(),
        battle.get("opponent")?.get("room")?.as_str()?.to_owned(),
    ))
}

pub(crate) fn balance(id: u64) -> String {
    format!(r#"{{"type":"balance","id":{id}}}"#)
}

/// A `leaderboard` read of `board` around `user` (a user id, which needs no escaping).
pub(crate) fn leaderboard(id: u64, board: &str, user: &str) -> String {
    format!(r#"{{"type":"leaderboard","id":{id},"board":"{board}","around":"{user}"}}"#)
}

pub(crate) fn ping(id: u64) -> String {
    format!(r#"{{"type":"ping","id":{id}}}"#)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_viewer_counts() {
        let t =
            r#"{"type":"event","room":"r1","epoch":"e7","seq":9,"kind":"viewers","count":100000}"#;
        assert_eq!(viewer_count_of_event(t), Some(100_000));
        let gift =
            r#"{"type":"event","room":"r1","seq":17,"kind":"gift","gift_id":"g5","count":3}"#;
        assert_eq!(viewer_count_of_event(gift), None);
        assert_eq!(viewer_count_of_event(r#"{"type":"ack","id":1}"#), None);
    }

    #[test]
    fn scans_gift_events() {
        let t = r#"{"type":"event","room":"r1","seq":17,"kind":"gift","gift_id":"g5","from":"bob","sticker":"rose","sticker_name":"Rose","price_coins":1}"#;
        assert_eq!(
            scan_event(t),
            Some(EventRef {
                room: "r1",
                seq: 17,
                kind: "gift",
                gift_id: Some("g5")
            })
        );
    }

    #[test]
    fn scans_other_events_and_rejects_non_events() {
        let t = r#"{"type":"event","room":"r1","seq":9,"kind":"viewers","count":3}"#;
        let e = scan_event(t).unwrap();
        assert_eq!((e.seq, e.kind, e.gift_id), (9, "viewers", None));
        assert!(scan_event(r#"{"type":"ack","id":1,"result":{}}"#).is_none());
    }

    #[test]
    fn decodes_receipts_and_errors() {
        let r = parse_reply(r#"{"type":"ack","id":5,"result":{"gift_id":"g9","room":"r","sticker":"rose","price_coins":1,"funding":{"ios_coins":1},"seq":4,"replayed":false}}"#).unwrap();
        assert_eq!(r.id, Some(5));
        let res = r.result.unwrap();
        assert_eq!((res.gift_id.as_deref(), res.seq), (Some("g9"), Some(4)));
        let e = parse_reply(
            r#"{"type":"error","id":6,"code":14001,"reason":"insufficient_funds","message":"x"}"#,
        )
        .unwrap();
        assert_eq!(e.reason.as_deref(), Some("insufficient_funds"));
    }

    #[test]
    fn builds_valid_json() {
        for s in [
            join(1, "r"),
            close_room(2),
            send_gift(3, "rose", "k-1"),
            thank(4, "g1"),
            balance(5),
            ping(6),
            ask(7, "why \"so\"?", Some(("coffee", "k"))),
            answer(8, 1, "because"),
            open_room(9, "r", "Title"),
            set_goal(10, 500),
        ] {
            serde_json::from_str::<serde_json::Value>(&s).unwrap();
        }
    }
}

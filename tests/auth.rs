//! Authentication and roles: forged, expired and misused tokens are refused, and no money moves.

mod support;

use giftd::auth::{Claims, Role};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;
use support::{Client, TestServer};

fn sign(claims: &Claims, secret: &str) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn claims(user: &str, role: Role, exp_offset_secs: i64) -> Claims {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    Claims {
        sub: user.into(),
        role,
        aud: "giftd".into(),
        exp: (now + exp_offset_secs) as u64,
        iat: now as u64,
        room: None,
    }
}

fn b64(data: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = data.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (*b as u32) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// Every forged or stale token, each with the reason the server must give.
fn bad_tokens(server: &TestServer) -> Vec<(&'static str, String, u64)> {
    let secret = server.config.auth.jwt_secret.clone();
    let good = server.token("mallory", Role::Viewer);
    let payload = good.split('.').nth(1).unwrap().to_owned();
    let alg_none = format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), payload);
    let rs256 = format!(
        "{}.{}.{}",
        b64(r#"{"alg":"RS256","typ":"JWT"}"#),
        payload,
        good.split('.').nth(2).unwrap()
    );
    let tampered = {
        let other = sign(
            &claims("victim", Role::Viewer, 3600),
            "some-other-secret-entirely",
        );
        format!(
            "{}.{}.{}",
            good.split('.').next().unwrap(),
            other.split('.').nth(1).unwrap(),
            good.split('.').nth(2).unwrap()
        )
    };
    let mut wrong_aud = claims("mallory", Role::Viewer, 3600);
    wrong_aud.aud = "another-service".into();
    vec![
        ("alg none", alg_none, 2001),
        ("RS256 header", rs256, 2001),
        ("tampered payload", tampered, 2001),
        (
            "other secret",
            sign(
                &claims("mallory", Role::Viewer, 3600),
                "not-the-server-secret",
            ),
            2001,
        ),
        (
            "expired",
            sign(&claims("mallory", Role::Viewer, -600), &secret),
            2002,
        ),
        ("wrong audience", sign(&wrong_aud, &secret), 2001),
        ("garbage", "not.a.jwt".into(), 2001),
    ]
}

#[tokio::test]
async fn forged_tokens_are_refused_in_the_handshake() {
    let server = TestServer::start().await;
    for (what, token, code) in bad_tokens(&server) {
        let err = Client::connect(&server.url(), Some(&token))
            .await
            .err()
            .unwrap_or_else(|| panic!("{what} was accepted"));
        let tokio_tungstenite::tungstenite::Error::Http(response) = err else {
            panic!("{what}: {err}")
        };
        assert_eq!(response.status(), 401, "{what}");
        let body: serde_json::Value =
            serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
        assert_eq!(body["code"], code, "{what}: {body}");
    }
}

on_both_ledgers! {
    #[tokio::test]
    async fn forged_tokens_are_refused_by_message_and_the_connection_closes() {
        let server = TestServer::start().await;
        server.top_up("victim", "web", 100, "w").await;
        for (what, token, code) in bad_tokens(&server) {
            let mut c = server.anonymous().await;
            let e = c
                .request(json!({ "type": "auth", "token": token }))
                .await
                .unwrap_err();
            assert_eq!(e["code"], code, "{what}: {e}");
            assert_eq!(c.closed().await.code, 4002, "{what}");
        }
        assert_eq!(server.balance("victim").await, 100);
    }
}

#[tokio::test]
async fn commands_before_auth_are_refused_then_auth_by_message_works() {
    let server = TestServer::start().await;
    let mut c = server.anonymous().await;
    let e = c
        .request(json!({ "type": "join", "room": "r" }))
        .await
        .unwrap_err();
    assert_eq!(
        (e["code"].as_u64(), e["reason"].as_str()),
        (Some(1005), Some("not_authenticated"))
    );
    let ok = c
        .ok(json!({ "type": "auth", "token": server.token("bob", Role::Viewer) }))
        .await;
    assert_eq!(ok, json!({ "user": "bob", "role": "viewer" }));
    let e = c
        .request(json!({ "type": "auth", "token": server.token("bob", Role::Viewer) }))
        .await
        .unwrap_err();
    assert_eq!(e["reason"], "already_authenticated");
}

#[tokio::test]
async fn no_auth_within_the_handshake_timeout_closes_4001() {
    let server = TestServer::start_with(|c| c.server.handshake_timeout_ms = 200).await;
    let mut c = server.anonymous().await;
    assert_eq!(c.closed().await.code, 4001);
}

on_both_ledgers! {
    #[tokio::test]
    async fn roles_and_ownership_are_enforced() {
        let server = TestServer::start().await;
        server.top_up("bob", "web", 100, "w").await;
        let mut star = server.streamer("star").await;
        star.open_room("r", "t").await;
        let mut bob = server.viewer("bob").await;
        bob.join("r").await;
        let gift = bob.send_gift("clap", "k").await.unwrap();

        for cmd in [
            json!({ "type": "open_room", "room": "mine", "title": "t" }),
            json!({ "type": "close_room" }),
            json!({ "type": "thank", "gift_id": gift["gift_id"] }),
            json!({ "type": "answer", "question_id": 1, "text": "x" }),
        ] {
            let e = bob.request(cmd.clone()).await.unwrap_err();
            assert_eq!(
                (e["code"].as_u64(), e["reason"].as_str()),
                (Some(2003), Some("wrong_role")),
                "{cmd}"
            );
        }
        // Another streamer in the room is not its owner.
        let mut rival = server.streamer("rival").await;
        rival.join("r").await;
        for cmd in [
            json!({ "type": "close_room" }),
            json!({ "type": "thank", "gift_id": gift["gift_id"] }),
        ] {
            let e = rival.request(cmd.clone()).await.unwrap_err();
            assert_eq!(
                (e["code"].as_u64(), e["reason"].as_str()),
                (Some(2004), Some("not_room_owner")),
                "{cmd}"
            );
        }
        // Streamers do not send gifts.
        let e = star.send_gift("rose", "s").await.unwrap_err();
        assert_eq!(e["reason"], "wrong_role");
        assert_eq!(server.balance("bob").await, 90);
    }
}

#[tokio::test]
async fn a_room_scoped_token_works_only_in_its_room() {
    let server = TestServer::start().await;
    let mut a = server.streamer("sa").await;
    a.open_room("room-a", "t").await;
    let mut b = server.streamer("sb").await;
    b.open_room("room-b", "t").await;
    let token = giftd::auth::Authenticator::new(&server.config.auth)
        .mint("bob", Role::Viewer, Some("room-a"), 60)
        .unwrap();
    let mut bob = Client::connect(&server.url(), Some(&token)).await.unwrap();
    bob.next_of("welcome").await;
    let e = bob
        .request(json!({ "type": "join", "room": "room-b" }))
        .await
        .unwrap_err();
    assert_eq!(
        (e["code"].as_u64(), e["reason"].as_str()),
        (Some(2005), Some("token_room_mismatch"))
    );
    bob.join("room-a").await;
}

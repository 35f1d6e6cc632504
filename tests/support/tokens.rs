//! The token forger: JWTs with any header and any claims, signed with HMAC-SHA256 under any
//! secret whatever the header says. Written without giftd's or jsonwebtoken's code, so a bug in
//! the verifier cannot hide in the forger.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::TestServer;

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Base64url without padding, as JWTs use it.
pub fn b64url(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let inner: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let outer: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let mut h = Sha256::new();
    h.update(&inner);
    h.update(msg);
    let ih = h.finalize();
    let mut h = Sha256::new();
    h.update(&outer);
    h.update(ih);
    h.finalize().to_vec()
}

/// The claims giftd reads (`room` left out), issued now.
pub fn claims(sub: &str, role: &str, aud: &str, exp: u64) -> Value {
    json!({ "sub": sub, "role": role, "aud": aud, "exp": exp, "iat": now_secs() })
}

/// A JWT with any header, signed with HMAC-SHA256 under `secret` whatever the header says.
pub fn jwt(header: &Value, payload: &Value, secret: &[u8]) -> String {
    let signing = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(payload.to_string().as_bytes())
    );
    let sig = hmac_sha256(secret, signing.as_bytes());
    format!("{signing}.{}", b64url(&sig))
}

/// A well-formed HS256 token for `sub` with `role`, valid for 10 minutes, signed with `secret`.
pub fn hs256(sub: &str, role: &str, aud: &str, secret: &[u8]) -> String {
    jwt(
        &json!({ "alg": "HS256", "typ": "JWT" }),
        &claims(sub, role, aud, now_secs() + 600),
        secret,
    )
}

/// A token the server must refuse, with the error it must give.
pub struct Forged {
    /// What is wrong with it, for assertion messages.
    pub what: &'static str,
    pub token: String,
    /// The error reason: `invalid_token` or `token_expired`.
    pub reason: &'static str,
    /// The error code: 12001 (`invalid_token`) or 12002 (`token_expired`).
    pub code: u64,
}

/// Forged or unacceptable tokens for `server`, for user `mallory` (one tampered token names
/// `victim`), each with the error giftd must give.
pub fn forged_tokens(server: &TestServer) -> Vec<Forged> {
    let secret = server.config.auth.jwt_secret.as_bytes();
    let aud = server.config.auth.jwt_audience.as_str();
    let good = claims("mallory", "viewer", aud, now_secs() + 600);
    let hs = json!({ "alg": "HS256", "typ": "JWT" });
    let valid = jwt(&hs, &good, secret);
    let parts: Vec<&str> = valid.split('.').collect();
    let as_streamer = claims("mallory", "streamer", aud, now_secs() + 600);
    let as_victim = claims("victim", "viewer", aud, now_secs() + 600);
    let invalid = |what, token| Forged {
        what,
        token,
        reason: "invalid_token",
        code: 12001,
    };
    vec![
        invalid(
            "alg none, no signature",
            format!("{}.{}.", b64url(br#"{"alg":"none","typ":"JWT"}"#), parts[1]),
        ),
        invalid(
            "alg none with the valid signature",
            format!(
                "{}.{}.{}",
                b64url(br#"{"alg":"none","typ":"JWT"}"#),
                parts[1],
                parts[2]
            ),
        ),
        invalid(
            "RS256 header signed with the HMAC secret",
            jwt(&json!({ "alg": "RS256", "typ": "JWT" }), &good, secret),
        ),
        invalid(
            "RS256 header with the valid HS256 signature",
            format!(
                "{}.{}.{}",
                b64url(br#"{"alg":"RS256","typ":"JWT"}"#),
                parts[1],
                parts[2]
            ),
        ),
        invalid(
            "RS256 token with an RSA-sized signature",
            format!(
                "{}.{}.{}",
                b64url(br#"{"alg":"RS256","typ":"JWT","kid":"k1"}"#),
                parts[1],
                b64url(&[0xa5; 256])
            ),
        ),
        invalid(
            "HS512 header signed with the secret",
            jwt(&json!({ "alg": "HS512", "typ": "JWT" }), &good, secret),
        ),
        Forged {
            what: "expired",
            token: jwt(
                &hs,
                &claims("mallory", "viewer", aud, now_secs() - 3600),
                secret,
            ),
            reason: "token_expired",
            code: 12002,
        },
        invalid(
            "tampered payload (role raised to streamer)",
            format!(
                "{}.{}.{}",
                parts[0],
                b64url(as_streamer.to_string().as_bytes()),
                parts[2]
            ),
        ),
        invalid(
            "tampered payload (subject changed to victim)",
            format!(
                "{}.{}.{}",
                parts[0],
                b64url(as_victim.to_string().as_bytes()),
                parts[2]
            ),
        ),
        invalid(
            "wrong audience",
            jwt(
                &hs,
                &claims("mallory", "viewer", "elsewhere", now_secs() + 600),
                secret,
            ),
        ),
        invalid(
            "signed with another secret",
            jwt(&hs, &good, b"not-the-server-secret-at-all"),
        ),
        invalid(
            "no exp claim",
            jwt(
                &hs,
                &json!({ "sub": "mallory", "role": "viewer", "aud": aud }),
                secret,
            ),
        ),
        invalid(
            "user id with a path in it",
            jwt(
                &hs,
                &claims("../../etc/passwd", "viewer", aud, now_secs() + 600),
                secret,
            ),
        ),
        invalid("garbage", "not.a.jwt".to_owned()),
        invalid("huge", "a".repeat(6000)),
    ]
}

//! Authentication: HS256 JWTs naming a user and a role.
//!
//! Only HS256 is accepted, so `alg: none` and RS/HS confusion fail at the header. `exp`, `sub`
//! and `aud` are required. A token may also carry a `room` claim, which confines it to that room.
//! `giftd token` mints tokens with [`Authenticator::mint`] for development and tests.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::AuthConfig;
use crate::error::{Error, Result};

/// Longest user id accepted, in bytes.
pub const USER_ID_BYTES_MAX: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Streamer,
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Streamer => "streamer",
            Role::Viewer => "viewer",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    pub aud: String,
    pub exp: u64,
    #[serde(default)]
    pub iat: u64,
    /// If present, the token is valid only in this room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
}

/// An authenticated user, as the rest of giftd sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub role: Role,
    /// A `Box<str>`, not a `String`: the identity is in every connection's task, and a room
    /// scope is never grown.
    pub room: Option<Box<str>>,
}

impl Identity {
    pub fn require(&self, role: Role) -> Result<()> {
        if self.role == role {
            Ok(())
        } else {
            Err(Error::WrongRole {
                have: self.role.as_str(),
                need: role.as_str(),
            })
        }
    }

    /// Rejects use of a room-scoped token in another room.
    pub fn check_room(&self, room: &str) -> Result<()> {
        match &self.room {
            Some(scoped) if &**scoped != room => Err(Error::TokenRoomMismatch),
            _ => Ok(()),
        }
    }
}

pub struct Authenticator {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
    audience: String,
}

impl Authenticator {
    pub fn new(config: &AuthConfig) -> Authenticator {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.set_audience(&[&config.jwt_audience]);
        validation.set_required_spec_claims(&["exp", "sub", "aud"]);
        validation.leeway = config.leeway_secs;
        Authenticator {
            decoding: DecodingKey::from_secret(config.jwt_secret.as_bytes()),
            encoding: EncodingKey::from_secret(config.jwt_secret.as_bytes()),
            validation,
            audience: config.jwt_audience.clone(),
        }
    }

    pub fn verify(&self, token: &str) -> Result<Identity> {
        if token.len() > crate::bounds::TOKEN_BYTES_MAX {
            return Err(Error::InvalidToken("token too long".into()));
        }
        let data =
            decode::<Claims>(token, &self.decoding, &self.validation).map_err(|e| {
                match e.kind() {
                    ErrorKind::ExpiredSignature => Error::TokenExpired,
                    ErrorKind::InvalidSignature => Error::InvalidToken("bad signature".into()),
                    ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                        Error::InvalidToken("algorithm not allowed; only HS256".into())
                    }
                    ErrorKind::InvalidAudience => Error::InvalidToken("wrong audience".into()),
                    ErrorKind::MissingRequiredClaim(c) => {
                        Error::InvalidToken(format!("missing claim `{c}`"))
                    }
                    _ => Error::InvalidToken("malformed token".into()),
                }
            })?;
        let c = data.claims;
        check_user_id(&c.sub)?;
        Ok(Identity {
            user: c.sub,
            role: c.role,
            room: c.room.map(String::into_boxed_str),
        })
    }

    /// Mints a token valid for `ttl_secs` from now.
    pub fn mint(
        &self,
        user: &str,
        role: Role,
        room: Option<&str>,
        ttl_secs: u64,
    ) -> Result<String> {
        check_user_id(user)?;
        let now = crate::ledger::now_ms() / 1000;
        let claims = Claims {
            sub: user.to_owned(),
            role,
            aud: self.audience.clone(),
            exp: now + ttl_secs,
            iat: now,
            room: room.map(str::to_owned),
        };
        encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| Error::Internal(format!("minting token: {e}")))
    }
}

/// User ids are `[A-Za-z0-9_.-]{1,64}`: they appear in account names and logs.
pub fn check_user_id(user: &str) -> Result<()> {
    let ok = !user.is_empty()
        && user.len() <= USER_ID_BYTES_MAX
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidToken(format!(
            "user id must match [A-Za-z0-9_.-]{{1,{USER_ID_BYTES_MAX}}}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Authenticator {
        Authenticator::new(&AuthConfig::default())
    }

    #[test]
    fn mint_then_verify() {
        let a = auth();
        let t = a.mint("alice", Role::Viewer, Some("r1"), 60).unwrap();
        let id = a.verify(&t).unwrap();
        assert_eq!(
            id,
            Identity {
                user: "alice".into(),
                role: Role::Viewer,
                room: Some("r1".into())
            }
        );
        assert_eq!(id.check_room("r2"), Err(Error::TokenRoomMismatch));
        assert_eq!(
            id.require(Role::Streamer),
            Err(Error::WrongRole {
                have: "viewer",
                need: "streamer"
            })
        );
    }

    #[test]
    fn rejects_forgeries() {
        let a = auth();
        let t = a.mint("alice", Role::Viewer, None, 60).unwrap();
        let mut parts: Vec<&str> = t.split('.').collect();
        // alg none, with the signature dropped.
        let none_header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";
        parts[0] = none_header;
        let forged = format!("{}.{}.", parts[0], parts[1]);
        assert!(matches!(a.verify(&forged), Err(Error::InvalidToken(_))));
        // Tampered payload with the original signature.
        let t2 = a.mint("mallory", Role::Streamer, None, 60).unwrap();
        let p2: Vec<&str> = t2.split('.').collect();
        let spliced = format!("{}.{}.{}", p2[0], p2[1], t.split('.').nth(2).unwrap());
        assert_eq!(
            a.verify(&spliced),
            Err(Error::InvalidToken("bad signature".into()))
        );
        // Another secret.
        let other = Authenticator::new(&AuthConfig {
            jwt_secret: "another-secret-of-length".into(),
            ..AuthConfig::default()
        });
        assert!(a
            .verify(&other.mint("alice", Role::Viewer, None, 60).unwrap())
            .is_err());
        // Another audience.
        let other = Authenticator::new(&AuthConfig {
            jwt_audience: "elsewhere".into(),
            ..AuthConfig::default()
        });
        assert_eq!(
            a.verify(&other.mint("alice", Role::Viewer, None, 60).unwrap()),
            Err(Error::InvalidToken("wrong audience".into()))
        );
    }

    #[test]
    fn rejects_expired() {
        let a = auth();
        let now = crate::ledger::now_ms() / 1000;
        let claims = Claims {
            sub: "a".into(),
            role: Role::Viewer,
            aud: "giftd".into(),
            exp: now - 60,
            iat: now - 120,
            room: None,
        };
        let t = encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(AuthConfig::default().jwt_secret.as_bytes()),
        )
        .unwrap();
        assert_eq!(a.verify(&t), Err(Error::TokenExpired));
    }
}

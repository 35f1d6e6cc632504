//! Client tokens, minted in-process with giftd's own [`Authenticator`], so the generator and the
//! server agree on claims by construction.

use anyhow::Result;
use giftd::auth::{Authenticator, Role};
use giftd::config::AuthConfig;

/// Lifetime of minted tokens: longer than any run.
const TOKEN_TTL_SECS: u64 = 6 * 3600;

pub(crate) struct Minter(Authenticator);

impl Minter {
    pub(crate) fn new(jwt_secret: &str) -> Minter {
        Minter(Authenticator::new(&AuthConfig {
            jwt_secret: jwt_secret.to_owned(),
            ..AuthConfig::default()
        }))
    }

    pub(crate) fn mint(&self, user: &str, role: Role) -> Result<String> {
        Ok(self.0.mint(user, role, None, TOKEN_TTL_SECS)?)
    }
}

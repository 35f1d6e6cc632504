//! Tokens: whatever arrives in `Authorization`, `?token=` or an `auth` message goes through
//! `Authenticator::verify`. It must never panic, and must accept only what carries a valid
//! HS256 signature with the server's secret (which the fuzzer cannot know, except through the
//! seed tokens in the corpus, which it can only mutate).
#![no_main]

use std::sync::OnceLock;

use giftd::auth::Authenticator;
use giftd::config::AuthConfig;
use libfuzzer_sys::fuzz_target;

fn auth() -> &'static Authenticator {
    static AUTH: OnceLock<Authenticator> = OnceLock::new();
    // The corpus seeds are minted with the development secret and an `exp` far in the future.
    AUTH.get_or_init(|| Authenticator::new(&AuthConfig::default()))
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    match auth().verify(token) {
        Ok(identity) => {
            // Whatever passed must satisfy the user id rule the rest of giftd relies on.
            assert!(
                giftd::auth::check_user_id(&identity.user).is_ok(),
                "{identity:?}"
            );
            assert!(token.len() <= 4096);
        }
        Err(e) => {
            assert!(
                matches!(e.reason(), "invalid_token" | "token_expired"),
                "{e:?} for {token:?}"
            );
        }
    }
});

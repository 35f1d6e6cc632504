//! Token buckets for client commands, per connection and per user.
//!
//! A command spends one token from its class (gifts, questions, other commands) in both the
//! connection's bucket and the user's shared bucket. It is admitted only when both have a token,
//! and is checked before any work or money moves. Time comes from `tokio::time`, so tests can
//! pause the clock.

use tokio::time::Instant;

use crate::config::{Rate, RateSet};
use crate::error::{Error, Result};
use crate::protocol::client::RateClass;

#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
    rate: Rate,
}

impl TokenBucket {
    pub fn new(rate: Rate) -> TokenBucket {
        TokenBucket {
            tokens: rate.burst as f64,
            last: Instant::now(),
            rate,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate.per_sec).min(self.rate.burst as f64);
        self.last = now;
    }

    fn has_token(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= 1.0
    }

    fn take(&mut self) {
        debug_assert!(self.tokens >= 1.0);
        self.tokens -= 1.0;
    }
}

/// One bucket per rate class.
#[derive(Debug, Clone)]
pub struct Buckets {
    gifts: TokenBucket,
    questions: TokenBucket,
    commands: TokenBucket,
}

impl Buckets {
    pub fn new(set: &RateSet) -> Buckets {
        Buckets {
            gifts: TokenBucket::new(set.gifts),
            questions: TokenBucket::new(set.questions),
            commands: TokenBucket::new(set.commands),
        }
    }

    fn bucket(&mut self, class: RateClass) -> &mut TokenBucket {
        match class {
            RateClass::Gifts => &mut self.gifts,
            RateClass::Questions => &mut self.questions,
            RateClass::Commands => &mut self.commands,
        }
    }
}

/// Admits one command of `class` if both the connection's and the user's buckets allow it, and
/// spends a token from each.
pub fn admit(connection: &mut Buckets, user: &mut Buckets, class: RateClass) -> Result<()> {
    let now = Instant::now();
    let (c, u) = (connection.bucket(class), user.bucket(class));
    if c.has_token(now) && u.has_token(now) {
        c.take();
        u.take();
        Ok(())
    } else {
        Err(Error::RateLimited(match class {
            RateClass::Gifts => "gifts",
            RateClass::Questions => "questions",
            RateClass::Commands => "commands",
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(per_sec: f64, burst: u32) -> RateSet {
        let r = Rate { per_sec, burst };
        RateSet {
            gifts: r,
            questions: r,
            commands: r,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn burst_then_refill() {
        let mut conn = Buckets::new(&set(2.0, 3));
        let mut user = Buckets::new(&set(100.0, 100));
        for _ in 0..3 {
            admit(&mut conn, &mut user, RateClass::Gifts).unwrap();
        }
        assert_eq!(
            admit(&mut conn, &mut user, RateClass::Gifts),
            Err(Error::RateLimited("gifts"))
        );
        // Other classes have their own buckets.
        admit(&mut conn, &mut user, RateClass::Commands).unwrap();
        tokio::time::advance(std::time::Duration::from_millis(500)).await;
        admit(&mut conn, &mut user, RateClass::Gifts).unwrap();
        assert!(admit(&mut conn, &mut user, RateClass::Gifts).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn the_user_bucket_is_shared_and_a_refusal_spends_nothing() {
        let mut a = Buckets::new(&set(100.0, 100));
        let mut b = Buckets::new(&set(100.0, 100));
        let mut user = Buckets::new(&set(1.0, 2));
        admit(&mut a, &mut user, RateClass::Questions).unwrap();
        admit(&mut b, &mut user, RateClass::Questions).unwrap();
        assert!(admit(&mut a, &mut user, RateClass::Questions).is_err());
        assert!(a.questions.tokens >= 99.0 - 1e-9);
    }
}

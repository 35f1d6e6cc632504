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

/// The token buckets of one connection or one user: one per rate class, refilled together. The
/// rates live in config and are passed in, so each set costs 40 bytes, paid per connection and
/// per user.
#[derive(Debug, Clone)]
pub struct Buckets {
    tokens: [f64; 3],
    last: Instant,
}

fn index(class: RateClass) -> usize {
    match class {
        RateClass::Gifts => 0,
        RateClass::Questions => 1,
        RateClass::Commands => 2,
    }
}

fn rate(set: &RateSet, class: RateClass) -> Rate {
    match class {
        RateClass::Gifts => set.gifts,
        RateClass::Questions => set.questions,
        RateClass::Commands => set.commands,
    }
}

impl Buckets {
    /// Full buckets at `set`'s bursts.
    pub fn new(set: &RateSet) -> Buckets {
        let burst = |c| rate(set, c).burst as f64;
        Buckets {
            tokens: [
                burst(RateClass::Gifts),
                burst(RateClass::Questions),
                burst(RateClass::Commands),
            ],
            last: Instant::now(),
        }
    }

    fn refill(&mut self, set: &RateSet, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        for class in [RateClass::Gifts, RateClass::Questions, RateClass::Commands] {
            let r = rate(set, class);
            let t = &mut self.tokens[index(class)];
            *t = (*t + elapsed * r.per_sec).min(r.burst as f64);
        }
        self.last = now;
    }
}

/// Admits one command of `class` if both the connection's and the user's buckets allow it, and
/// spends a token from each.
pub fn admit(
    connection: (&mut Buckets, &RateSet),
    user: (&mut Buckets, &RateSet),
    class: RateClass,
) -> Result<()> {
    let now = Instant::now();
    let ((c, c_rates), (u, u_rates)) = (connection, user);
    c.refill(c_rates, now);
    u.refill(u_rates, now);
    let i = index(class);
    if c.tokens[i] >= 1.0 && u.tokens[i] >= 1.0 {
        c.tokens[i] -= 1.0;
        u.tokens[i] -= 1.0;
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
        let (conn_rates, user_rates) = (set(2.0, 3), set(100.0, 100));
        let mut conn = Buckets::new(&conn_rates);
        let mut user = Buckets::new(&user_rates);
        let mut go = |class| admit((&mut conn, &conn_rates), (&mut user, &user_rates), class);
        for _ in 0..3 {
            go(RateClass::Gifts).unwrap();
        }
        assert_eq!(go(RateClass::Gifts), Err(Error::RateLimited("gifts")));
        // Other classes have their own buckets.
        go(RateClass::Commands).unwrap();
        tokio::time::advance(std::time::Duration::from_millis(500)).await;
        let mut go = |class| admit((&mut conn, &conn_rates), (&mut user, &user_rates), class);
        go(RateClass::Gifts).unwrap();
        assert!(go(RateClass::Gifts).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn the_user_bucket_is_shared_and_a_refusal_spends_nothing() {
        let (conn_rates, user_rates) = (set(100.0, 100), set(1.0, 2));
        let mut a = Buckets::new(&conn_rates);
        let mut b = Buckets::new(&conn_rates);
        let mut user = Buckets::new(&user_rates);
        let q = RateClass::Questions;
        admit((&mut a, &conn_rates), (&mut user, &user_rates), q).unwrap();
        admit((&mut b, &conn_rates), (&mut user, &user_rates), q).unwrap();
        assert!(admit((&mut a, &conn_rates), (&mut user, &user_rates), q).is_err());
        assert!(a.tokens[index(q)] >= 99.0 - 1e-9);
    }
}

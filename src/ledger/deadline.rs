//! Deadlines on ledger calls, and why a caller that gave up is never charged.
//!
//! Every write travels to a backend's writer with a [`Ticket`]. The ticket has three states:
//! queued, started and abandoned, and both sides move it with one compare-and-swap, so exactly
//! one of two things happens:
//!
//! - **The caller's deadline (`ledger.call_timeout_ms`) passes while the request is still
//!   queued.** The caller abandons the ticket and answers `ledger_unavailable` ("nothing was
//!   charged"). The writer checks the ticket before it applies a request and skips an abandoned
//!   one, so it is never applied: the answer is true.
//! - **The writer started the request first.** From then on the caller no longer times out: it
//!   waits for the result of the commit the request is in, whether success or failure, so it is
//!   never told "failed" about a gift that then commits. The writer bounds its own work (SQLite's
//!   busy timeout; PostgreSQL's statement timeout, and a bounded check of a commit whose answer
//!   was lost), so this wait is bounded too. Should that check itself fail, the caller gets
//!   `ledger_unavailable` although the commit may have landed; a retry with the same idempotency
//!   key then returns the committed receipt or applies the gift once, so no key is ever charged
//!   twice and no client that retries loses a receipt.
//!
//! Reads have no side effects and simply time out.

use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::error::{Error, Result};

const QUEUED: u8 = 0;
const STARTED: u8 = 1;
const ABANDONED: u8 = 2;

/// Shared between a caller and the writer; see the module doc.
#[derive(Debug, Clone, Default)]
pub struct Ticket(Arc<AtomicU8>);

impl Ticket {
    /// The writer's side: true if the request may be applied (the caller is still waiting and
    /// will wait for the outcome), false if the caller gave up and it must be skipped.
    pub fn start(&self) -> bool {
        self.0
            .compare_exchange(QUEUED, STARTED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
            || self.0.load(Ordering::Acquire) == STARTED
    }

    /// The caller's side: true if the request had not started and now never will.
    fn abandon(&self) -> bool {
        self.0
            .compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

fn timed_out(timeout: Duration) -> Error {
    Error::LedgerUnavailable(format!(
        "no answer within {} ms (ledger.call_timeout_ms)",
        timeout.as_millis()
    ))
}

/// Sends a write with `send` and waits for its reply under `timeout`, as the module doc says.
/// `send` gets the ticket and the reply sender; it fails with the error to return (a closed or
/// full queue).
pub async fn write<T, S, F>(timeout: Duration, send: S) -> Result<T>
where
    S: FnOnce(Ticket, oneshot::Sender<Result<T>>) -> F,
    F: Future<Output = Result<()>>,
{
    let ticket = Ticket::default();
    let (reply, mut rx) = oneshot::channel();
    let deadline = tokio::time::Instant::now() + timeout;
    match tokio::time::timeout_at(deadline, send(ticket.clone(), reply)).await {
        Ok(sent) => sent?,
        // Not even queued in time (the queue stayed full): nothing can have been applied.
        Err(_) => return Err(timed_out(timeout)),
    }
    match tokio::time::timeout_at(deadline, &mut rx).await {
        Ok(answer) => answer.map_err(|_| Error::ShuttingDown)?,
        Err(_) if ticket.abandon() => Err(timed_out(timeout)),
        Err(_) => rx.await.map_err(|_| Error::ShuttingDown)?,
    }
}

/// A read under `timeout`.
pub async fn read<T>(timeout: Duration, read: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or_else(|_| Err(timed_out(timeout)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_request_never_started_is_abandoned_and_never_applied() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let result = write::<u32, _, _>(Duration::from_millis(100), |ticket, reply| {
            let tx = tx.clone();
            async move {
                tx.send((ticket, reply)).await.unwrap();
                Ok(())
            }
        })
        .await;
        assert!(matches!(result, Err(Error::LedgerUnavailable(_))));
        // The writer comes late: it must skip the request.
        let (ticket, _reply) = rx.recv().await.unwrap();
        assert!(!ticket.start());
    }

    #[tokio::test(start_paused = true)]
    async fn a_started_request_is_answered_by_its_result_even_past_the_deadline() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let writer = tokio::spawn(async move {
            let (ticket, reply): (Ticket, oneshot::Sender<Result<u32>>) = rx.recv().await.unwrap();
            assert!(ticket.start());
            tokio::time::sleep(Duration::from_millis(500)).await;
            reply.send(Ok(7)).unwrap();
        });
        let result = write(Duration::from_millis(100), |ticket, reply| async move {
            tx.send((ticket, reply)).await.unwrap();
            Ok(())
        })
        .await;
        assert_eq!(result, Ok(7));
        writer.await.unwrap();
    }
}

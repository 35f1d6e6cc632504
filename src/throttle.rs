//! An inbound byte budget for each WebSocket: a token bucket on the bytes read from its socket.
//!
//! Message and frame size limits bound memory, but not work: a client can stream endless empty
//! continuation frames or pings, each cheap on its own, and keep a reader (and, for pings, a
//! writer) busy forever. Throttling the socket's reads bounds what any one connection can make
//! the server do, whatever the framing. Honest clients send a few small commands a second and
//! never notice it.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Wraps a socket so that reads stay within `bytes_per_sec`, with bursts up to `burst_bytes`.
pub struct Throttled<S> {
    inner: S,
    /// When the budget is whole again. Reading n bytes moves it n byte-times later, from no
    /// earlier than now (a token bucket kept as one instant: the generic cell rate algorithm).
    full_at: Instant,
    secs_per_byte: f64,
    /// How far ahead of now `full_at` may be while one byte of budget is left.
    debt_secs_max: f64,
    /// Allocated only while the connection is over its budget.
    wait: Option<Pin<Box<Sleep>>>,
}

impl<S> Throttled<S> {
    pub fn new(inner: S, bytes_per_sec: u64, burst_bytes: u64) -> Throttled<S> {
        assert!(bytes_per_sec > 0 && burst_bytes > 0);
        let secs_per_byte = 1.0 / bytes_per_sec as f64;
        Throttled {
            inner,
            full_at: Instant::now(),
            secs_per_byte,
            debt_secs_max: (burst_bytes - 1) as f64 * secs_per_byte,
            wait: None,
        }
    }

    /// From when a byte of budget is left.
    fn ready_at(&self) -> Instant {
        let debt_max = Duration::from_secs_f64(self.debt_secs_max);
        self.full_at.checked_sub(debt_max).unwrap_or(self.full_at)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Throttled<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let now = loop {
            if let Some(wait) = this.wait.as_mut() {
                ready!(wait.as_mut().poll(cx));
                this.wait = None;
            }
            let now = Instant::now();
            let ready_at = this.ready_at();
            if now >= ready_at {
                break now;
            }
            this.wait = Some(Box::pin(tokio::time::sleep_until(ready_at)));
        };
        // A read may overdraw the budget by up to one buffer; the debt delays the next read, so
        // the average rate holds.
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let read = (buf.filled().len() - before) as f64;
        this.full_at = this.full_at.max(now) + Duration::from_secs_f64(read * this.secs_per_byte);
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn reads_stay_within_the_budget() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        client.write_all(&vec![7u8; 10_000]).await.unwrap();
        let mut throttled = Throttled::new(server, 1_000, 2_000);
        let mut buf = vec![0u8; 10_000];
        // Reads of 500 bytes, like a WebSocket's small read buffer.
        let started = Instant::now();
        let mut total = 0;
        while total < 10_000 {
            let end = (total + 500).min(buf.len());
            total += throttled.read(&mut buf[total..end]).await.unwrap();
        }
        // 2,000 bytes of burst, then 8,000 at 1,000 bytes per second, less the last read's
        // overdraft (at most one 500-byte read).
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(7_400), "{elapsed:?}");
        assert!(elapsed <= Duration::from_millis(8_200), "{elapsed:?}");
    }
}

//! The TCP socket under a client connection: how much the kernel may buffer for it, and how it
//! ends when its client stops reading.
//!
//! Left alone, Linux grows a socket's send buffer to several megabytes for a client that does not
//! read, so a stuck viewer holds megabytes of kernel memory and takes tens of seconds to notice.
//! giftd fixes the send buffer at `server.socket_send_buffer_bytes` when it accepts a socket, so
//! the writer stalls, and the slow-consumer rules (`connection.rs`) apply, after a bounded number
//! of bytes.
//!
//! It also turns on TCP keepalive (`server.tcp_keepalive_secs`): a phone that vanished without
//! closing its connection sends nothing and, in a quiet room, is sent nothing, so without probes
//! its connection and file descriptor would stay forever. The kernel probes after that many idle
//! seconds, then every [`KEEPALIVE_INTERVAL`], and resets the connection after
//! [`KEEPALIVE_RETRIES`] unanswered probes.
//!
//! A connection that must close sends a close frame after the frame in progress. If the client
//! does not read even that within `server.close_timeout_ms`, the socket is reset (RST) rather
//! than closed (FIN): a plain FIN would end the byte stream wherever the kernel had got to,
//! possibly inside a frame, which a client could mistake for a clean end. A reset is an
//! unmistakable abnormal closure.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Time between keepalive probes once a connection has been idle for `tcp_keepalive_secs`.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Unanswered keepalive probes after which the kernel resets the connection.
pub const KEEPALIVE_RETRIES: u32 = 3;

/// How giftd sets up each client socket, from `server.*`.
#[derive(Debug, Clone, Copy)]
pub struct SocketOptions {
    pub send_buffer_bytes: usize,
    /// Idle time before keepalive probes; `None` turns keepalive off.
    pub keepalive_idle: Option<Duration>,
}

/// An accepted client socket.
pub struct ClientSocket {
    tcp: TcpStream,
    reset: ResetOnDrop,
}

/// Asks that a [`ClientSocket`] be reset instead of closed when it is dropped. Cheap to clone;
/// a handle that belongs to no socket (a connection driven by channels in a test) does nothing.
#[derive(Clone, Default)]
pub struct ResetOnDrop(Arc<AtomicBool>);

impl ResetOnDrop {
    pub fn request(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_requested(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

impl ClientSocket {
    /// Wraps an accepted socket, bounds its kernel send buffer to `send_buffer_bytes` (Linux
    /// doubles the value for its own bookkeeping, so the payload it holds is at most about that)
    /// and turns on keepalive.
    pub fn new(tcp: TcpStream, options: SocketOptions) -> io::Result<ClientSocket> {
        tcp.set_nodelay(true)?;
        let sock = SockRef::from(&tcp);
        sock.set_send_buffer_size(options.send_buffer_bytes)?;
        if let Some(idle) = options.keepalive_idle {
            let keepalive = TcpKeepalive::new()
                .with_time(idle)
                .with_interval(KEEPALIVE_INTERVAL)
                .with_retries(KEEPALIVE_RETRIES);
            sock.set_tcp_keepalive(&keepalive)?;
        }
        Ok(ClientSocket {
            tcp,
            reset: ResetOnDrop::default(),
        })
    }

    pub fn reset_handle(&self) -> ResetOnDrop {
        self.reset.clone()
    }

    /// Reads through a shared reference, so that a WebSocket's reader and writer
    /// (`websocket.rs`) each use the socket without a lock: tokio keeps a separate waker for
    /// each direction.
    pub fn poll_read_shared(
        &self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.tcp.poll_read_ready(cx))?;
            // A would-block clears the readiness, so the next poll registers the waker again.
            match self.tcp.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Writes through a shared reference; see [`ClientSocket::poll_read_shared`].
    pub fn poll_write_vectored_shared(
        &self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.tcp.poll_write_ready(cx))?;
            match self.tcp.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }
}

impl Drop for ClientSocket {
    fn drop(&mut self) {
        if self.reset.is_requested() {
            // SO_LINGER with a zero timeout makes close() send RST and discard unsent data.
            let _ = SockRef::from(&self.tcp).set_linger(Some(Duration::ZERO));
        }
    }
}

impl AsyncRead for ClientSocket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientSocket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server socket as giftd sets it up, and the client's end.
    pub(crate) async fn pair(send_buffer_bytes: usize) -> (ClientSocket, TcpStream) {
        let options = SocketOptions {
            send_buffer_bytes,
            keepalive_idle: Some(Duration::from_secs(60)),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (ClientSocket::new(server, options).unwrap(), client)
    }

    #[tokio::test]
    async fn silent_peers_are_probed() {
        let (server, _client) = pair(16 * 1024).await;
        let sock = SockRef::from(&server.tcp);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(60));
        assert_eq!(sock.tcp_keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), KEEPALIVE_RETRIES);
    }

    #[tokio::test]
    async fn the_send_buffer_is_bounded() {
        let (server, _client) = pair(16 * 1024).await;
        let size = SockRef::from(&server.tcp).send_buffer_size().unwrap();
        // Linux reports twice the requested size; anything near the autotuned megabytes is wrong.
        assert!(size <= 2 * 16 * 1024 + 4096, "send buffer {size}");
    }

    #[tokio::test]
    async fn a_plain_drop_closes_and_a_requested_reset_resets() {
        let (mut server, mut client) = pair(16 * 1024).await;
        server.write_all(b"hello").await.unwrap();
        drop(server);
        let mut buf = Vec::new();
        client.read_to_end(&mut buf).await.unwrap();
        assert_eq!(buf, b"hello");

        let (mut server, mut client) = pair(16 * 1024).await;
        server.write_all(b"hello").await.unwrap();
        server.reset_handle().request();
        drop(server);
        let mut buf = Vec::new();
        let err = loop {
            match client.read_buf(&mut buf).await {
                Ok(0) => panic!("clean end of stream after {} bytes", buf.len()),
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    }
}

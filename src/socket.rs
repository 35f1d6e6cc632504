//! The TCP socket under a client connection: how much the kernel may buffer for it, and how it
//! ends when its client stops reading.
//!
//! Left alone, Linux grows a socket's send buffer to several megabytes for a client that does not
//! read, so a stuck viewer holds megabytes of kernel memory and takes tens of seconds to notice.
//! giftd fixes the send buffer at `server.socket_send_buffer_bytes` when it accepts a socket, so
//! the writer stalls, and the slow-consumer rules (`connection.rs`) apply, after a bounded number
//! of bytes.
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
use std::task::{Context, Poll};
use std::time::Duration;

use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

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
    /// Wraps an accepted socket and bounds its kernel send buffer to `send_buffer_bytes` (Linux
    /// doubles the value for its own bookkeeping, so the payload it holds is at most about that).
    pub fn new(tcp: TcpStream, send_buffer_bytes: usize) -> io::Result<ClientSocket> {
        tcp.set_nodelay(true)?;
        SockRef::from(&tcp).set_send_buffer_size(send_buffer_bytes)?;
        Ok(ClientSocket {
            tcp,
            reset: ResetOnDrop::default(),
        })
    }

    pub fn reset_handle(&self) -> ResetOnDrop {
        self.reset.clone()
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
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair(send_buffer_bytes: usize) -> (ClientSocket, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (
            ClientSocket::new(server, send_buffer_bytes).unwrap(),
            client,
        )
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

//! A WebSocket client at the byte level, for tests that must see exactly what the server put on
//! the wire: whole frames or not, a close frame or not, a clean end of stream or a reset.
//!
//! It does the RFC 6455 handshake by hand over a socket whose receive buffer the test chooses,
//! sends masked text frames, and parses server frames itself.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// One server frame as it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawFrame {
    Text(String),
    Close(u16, String),
    /// Any other opcode.
    Other(u8),
}

/// How the byte stream ended.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamEnd {
    /// A clean end of stream (FIN); `mid_frame` says whether it cut a frame short.
    Eof { mid_frame: bool },
    /// The connection failed, e.g. a reset.
    Error(io::ErrorKind),
}

pub struct RawWs {
    stream: TcpStream,
    /// Received bytes not yet parsed into frames.
    pending: Vec<u8>,
    /// Every byte received after the handshake.
    pub bytes_received: usize,
}

impl RawWs {
    /// Connects with a receive buffer of `recv_buffer_bytes` and a token in the handshake, and
    /// checks the server switched protocols.
    pub async fn connect(addr: SocketAddr, token: &str, recv_buffer_bytes: u32) -> RawWs {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(recv_buffer_bytes).unwrap();
        let mut stream = socket.connect(addr).await.unwrap();
        let request = format!(
            "GET /ws HTTP/1.1\r\nhost: {addr}\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
             sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\
             authorization: Bearer {token}\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(
                stream.read(&mut byte).await.unwrap(),
                1,
                "handshake cut short"
            );
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        RawWs {
            stream,
            pending: Vec::new(),
            bytes_received: 0,
        }
    }

    /// Sends one masked text frame (a zero mask key, which RFC 6455 allows).
    pub async fn send_text(&mut self, text: &str) {
        let payload = text.as_bytes();
        let mut frame = vec![0x81];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= 0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&[0, 0, 0, 0]);
        frame.extend_from_slice(payload);
        self.stream.write_all(&frame).await.unwrap();
    }

    /// Parses one whole frame from the front of `pending`, if there is one.
    fn parse(&mut self) -> Option<RawFrame> {
        let b = &self.pending;
        if b.len() < 2 {
            return None;
        }
        assert_eq!(b[1] & 0x80, 0, "server frames are never masked");
        let (len, header) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 if b.len() >= 10 => (
                u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
                10,
            ),
            126 | 127 => return None,
            n => (n as usize, 2),
        };
        if b.len() < header + len {
            return None;
        }
        let opcode = b[0] & 0x0f;
        let payload = b[header..header + len].to_vec();
        self.pending.drain(..header + len);
        Some(match opcode {
            1 => RawFrame::Text(String::from_utf8(payload).expect("text frames are UTF-8")),
            8 => {
                let code = u16::from_be_bytes([payload[0], payload[1]]);
                RawFrame::Close(code, String::from_utf8_lossy(&payload[2..]).into_owned())
            }
            other => RawFrame::Other(other),
        })
    }

    /// Reads everything until the stream ends (at most `timeout`), returning every whole frame
    /// and how the stream ended.
    pub async fn read_to_end(&mut self, timeout: Duration) -> (Vec<RawFrame>, StreamEnd) {
        let mut frames = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let end = tokio::time::timeout(timeout, async {
            loop {
                while let Some(f) = self.parse() {
                    frames.push(f);
                }
                match self.stream.read(&mut buf).await {
                    Ok(0) => {
                        return StreamEnd::Eof {
                            mid_frame: !self.pending.is_empty(),
                        }
                    }
                    Ok(n) => {
                        self.bytes_received += n;
                        self.pending.extend_from_slice(&buf[..n]);
                    }
                    Err(e) => return StreamEnd::Error(e.kind()),
                }
            }
        })
        .await
        .expect("the stream ends in time");
        while let Some(f) = self.parse() {
            frames.push(f);
        }
        (frames, end)
    }

    /// Reads whole frames until one satisfies `done` (at most `timeout`), returning them all.
    pub async fn read_until(
        &mut self,
        done: impl Fn(&RawFrame) -> bool,
        timeout: Duration,
    ) -> Vec<RawFrame> {
        let mut frames = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        tokio::time::timeout(timeout, async {
            loop {
                while let Some(f) = self.parse() {
                    let last = done(&f);
                    frames.push(f);
                    if last {
                        return;
                    }
                }
                let n = self
                    .stream
                    .read(&mut buf)
                    .await
                    .expect("the stream is open");
                assert!(n > 0, "the stream ended early: {frames:?}");
                self.bytes_received += n;
                self.pending.extend_from_slice(&buf[..n]);
            }
        })
        .await
        .expect("the awaited frame in time");
        frames
    }
}

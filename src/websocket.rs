//! The WebSocket over a client's socket once the upgrade is done: tungstenite reads it, giftd
//! writes it.
//!
//! **Writing.** Server frames are not masked, so a frame is a header that depends only on the
//! payload's length (2, 4 or 10 bytes) followed by the payload itself. A room event's payload is
//! its encoded bytes, encoded once and shared by every member (`protocol.rs`), so
//! [`FrameWriter`] writes each frame as its header, made on the stack, and the shared payload,
//! with one vectored write for a whole batch: nothing is copied or framed again per viewer, and
//! nothing stays allocated once a batch is out. (tungstenite copies every payload into a
//! per-connection write buffer, frames it there, and never shrinks that buffer: a viewer that once
//! took a large join snapshot kept up to 16 KiB of it for life.)
//!
//! **Reading** stays with tungstenite: the framing rules, masking, fragments, UTF-8 and size
//! limits, which the Autobahn cases check (`scripts/conformance.sh`). It reads through
//! [`ReadSide`], the same socket shared by reference, so the connection's reader and writer need
//! no lock between them (tokio-tungstenite's `split` puts the whole WebSocket behind one lock that
//! every poll of either half takes). [`WsReader`] drives tungstenite's non-blocking `read` itself,
//! lending it the polling task's waker ([`TaskRead`]): tokio-tungstenite's stream does the same
//! through two shared waker proxies, 126 bytes more in every connection.
//!
//! **One writer.** tungstenite answers a ping (with a pong) and a close frame (with its echo) by
//! writing to its stream itself. [`TaskRead`] discards those writes, and whoever reads sends the
//! same answers through the [`FrameWriter`] instead (`connection.rs`): a pong with the ping's
//! payload, and the close frame as tungstenite returned it, which is the echo it would have sent.
//! So every byte on the wire comes from the one writer, in whole frames.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};

use bytes::Bytes;
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, ReadBuf};
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message, WebSocket};

use crate::config::ServerConfig;
use crate::socket::ClientSocket;
use crate::throttle::Throttled;

/// The reading half of a client's WebSocket: a `Stream` of the messages tungstenite reads from
/// the shared socket, within the connection's inbound byte budget (`throttle.rs`). Boxed: it
/// lives as long as the connection, and the connection's reader future stays small without it.
pub struct WsReader {
    ws: Box<WebSocket<TaskRead>>,
}

impl Stream for WsReader {
    type Item = Result<Message, tungstenite::Error>;

    /// One non-blocking `read`: a message, or `WouldBlock` once the socket (or the inbound
    /// budget) has nothing more, by which time the task is registered to be woken.
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let ws = &mut *self.get_mut().ws;
        ws.get_mut().lend(cx.waker());
        match ws.read() {
            Ok(message) => Poll::Ready(Some(Ok(message))),
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                Poll::Pending
            }
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                Poll::Ready(None)
            }
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }
}

/// The most slices one vectored write passes to the kernel (Linux takes up to 1,024): two per
/// frame, so a batch of up to 32 frames goes in one system call.
const SLICES_PER_WRITE_MAX: usize = 64;

/// The largest payload of a control frame (RFC 6455, 5.5).
const CONTROL_PAYLOAD_BYTES_MAX: usize = 125;

/// The longest header of an unmasked frame: 2 bytes, then a 64-bit length.
const HEADER_BYTES_MAX: usize = 10;

/// How each client WebSocket is set up, from `server.*`.
#[derive(Debug, Clone, Copy)]
pub struct WsSettings {
    /// tungstenite's reading limits.
    pub read: WebSocketConfig,
    pub inbound_bytes_per_sec: u64,
    pub inbound_burst_bytes: u64,
    /// Bytes of frames a [`FrameWriter`] queues before the next frame waits for a write.
    pub write_buffer_bytes: usize,
}

impl WsSettings {
    pub fn new(server: &ServerConfig) -> WsSettings {
        WsSettings {
            read: WebSocketConfig::default()
                .read_buffer_size(server.ws_read_buffer_bytes)
                .max_message_size(Some(server.message_bytes_max))
                .max_frame_size(Some(server.message_bytes_max)),
            inbound_bytes_per_sec: server.inbound_bytes_per_sec,
            inbound_burst_bytes: server.inbound_burst_bytes,
            write_buffer_bytes: server.ws_write_buffer_bytes,
        }
    }
}

/// Takes over an upgraded client socket. `read_ahead` is what the HTTP layer read past the
/// upgrade request (a client may send its first frame without waiting for the 101); the reader
/// gets it first. It is copied into tungstenite's read buffer: the HTTP layer's bytes are a
/// slice of its whole read buffer (kilobytes), which even an empty slice kept would keep alive.
pub fn open(
    socket: ClientSocket,
    read_ahead: Bytes,
    settings: WsSettings,
) -> (WsReader, FrameWriter) {
    let socket = Arc::new(socket);
    let read_side = ReadSide {
        socket: socket.clone(),
    };
    let throttled = Throttled::new(
        read_side,
        settings.inbound_bytes_per_sec,
        settings.inbound_burst_bytes,
    );
    let read = TaskRead {
        inner: throttled,
        waker: Waker::noop().clone(),
    };
    let ws = WebSocket::from_partially_read(
        read,
        read_ahead.to_vec(),
        Role::Server,
        Some(settings.read),
    );
    (
        WsReader { ws: Box::new(ws) },
        FrameWriter::new(socket, settings.write_buffer_bytes),
    )
}

/// tungstenite's stream: its reads poll the socket (through the inbound budget) with the waker
/// of the task that polls the [`WsReader`], so a read the socket cannot answer yet is
/// `WouldBlock` to tungstenite and a wake-up for that task once it can; its writes are discarded
/// (see the module's documentation).
pub struct TaskRead {
    inner: Throttled<ReadSide>,
    /// The waker of the last task that polled the reader.
    waker: Waker,
}

impl TaskRead {
    /// Takes the polling task's waker. `clone_from` clones only if it is not the one already
    /// held: one task reads the connection for its whole life.
    fn lend(&mut self, waker: &Waker) {
        self.waker.clone_from(waker);
    }
}

impl Read for TaskRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut cx = Context::from_waker(&self.waker);
        let mut buf = ReadBuf::new(buf);
        match Pin::new(&mut self.inner).poll_read(&mut cx, &mut buf) {
            Poll::Ready(Ok(())) => Ok(buf.filled().len()),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Write for TaskRead {
    /// tungstenite's automatic pong or close echo: sent by the writer instead.
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What the reader reads: the socket it shares with the [`FrameWriter`].
pub struct ReadSide {
    socket: Arc<ClientSocket>,
}

impl AsyncRead for ReadSide {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.socket.poll_read_shared(cx, buf)
    }
}

/// One frame waiting to be written: its header and its payload, shared with whoever else sends
/// the same bytes.
struct Pending {
    header: [u8; HEADER_BYTES_MAX],
    header_bytes: u8,
    payload: Bytes,
}

impl Pending {
    /// A frame with `header`, never masked (a server's frames are not), carrying `payload`.
    fn new(header: FrameHeader, payload: Bytes) -> Result<Pending, tungstenite::Error> {
        let header = FrameHeader {
            mask: None,
            ..header
        };
        let length = payload.len() as u64;
        let mut bytes = [0; HEADER_BYTES_MAX];
        header.format(length, &mut &mut bytes[..])?;
        Ok(Pending {
            header: bytes,
            header_bytes: header.len(length) as u8,
            payload,
        })
    }

    fn header(&self) -> &[u8] {
        &self.header[..usize::from(self.header_bytes)]
    }

    fn len(&self) -> usize {
        usize::from(self.header_bytes) + self.payload.len()
    }
}

/// The header of a whole (unfragmented) frame of `opcode`.
fn whole_frame(opcode: OpCode) -> FrameHeader {
    FrameHeader {
        opcode,
        ..FrameHeader::default()
    }
}

/// Writes WebSocket frames to a client's socket: a `Sink` of messages that queues each as its
/// header and shared payload, and writes the queue with vectored writes on flush.
pub struct FrameWriter {
    socket: Arc<ClientSocket>,
    /// Allocated only while frames wait.
    frames: VecDeque<Pending>,
    /// Bytes of the first frame in `frames` already written.
    written_bytes: usize,
    /// Bytes in `frames` not yet written.
    pending_bytes: usize,
    /// A `u32`, which with `closing` fills one word (the writer is in every connection's task):
    /// a setting beyond 4 GiB is as good as no bound, and is taken as 4 GiB.
    write_buffer_bytes: u32,
    /// A close frame was queued; nothing may follow it.
    closing: bool,
}

impl FrameWriter {
    fn new(socket: Arc<ClientSocket>, write_buffer_bytes: usize) -> FrameWriter {
        FrameWriter {
            socket,
            frames: VecDeque::new(),
            written_bytes: 0,
            pending_bytes: 0,
            write_buffer_bytes: u32::try_from(write_buffer_bytes).unwrap_or(u32::MAX),
            closing: false,
        }
    }

    fn push(&mut self, frame: Pending) {
        self.pending_bytes += frame.len();
        self.frames.push_back(frame);
    }

    /// Writes everything queued.
    fn poll_write_queued(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.frames.is_empty() {
            let mut slices = [IoSlice::new(&[]); SLICES_PER_WRITE_MAX];
            let mut used = 0;
            let mut skip = self.written_bytes;
            'frames: for frame in &self.frames {
                for part in [frame.header(), &frame.payload[..]] {
                    if skip >= part.len() {
                        skip -= part.len();
                        continue;
                    }
                    if used == SLICES_PER_WRITE_MAX {
                        break 'frames;
                    }
                    slices[used] = IoSlice::new(&part[skip..]);
                    skip = 0;
                    used += 1;
                }
            }
            let written = ready!(self.socket.poll_write_vectored_shared(cx, &slices[..used]))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wrote(written);
        }
        // Idle connections hold no queue memory.
        self.frames = VecDeque::new();
        Poll::Ready(Ok(()))
    }

    /// Drops what the socket took from the front of the queue.
    fn wrote(&mut self, written: usize) {
        assert!(
            written <= self.pending_bytes,
            "the socket took more than was given"
        );
        self.pending_bytes -= written;
        let mut into_front = self.written_bytes + written;
        while let Some(front) = self.frames.front() {
            if into_front < front.len() {
                break;
            }
            into_front -= front.len();
            self.frames.pop_front();
        }
        self.written_bytes = into_front;
    }
}

impl Sink<Message> for FrameWriter {
    type Error = tungstenite::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let this = self.get_mut();
        if this.pending_bytes >= this.write_buffer_bytes as usize {
            ready!(this.poll_write_queued(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, message: Message) -> Result<(), Self::Error> {
        let this = self.get_mut();
        if this.closing {
            return Err(tungstenite::Error::Protocol(
                ProtocolError::SendAfterClosing,
            ));
        }
        let (header, payload) = match message {
            Message::Text(text) => (whole_frame(OpCode::Data(Data::Text)), Bytes::from(text)),
            Message::Binary(bytes) => (whole_frame(OpCode::Data(Data::Binary)), bytes),
            Message::Ping(bytes) => (whole_frame(OpCode::Control(Control::Ping)), bytes),
            Message::Pong(bytes) => (whole_frame(OpCode::Control(Control::Pong)), bytes),
            Message::Close(close) => {
                let frame = Frame::close(close);
                (frame.header().clone(), frame.into_payload())
            }
            Message::Frame(frame) => (frame.header().clone(), frame.into_payload()),
        };
        if let OpCode::Control(control) = header.opcode {
            if payload.len() > CONTROL_PAYLOAD_BYTES_MAX {
                return Err(tungstenite::Error::Protocol(
                    ProtocolError::ControlFrameTooBig,
                ));
            }
            this.closing = control == Control::Close;
        }
        this.push(Pending::new(header, payload)?);
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.get_mut()
            .poll_write_queued(cx)
            .map_err(tungstenite::Error::Io)
    }

    /// Writes what is queued. The socket itself closes when both halves are gone, as the
    /// connection ends (`socket.rs` decides between a close and a reset).
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.poll_flush(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use std::time::Duration;
    use tokio::net::TcpStream;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::WebSocketStream;

    fn settings(write_buffer_bytes: usize) -> WsSettings {
        WsSettings {
            read: WebSocketConfig::default(),
            inbound_bytes_per_sec: 1 << 30,
            inbound_burst_bytes: 1 << 30,
            write_buffer_bytes,
        }
    }

    /// A server end taken over by [`open`] and a tungstenite client on the other end of a real
    /// loopback socket; `early` stands for what the HTTP layer read past the upgrade request.
    async fn pair(
        send_buffer_bytes: usize,
        write_buffer_bytes: usize,
        early: &[u8],
    ) -> (WsReader, FrameWriter, WebSocketStream<TcpStream>) {
        let (socket, client) = crate::socket::tests::pair(send_buffer_bytes).await;
        let (reader, writer) = open(
            socket,
            Bytes::copy_from_slice(early),
            settings(write_buffer_bytes),
        );
        let client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        (reader, writer, client)
    }

    fn text_of(len: usize, seed: usize) -> String {
        (0..len)
            .map(|i| char::from(b'a' + ((i + seed) % 26) as u8))
            .collect()
    }

    #[tokio::test]
    async fn every_payload_length_class_reaches_a_standard_client_whole_and_in_order() {
        let (_reader, mut writer, mut client) = pair(1 << 20, 16 * 1024, b"").await;
        // 2-, 4- and 10-byte headers, at their edges.
        let lengths = [0, 1, 125, 126, 127, 65_535, 65_536, 300_000];
        for (i, &len) in lengths.iter().enumerate() {
            writer.feed(Message::text(text_of(len, i))).await.unwrap();
        }
        writer.feed(Message::binary(vec![7u8; 200])).await.unwrap();
        writer
            .feed(Message::Pong(Bytes::from_static(b"p")))
            .await
            .unwrap();
        let raw = Frame::message("raw", OpCode::Data(Data::Text), true);
        writer.feed(Message::Frame(raw)).await.unwrap();
        writer.flush().await.unwrap();
        for (i, &len) in lengths.iter().enumerate() {
            match client.next().await.unwrap().unwrap() {
                Message::Text(t) => assert_eq!(t.as_str(), text_of(len, i), "length {len}"),
                other => panic!("expected text of {len} bytes, got {other:?}"),
            }
        }
        assert_eq!(
            client.next().await.unwrap().unwrap(),
            Message::binary(vec![7u8; 200])
        );
        assert_eq!(
            client.next().await.unwrap().unwrap(),
            Message::Pong(Bytes::from_static(b"p"))
        );
        assert_eq!(client.next().await.unwrap().unwrap(), Message::text("raw"));
    }

    #[tokio::test]
    async fn a_batch_larger_than_one_write_and_the_socket_buffer_arrives_whole() {
        // A 4 KiB send buffer and 500 frames: many partial writes, each ending anywhere in a
        // header or a payload, and more frames than one vectored write takes.
        let (_reader, mut writer, mut client) = pair(4096, 1 << 30, b"").await;
        let frames: Vec<String> = (0..500).map(|i| text_of(1 + i * 7 % 700, i)).collect();
        let sent = frames.clone();
        let write = tokio::spawn(async move {
            for f in sent {
                writer.feed(Message::text(f)).await.unwrap();
            }
            assert!(writer.pending_bytes > 100_000);
            writer.flush().await.unwrap();
            assert!(writer.frames.is_empty() && writer.frames.capacity() == 0);
            assert_eq!(writer.pending_bytes, 0);
            writer
        });
        for f in &frames {
            match client.next().await.unwrap().unwrap() {
                Message::Text(t) => assert_eq!(t.as_str(), f),
                other => panic!("expected text, got {other:?}"),
            }
        }
        write.await.unwrap();
    }

    #[tokio::test]
    async fn the_write_buffer_bound_writes_before_queueing_more() {
        let (_reader, mut writer, mut client) = pair(1 << 20, 1000, b"").await;
        for i in 0..3 {
            writer.feed(Message::text(text_of(600, i))).await.unwrap();
        }
        // The second and third frames each found 1,000 or more bytes queued and wrote them first.
        assert_eq!(writer.pending_bytes, 604);
        writer.flush().await.unwrap();
        for i in 0..3 {
            assert_eq!(
                client.next().await.unwrap().unwrap(),
                Message::text(text_of(600, i))
            );
        }
    }

    #[tokio::test]
    async fn a_close_frame_is_the_last_frame() {
        let (_reader, mut writer, mut client) = pair(1 << 20, 16 * 1024, b"").await;
        let close = CloseFrame {
            code: CloseCode::from(4000),
            reason: "slow".into(),
        };
        writer
            .send(Message::Close(Some(close.clone())))
            .await
            .unwrap();
        let after = writer.send(Message::text("late")).await;
        assert!(matches!(
            after,
            Err(tungstenite::Error::Protocol(
                ProtocolError::SendAfterClosing
            ))
        ));
        assert_eq!(
            client.next().await.unwrap().unwrap(),
            Message::Close(Some(close))
        );
    }

    #[tokio::test]
    async fn a_control_frame_over_125_bytes_is_refused() {
        let (_reader, mut writer, _client) = pair(1 << 20, 16 * 1024, b"").await;
        let too_big = Message::Pong(Bytes::from(vec![0u8; 126]));
        assert!(matches!(
            writer.send(too_big).await,
            Err(tungstenite::Error::Protocol(
                ProtocolError::ControlFrameTooBig
            ))
        ));
        assert_eq!(writer.pending_bytes, 0);
    }

    #[tokio::test]
    async fn what_was_read_ahead_is_copied_and_the_http_buffer_let_go() {
        // The HTTP layer's buffer, of which it hands over a slice.
        let http_buffer = Bytes::from(vec![7u8; 8192]);
        for from in [8192, 8000] {
            let (socket, _client) = crate::socket::tests::pair(4096).await;
            let _open = open(socket, http_buffer.slice(from..), settings(16 * 1024));
            assert!(http_buffer.is_unique(), "a reader holds the HTTP buffer");
        }
    }

    #[tokio::test]
    async fn the_reader_gets_what_was_read_ahead_first_and_its_automatic_answers_go_nowhere() {
        // A masked client frame ("early") that arrived with the upgrade request.
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut early = vec![0x81, 0x80 | 5];
        early.extend_from_slice(&mask);
        early.extend(b"early".iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        let (mut reader, mut writer, mut client) = pair(1 << 20, 16 * 1024, &early).await;
        assert_eq!(
            reader.next().await.unwrap().unwrap(),
            Message::text("early")
        );
        client
            .send(Message::Ping(Bytes::from_static(b"hi")))
            .await
            .unwrap();
        client.send(Message::text("after")).await.unwrap();
        assert_eq!(
            reader.next().await.unwrap().unwrap(),
            Message::Ping(Bytes::from_static(b"hi"))
        );
        assert_eq!(
            reader.next().await.unwrap().unwrap(),
            Message::text("after")
        );
        // tungstenite's automatic pong was discarded: the first frame the client gets is the
        // one the writer sends.
        writer.send(Message::text("first")).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), client.next())
            .await
            .unwrap();
        assert_eq!(got.unwrap().unwrap(), Message::text("first"));
    }
}

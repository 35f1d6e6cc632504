//! One WebSocket connection's life, from upgrade to close, in one place.
//!
//! A connection is two tasks:
//! - the **reader** (this task) reads frames, enforces the auth deadline and hands text frames to
//!   its [`Session`]; it answers a ping with a pong, and a close frame with its echo, through the
//!   outbox (`websocket.rs` explains why tungstenite does not);
//! - the **writer** drains the connection's bounded [`Outbox`] (private frames) and its room's
//!   event ring, feeding every frame that is ready and flushing once per batch, so a burst of room
//!   events costs one socket write rather than one per event.
//!
//! Whoever decides the connection must end (the reader, the writer, a room) kicks the outbox with
//! a close code. The writer then writes what was already queued (such as the error that explains
//! the close), sends the close frame, and stops. Shutdown asks the reader instead
//! (`App::shut_down`), which finishes the command in progress and the gifts in flight first, so a
//! gift being committed still gets its receipt, then kicks with 1001.
//!
//! **Slow consumers.** A client is slow when its write makes no progress for
//! `server.write_timeout_ms`, when it falls a whole room ring behind, or when its private queue
//! fills. Its writer then stops taking frames, skips what is still queued, and sends close 4000
//! right after the frame in progress, so the byte stream stays whole frames. The client has
//! `server.close_timeout_ms` to read that far; if it does not, the socket is reset (`socket.rs`)
//! rather than closed, so a stream never ends cleanly inside a frame.
//!
//! **Memory.** Both tasks live as long as the connection, mostly idle, so what their futures keep
//! across a wait is paid by every connection (`BENCHMARKS.md`, "What an idle connection keeps").
//! Each loop therefore waits in one `poll_fn` over its sources in order of precedence (a
//! `select!` keeps a future per branch), is an `async` block rather than an `async fn` (which
//! keeps its arguments twice), looks up what it can look up again, and boxes each command and
//! every wait that is rarely needed. The reader's state is one [`Reader`], so that its wait
//! borrows one thing, and its loop is written out in its task's block rather than awaited as a
//! future of its own. Each task is one allocation in 128-byte steps (384 B for the reader, 256 B
//! for the writer), so a few bytes more in either future can cost 128 B per connection.
//!
//! The loops are generic over a `Sink` and a `Stream` of WebSocket messages, so unit tests drive
//! them through channels under paused time.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tracing::Instrument;

use crate::app::App;
use crate::auth::Identity;
use crate::bounds::{STALL_CHECK, WRITE_BATCH_FRAMES_MAX};
use crate::error::{CloseCode, Error};
use crate::metrics::{Metrics, OutKind};
use crate::outbox::{Kick, Outbound, Outbox, OutboxReceiver, Waiter};
use crate::protocol::server::{self, ServerMessage};
use crate::protocol::EventFrame;
use crate::room::hub::Subscription;
use crate::session::{Finished, InFlight, Session};
use crate::socket::ResetOnDrop;
use crate::websocket::{FrameWriter, WsReader};

/// Serves one upgraded WebSocket until it closes.
///
/// Not an `async fn`: it starts the writer before the connection's long-lived future exists, so
/// that future holds only what the reader needs (see [`start`]).
pub fn serve(
    reader: WsReader,
    writer: FrameWriter,
    app: Arc<App>,
    identity: Option<Box<Identity>>,
    peer: SocketAddr,
    reset: ResetOnDrop,
) -> impl Future<Output = ()> + Send {
    let conn = app.next_conn_id();
    let span = tracing::info_span!("conn", id = conn, %peer, user = tracing::field::Empty, room = tracing::field::Empty);
    // Entered while the connection starts: the writer's task and the session's user field
    // belong to the connection's span.
    let reader = span.in_scope(|| start(writer, reader, app, identity, conn, reset));
    reader.instrument(span)
}

/// Starts one connection over a sink and a stream of WebSocket messages: spawns its writer,
/// authenticates its session if the upgrade carried a token, and returns its reader, which runs
/// until the connection closes.
///
/// Not an `async fn` either: an idle connection's reader future lasts as long as the connection,
/// and an `async fn` would keep room in it for everything it ever held (the sink, the writer's
/// settings), moved out or not. Everything the writer takes is handed over here instead.
fn start<Si, St>(
    sink: Si,
    stream: St,
    app: Arc<App>,
    identity: Option<Box<Identity>>,
    conn: u64,
    reset: ResetOnDrop,
) -> impl Future<Output = ()> + Send
where
    Si: Sink<Message, Error = tungstenite::Error> + Unpin + Send + 'static,
    St: Stream<Item = Result<Message, tungstenite::Error>> + Unpin + Send,
{
    let metrics = &app.metrics;
    metrics.connections.inc();
    metrics.connections_accepted.inc();
    let server_config = &app.config.server;
    let (outbox, rx) = Outbox::new(
        server_config.outbox_frames_max,
        server_config.outbox_bytes_max,
    );
    // Not in the connection's span: the writer logs nothing, and a span is 40 bytes in every
    // connection's task and an enter and exit at every wake-up.
    let writer = tokio::spawn(write_loop(sink, rx, app.clone(), reset));

    let mut session = Session::new(app.clone(), conn, outbox.clone());
    if let Some(identity) = identity {
        let welcome = server::encode(&ServerMessage::Welcome {
            user: &identity.user,
            role: identity.role,
            server_time_ms: crate::ledger::now_ms(),
        });
        session.authenticate(*identity);
        outbox.push(OutKind::Welcome, welcome);
    }
    // Until the connection authenticates, it has a deadline, and it is in no registry that
    // shutdown goes through (`App::shut_down`), so it also waits for shutdown itself; both waits
    // are boxed together and exist only until then.
    let unauthenticated = session.identity().is_none().then(|| {
        let timeout = Duration::from_millis(app.config.server.handshake_timeout_ms);
        let shutdown = app.shutdown.clone();
        Box::pin(async move {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => CloseCode::GoingAway,
                _ = tokio::time::sleep(timeout) => CloseCode::AuthTimeout,
            }
        })
    });
    let mut reader = Reader {
        stream,
        session,
        in_flight: InFlight::default(),
        unauthenticated,
    };
    // An `async` block, not an `async fn`: an `async fn` copies its arguments into its body's
    // locals and keeps room for both, where a block uses what it captured in place. The reader
    // is its one capture beside the writer's handle (the app and the outbox are the session's),
    // and the loop is written out here rather than awaited as a future of its own, which would
    // keep a reference to the reader and room for its own state.
    async move {
        // Authenticated, the connection is in the user registry, which shutdown goes through. A
        // shutdown that went through it before the connection was there has cancelled the token,
        // so the loop checks the token once then.
        let mut check_shutdown = reader.unauthenticated.is_none();
        let code = loop {
            if reader.unauthenticated.is_some() && reader.session.identity().is_some() {
                reader.unauthenticated = None;
                check_shutdown = true;
            }
            if std::mem::take(&mut check_shutdown) && reader.session.app().shutdown.is_cancelled() {
                break CloseCode::GoingAway;
            }
            let woke = std::future::poll_fn(|cx| reader.poll_woke(cx)).await;
            // A text frame's command runs boxed, so the idle connection's future does not carry the
            // largest command's state. The frame moves into the box and `woke` moves whole into
            // the match, and every other wake-up is answered in the match, so the future keeps
            // room for none of them across the command's `.await`.
            let Reader {
                session, in_flight, ..
            } = &mut reader;
            let command = match whole(woke) {
                Woke::Read(Some(Ok(Message::Text(text)))) => {
                    Box::pin(async move { session.handle_text(text.as_str(), in_flight).await })
                }
                other => match answer(other, session) {
                    Some(code) => break code,
                    None => continue,
                },
            };
            if let Some(code) = command.await {
                break code;
            }
        };
        // Bounded by the ledger's call deadline.
        Box::pin(reader.session.drain(&mut reader.in_flight)).await;
        reader.session.outbox().kick(code);
        reader.session.end();
        let _ = writer.await;
        let code = reader.session.outbox().kick_switch().code();
        tracing::debug!(close = %code, "connection closed");
        let metrics = &reader.session.app().metrics;
        metrics
            .connections_closed
            .with_label_values(&[code.reason()])
            .inc();
        metrics.connections.dec();
    }
}

/// Moves `value` whole. A coroutine keeps room across an `.await` for a local that was only
/// matched apart (a part moved out still leaves the local alive), but not for one moved whole,
/// so the loops below match what they receive through this.
fn whole<T>(value: T) -> T {
    value
}

/// What a connection's reader keeps for the connection's life, in one place, so that its wait
/// borrows one thing (a closure's borrows are 8 bytes each in every connection's future).
struct Reader<St, A> {
    stream: St,
    session: Session,
    /// Gifts still committing; see `session.rs`. Answered as each finishes, and all of them
    /// before the connection ends, so a gift being committed still gets its receipt.
    in_flight: InFlight,
    /// The auth deadline and the wait for shutdown, until the connection authenticates.
    unauthenticated: Option<Pin<Box<A>>>,
}

/// What woke a reader.
enum Woke {
    /// The connection must close with this code.
    Close(CloseCode),
    /// A gift in flight was answered.
    Finished(Finished),
    /// The client's next frame, or the end of its stream.
    Read(Option<Result<Message, tungstenite::Error>>),
}

impl<St, A> Reader<St, A>
where
    St: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
    A: Future<Output = CloseCode>,
{
    /// One poll of every wait in order of precedence, rather than a `select!`, which keeps a
    /// future per branch in every idle connection's future. The next command is read only when
    /// its replies, and those of the gifts in flight, fit in the outbox (`outbox.rs`), and fewer
    /// than `server.gifts_in_flight_max` gifts are in flight.
    fn poll_woke(&mut self, cx: &mut Context<'_>) -> Poll<Woke> {
        let outbox = self.session.outbox();
        if let Poll::Ready(code) = outbox.kick_switch().poll_kicked(Waiter::Reader, cx) {
            return Poll::Ready(Woke::Close(code));
        }
        if let Some(wait) = self.unauthenticated.as_mut() {
            if let Poll::Ready(code) = wait.as_mut().poll(cx) {
                return Poll::Ready(Woke::Close(code));
            }
        }
        if let Poll::Ready(done) = self.in_flight.poll_next(cx) {
            return Poll::Ready(Woke::Finished(done));
        }
        let in_flight = self.in_flight.len();
        if in_flight >= self.session.app().config.server.gifts_in_flight_max
            || outbox
                .poll_room_for_commands(in_flight + 1, cx)
                .is_pending()
        {
            return Poll::Pending;
        }
        self.stream.poll_next_unpin(cx).map(Woke::Read)
    }
}

/// Answers a wake-up other than a command: the code to close with, if the connection must.
fn answer(woke: Woke, session: &mut Session) -> Option<CloseCode> {
    match woke {
        Woke::Close(code) => Some(code),
        Woke::Finished(done) => session.finish(done),
        Woke::Read(None) => Some(CloseCode::Normal),
        Woke::Read(Some(Ok(Message::Binary(_)))) => session.reject_binary(),
        // tungstenite's own answers to these are discarded (`websocket.rs`); the writer sends
        // them, in turn with everything else.
        Woke::Read(Some(Ok(Message::Ping(payload)))) => {
            session
                .outbox()
                .send(Outbound::Control(Message::Pong(payload)));
            None
        }
        Woke::Read(Some(Ok(Message::Close(echo)))) => {
            session
                .outbox()
                .send(Outbound::Control(Message::Close(echo)));
            Some(CloseCode::Normal)
        }
        // A pong, or a raw frame: nothing to answer. (Text frames are commands, run by the loop.)
        Woke::Read(Some(Ok(_))) => None,
        Woke::Read(Some(Err(e))) => Some(read_error(e, session.outbox(), session.app())),
    }
}

/// Maps a WebSocket read failure to a close code, telling the client why where it can still hear.
fn read_error(e: tungstenite::Error, outbox: &Outbox, app: &App) -> CloseCode {
    use tungstenite::error::{CapacityError, Error as WsError};
    match e {
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => {
            let err = Error::MessageTooLarge {
                limit_bytes: app.config.server.message_bytes_max,
            };
            outbox.push(OutKind::Error, server::error(None, &err));
            app.metrics.errors.with_label_values(&[err.reason()]).inc();
            CloseCode::TooBig
        }
        WsError::Utf8(_) => CloseCode::InvalidPayload,
        WsError::ConnectionClosed | WsError::AlreadyClosed | WsError::Io(_) => CloseCode::Normal,
        other => {
            tracing::debug!(error = %other, "protocol error from client");
            CloseCode::PolicyViolation
        }
    }
}

enum Step {
    Private(Outbound),
    Ring(Result<EventFrame, broadcast::error::RecvError>),
}

/// The next event of the member's room, if the ring has one; `None` if it has none yet or the
/// connection is in no room. The writer waits for the ring's events through its waker in the
/// outbox, which the room's hub wakes after each event it delivers (`room/hub.rs`), rather than
/// through a receive future of its own (80 bytes in every connection's writer).
fn try_ring(
    ring: &mut Option<Subscription>,
) -> Option<Result<EventFrame, broadcast::error::RecvError>> {
    use broadcast::error::{RecvError, TryRecvError};
    match ring.as_mut()?.ring.try_recv() {
        Ok(event) => Some(Ok(event)),
        Err(TryRecvError::Empty) => None,
        Err(TryRecvError::Lagged(lost)) => Some(Err(RecvError::Lagged(lost))),
        Err(TryRecvError::Closed) => Some(Err(RecvError::Closed)),
    }
}

/// Adds a room event to the batch unless the member already has it.
fn take_event(
    event: EventFrame,
    through_seq: u64,
    batch: &mut VecDeque<Message>,
    events: &mut u64,
) {
    if event.seq > through_seq {
        *events += 1;
        batch.push_back(Message::Text(event.bytes));
    }
}

/// Resolves once the room ring is about to overwrite events this writer has not sent: the
/// client is a slow consumer. Checked while a write is stalled on a client that does not read.
async fn ring_overrun(ring: &Option<Subscription>, ring_frames: usize) {
    loop {
        tokio::time::sleep(STALL_CHECK).await;
        if ring.as_ref().is_some_and(|s| s.ring.len() >= ring_frames) {
            return;
        }
    }
}

/// Why a writer stopped before being kicked.
enum WriteFail {
    /// The client cannot keep up.
    Slow,
    /// The ring overwrote events this writer had not sent although its socket took every write at
    /// once: the node fell behind, not the client. The client re-joins with its position and
    /// recovers them (close 4002).
    NodeBehind,
    /// The socket failed; the peer is gone.
    Socket,
}

impl From<tungstenite::Error> for WriteFail {
    fn from(e: tungstenite::Error) -> Self {
        match e {
            tungstenite::Error::WriteBufferFull(_) => WriteFail::Slow,
            _ => WriteFail::Socket,
        }
    }
}

/// What a writer lost to the ring's lag says about whom: a writer whose last write had to wait
/// for its socket has a slow client; one whose socket took everything at once has a slow node.
fn lapped(s: &Subscription, socket_waited: bool, metrics: &Metrics) -> WriteFail {
    if socket_waited {
        return WriteFail::Slow;
    }
    node_is_behind(s, metrics);
    WriteFail::NodeBehind
}

/// Tells the room (and the metric) that this writer is behind although its socket is not.
fn node_is_behind(s: &Subscription, metrics: &Metrics) {
    s.node_is_behind();
    metrics.fanout_node_behind.inc();
}

/// Takes what is ready from the outbox or ring into `batch`. `socket_waited` says whether the
/// writer's last write had to wait for its socket.
fn collect(
    step: Step,
    ring: &mut Option<Subscription>,
    batch: &mut VecDeque<Message>,
    events: &mut u64,
    socket_waited: bool,
    metrics: &Metrics,
) -> Result<(), WriteFail> {
    match step {
        Step::Private(Outbound::Frame(kind, frame)) => {
            metrics.out(kind, 1);
            batch.push_back(Message::Text(frame));
        }
        Step::Private(Outbound::Control(message)) => batch.push_back(message),
        Step::Private(Outbound::Replay(missed)) => {
            *events += missed.len() as u64;
            batch.extend(missed.into_iter().map(|e| Message::Text(e.bytes)));
        }
        Step::Private(Outbound::Subscribe(s)) => *ring = Some(s),
        Step::Private(Outbound::Unsubscribe) => {
            // Forward what the room sent before it let go of us (such as room_closed).
            if let Some(mut s) = ring.take() {
                loop {
                    match s.ring.try_recv() {
                        Ok(event) => {
                            s.took(1);
                            take_event(event, s.through_seq, batch, events);
                        }
                        // What the ring overwrote is never taken; it no longer counts as owed.
                        Err(broadcast::error::TryRecvError::Lagged(lost)) => s.took(lost),
                        Err(_) => break,
                    }
                }
            }
        }
        Step::Ring(Ok(event)) => {
            if let Some(s) = ring.as_mut() {
                let mut taken = 1;
                take_event(event, s.through_seq, batch, events);
                while batch.len() < WRITE_BATCH_FRAMES_MAX {
                    match s.ring.try_recv() {
                        Ok(event) => {
                            taken += 1;
                            take_event(event, s.through_seq, batch, events);
                        }
                        Err(broadcast::error::TryRecvError::Lagged(lost)) => {
                            s.took(taken + lost);
                            return Err(lapped(s, socket_waited, metrics));
                        }
                        Err(_) => break,
                    }
                }
                // This writer was `taken + len` events behind when it woke: if its socket is not
                // what held it back, the node is behind the room (`room/hub.rs`).
                if !socket_waited && taken + s.ring.len() as u64 >= s.behind_events() {
                    node_is_behind(s, metrics);
                }
                // Counted once per batch: the hub's count is shared by every member.
                s.took(taken);
            }
        }
        Step::Ring(Err(broadcast::error::RecvError::Lagged(lost))) => {
            let Some(s) = ring.as_ref() else {
                return Err(WriteFail::Slow);
            };
            s.took(lost);
            return Err(lapped(s, socket_waited, metrics));
        }
        Step::Ring(Err(broadcast::error::RecvError::Closed)) => *ring = None,
    }
    Ok(())
}

/// Writes a connection's frames until it is kicked or its socket fails. Not an `async fn`, for
/// the reason given in [`start`].
#[allow(clippy::manual_async_fn)]
fn write_loop<Si>(
    mut sink: Si,
    rx: OutboxReceiver,
    app: Arc<App>,
    reset: ResetOnDrop,
) -> impl Future<Output = ()> + Send
where
    Si: Sink<Message, Error = tungstenite::Error> + Unpin + Send + 'static,
{
    // What the loop below keeps across its wait is in every idle connection's future, so the
    // metrics, the bounds and the close switch are looked up through the app and the outbox
    // where used, not kept; the batch exists only while there is something to write, and the
    // room's subscription only until the loop ends (a block of its own, so that the close below
    // keeps no room for it).
    async move {
        {
            let mut ring: Option<Subscription> = None;
            // Whether the last write had to wait for the socket (the client's reading), as opposed
            // to being taken at once: what tells a slow client from a slow node.
            let mut socket_waited = false;
            loop {
                // The kick, then the outbox, then the ring, in one poll. The outbox answers for the
                // kick and for its items, and registers this task's waker there (`outbox.rs`),
                // which a push, a kick or the room's next event wakes; so the writer waits in no
                // future of its own.
                let step = std::future::poll_fn(|cx| match rx.poll_recv(cx) {
                    Poll::Ready(item) => Poll::Ready(item.map(Step::Private)),
                    Poll::Pending => match try_ring(&mut ring) {
                        Some(event) => Poll::Ready(Some(Step::Ring(event))),
                        None => Poll::Pending,
                    },
                })
                .await;
                let step = match whole(step) {
                    Some(step) => step,
                    None => break,
                };
                // Everything up to the wait for a full socket happens in this block, whose value is
                // that wait: the batch moves into it, and this future keeps room for neither.
                let outcome = {
                    let metrics = &app.metrics;
                    let mut batch = VecDeque::new();
                    let mut events = 0;
                    let collected = collect(
                        step,
                        &mut ring,
                        &mut batch,
                        &mut events,
                        socket_waited,
                        metrics,
                    );
                    if events > 0 {
                        metrics.fanout_deliveries.inc_by(events);
                        metrics.out(OutKind::Event, events);
                    }
                    if let Err(fail) = collected {
                        finish(fail, rx.kick_switch());
                        break;
                    }
                    if batch.is_empty() {
                        continue;
                    }
                    // Feed the whole batch, then flush once: one socket write for a burst of
                    // events. First as far as the socket takes it at once, which is nearly always
                    // all of it: a plain call, not an `.await`. Its waker does nothing, because a
                    // socket that is full is then waited for with the task's own. Only that wait
                    // needs the write timeout and the ring-overrun check: two timers and a boxed
                    // future, which a viewer that keeps up never costs.
                    let at_once = write_at_once(
                        &mut sink,
                        &mut batch,
                        &mut Context::from_waker(Waker::noop()),
                    );
                    match at_once {
                        Ok(true) => {
                            socket_waited = false;
                            continue;
                        }
                        Ok(false) => Box::pin(write_waiting(&mut sink, batch, &ring, &rx, &app)),
                        Err(e) => {
                            if finish(WriteFail::from(e), rx.kick_switch()) {
                                return;
                            }
                            break;
                        }
                    }
                }
                .await;
                // The socket made the writer wait.
                socket_waited = true;
                if let Err(fail) = outcome {
                    if finish(fail, rx.kick_switch()) {
                        return;
                    }
                    break;
                }
            }
        }
        // Boxed, like the write phase: a connection closes once, and the close's futures need not
        // weigh on every idle connection's task.
        Box::pin(close(&mut sink, &rx, &app, &reset)).await;
    }
}

/// Ends a connection whose writer stopped: writes what is still queued unless the client is
/// slow, then the close frame, within `server.close_timeout_ms`; resets the socket if the client
/// does not read that far in time.
async fn close<Si>(sink: &mut Si, rx: &OutboxReceiver, app: &App, reset: &ResetOnDrop)
where
    Si: Sink<Message, Error = tungstenite::Error> + Unpin,
{
    let code = rx.kick_switch().code();
    let metrics = &app.metrics;
    if code == CloseCode::SlowConsumer {
        // Counted when detected, not when the close completes, which may take close_timeout.
        metrics.slow_consumers.inc();
    }
    let close_timeout = Duration::from_millis(app.config.server.close_timeout_ms);
    let closing = tokio::time::timeout(close_timeout, async {
        // Frames queued before the close (the error that explains it, a receipt) go out first,
        // unless the client is too slow to read them: then the close frame is what it needs.
        // (A receipt it misses is answered again by resending the gift with the same key.)
        while let Some(item) = rx.try_recv() {
            if code == CloseCode::SlowConsumer {
                continue;
            }
            match item {
                Outbound::Frame(kind, frame) => {
                    metrics.out(kind, 1);
                    sink.feed(Message::Text(frame)).await?;
                }
                Outbound::Control(message) => sink.feed(message).await?,
                Outbound::Replay(_) | Outbound::Subscribe(_) | Outbound::Unsubscribe => {}
            }
        }
        let frame = CloseFrame {
            code: WsCloseCode::from(code.code()),
            reason: code.reason().into(),
        };
        // If the client closed first, tungstenite has already queued the echo of its close
        // frame and refuses a second one; closing the sink then flushes that echo.
        match sink.send(Message::Close(Some(frame))).await {
            Ok(()) | Err(tungstenite::Error::Protocol(ProtocolError::SendAfterClosing)) => {}
            Err(e) => return Err(e),
        }
        sink.close().await
    })
    .await;
    if closing.is_err() {
        // The client read neither the rest of the frame in progress nor the close frame in
        // time. Reset the socket rather than end the stream wherever the kernel had got to.
        reset.request();
        metrics.close_resets.inc();
    }
}

/// Feeds `batch` into `sink` and flushes, as far as the socket takes it without waiting: true
/// once everything is written; false if the socket is full, with what was not fed still in
/// `batch`, in order.
fn write_at_once<Si>(
    sink: &mut Si,
    batch: &mut VecDeque<Message>,
    cx: &mut Context<'_>,
) -> Result<bool, tungstenite::Error>
where
    Si: Sink<Message, Error = tungstenite::Error> + Unpin,
{
    while !batch.is_empty() {
        match sink.poll_ready_unpin(cx) {
            Poll::Ready(ready) => ready?,
            Poll::Pending => return Ok(false),
        }
        if let Some(message) = batch.pop_front() {
            sink.start_send_unpin(message)?;
        }
    }
    match sink.poll_flush_unpin(cx) {
        Poll::Ready(flushed) => flushed.map(|()| true),
        Poll::Pending => Ok(false),
    }
}

/// Writes the rest of a batch to a socket that is full. The client is slow if the write takes
/// longer than `server.write_timeout_ms`, or if the ring is about to overwrite events it has not
/// been sent; a kick ends the wait.
async fn write_waiting<Si>(
    sink: &mut Si,
    mut batch: VecDeque<Message>,
    ring: &Option<Subscription>,
    rx: &OutboxReceiver,
    app: &App,
) -> Result<(), WriteFail>
where
    Si: Sink<Message, Error = tungstenite::Error> + Unpin,
{
    let write = async {
        for message in batch.drain(..) {
            sink.feed(message).await?;
        }
        sink.flush().await
    };
    let write_timeout = Duration::from_millis(app.config.server.write_timeout_ms);
    let ring_frames = app.config.rooms.room_ring_frames;
    tokio::select! {
        written = write => written.map_err(WriteFail::from),
        _ = ring_overrun(ring, ring_frames) => Err(WriteFail::Slow),
        _ = tokio::time::sleep(write_timeout) => Err(WriteFail::Slow),
        _ = rx.kick_switch().kicked(Waiter::Writer) => Ok(()),
    }
}

/// Kicks the connection for `fail`; true if its socket is gone, so there is no one to close it for.
fn finish(fail: WriteFail, kick: &Kick) -> bool {
    let socket_gone = matches!(fail, WriteFail::Socket);
    match fail {
        WriteFail::Slow => kick.kick(CloseCode::SlowConsumer),
        WriteFail::NodeBehind => kick.kick(CloseCode::Resync),
        WriteFail::Socket => kick.kick(CloseCode::Normal),
    }
    socket_gone
}

/// Serves the conformance echo endpoint: every text or binary message comes back unchanged. It
/// runs over exactly the production WebSocket layer (`websocket.rs`) and touches no room or money.
pub async fn echo(mut reader: WsReader, mut writer: FrameWriter) {
    while let Some(read) = reader.next().await {
        let reply = match read {
            Ok(message @ (Message::Text(_) | Message::Binary(_))) => message,
            // What tungstenite would have answered itself (`websocket.rs`).
            Ok(Message::Ping(payload)) => Message::Pong(payload),
            Ok(Message::Close(echo)) => Message::Close(echo),
            Ok(_) => continue,
            // A client that broke the protocol gets a close frame without a code.
            Err(_) => Message::Close(None),
        };
        let closing = matches!(reply, Message::Close(_));
        if writer.send(reply).await.is_err() || closing {
            break;
        }
    }
    let _ = SinkExt::close(&mut writer).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::testing::{app, TestApp};
    use crate::auth::Role;
    use tokio::sync::mpsc;
    use tokio_util::sync::PollSender;

    /// A connection driven through channels: the test is the client.
    struct Driven {
        to_server: mpsc::UnboundedSender<Result<Message, tungstenite::Error>>,
        from_server: mpsc::Receiver<Message>,
        reset: ResetOnDrop,
        done: tokio::task::JoinHandle<()>,
    }

    /// Runs a connection whose outgoing channel holds `out_capacity` messages: a capacity the
    /// test never drains stands for a client that stopped reading.
    fn drive(app: &TestApp, user: Option<(&str, Role)>, out_capacity: usize) -> Driven {
        let (to_server, rx) = mpsc::unbounded_channel();
        let stream = Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|m| (m, rx))
        }));
        let (tx, from_server) = mpsc::channel(out_capacity);
        let sink = PollSender::new(tx).sink_map_err(|_| tungstenite::Error::ConnectionClosed);
        let identity = user.map(|(user, role)| {
            Box::new(Identity {
                user: user.into(),
                role,
                room: None,
            })
        });
        let reset = ResetOnDrop::default();
        let done = tokio::spawn(start(
            sink,
            stream,
            app.app.clone(),
            identity,
            // Each its own, as on a server: a room knows its members by connection.
            app.app.next_conn_id(),
            reset.clone(),
        ));
        Driven {
            to_server,
            from_server,
            reset,
            done,
        }
    }

    impl Driven {
        fn send(&self, text: &str) {
            self.to_server
                .send(Ok(Message::text(text.to_owned())))
                .unwrap();
        }

        /// Everything the server sent until it dropped the connection.
        async fn all(mut self) -> (Vec<Message>, ResetOnDrop) {
            let mut out = Vec::new();
            while let Some(m) = self.from_server.recv().await {
                out.push(m);
            }
            self.done.await.unwrap();
            (out, self.reset)
        }
    }

    fn close_code(m: Option<&Message>) -> Option<u16> {
        match m {
            Some(Message::Close(Some(f))) => Some(u16::from(f.code)),
            _ => None,
        }
    }

    fn texts(out: &[Message]) -> Vec<serde_json::Value> {
        out.iter()
            .filter_map(|m| match m {
                Message::Text(t) => Some(serde_json::from_str(t.as_str()).unwrap()),
                _ => None,
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn no_auth_within_the_handshake_timeout_closes_4001() {
        let app = app(|_| {});
        let started = tokio::time::Instant::now();
        let (out, _) = drive(&app, None, 16).all().await;
        assert_eq!(close_code(out.last()), Some(4001));
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(app.config.server.handshake_timeout_ms)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_talks_but_never_authenticates_is_closed_4001_too() {
        let app = app(|_| {});
        let conn = drive(&app, None, 16);
        conn.send(r#"{"type":"join","id":1,"room":"r"}"#);
        let (out, _) = conn.all().await;
        let frames = texts(&out);
        assert_eq!(frames[0]["reason"], "not_authenticated");
        assert_eq!(close_code(out.last()), Some(4001));
    }

    /// Everything `conn` is sent until it is closed, failing rather than hanging if it never is.
    async fn all_within_a_minute(conn: Driven) -> Vec<Message> {
        let (out, _) = tokio::time::timeout(Duration::from_secs(60), conn.all())
            .await
            .expect("the connection was closed");
        out
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_closes_a_connection_that_has_not_authenticated_with_1001() {
        let app = app(|c| c.server.handshake_timeout_ms = 120_000);
        let conn = drive(&app, None, 16);
        tokio::time::sleep(Duration::from_millis(10)).await;
        app.shut_down();
        let out = all_within_a_minute(conn).await;
        assert_eq!(close_code(out.last()), Some(1001));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_registered_after_shutdown_went_through_the_users_closes_1001() {
        // Shutdown tells authenticated connections through the user registry; this one is
        // registered after that, and must see the cancelled token itself.
        let app = app(|_| {});
        app.shut_down();
        let conn = drive(&app, Some(("bob", Role::Viewer)), 16);
        let out = all_within_a_minute(conn).await;
        assert_eq!(texts(&out)[0]["type"], "welcome");
        assert_eq!(close_code(out.last()), Some(1001));
    }

    #[tokio::test(start_paused = true)]
    async fn message_auth_gets_an_ack_and_no_welcome_and_cancels_the_deadline() {
        let app = app(|_| {});
        let token = app.auth.mint("bob", Role::Viewer, None, 60).unwrap();
        let conn = drive(&app, None, 16);
        conn.send(&format!(r#"{{"type":"auth","id":1,"token":"{token}"}}"#));
        // Long past the handshake timeout, the connection is still served.
        tokio::time::sleep(Duration::from_secs(60)).await;
        conn.send(r#"{"type":"ping","id":2}"#);
        tokio::time::sleep(Duration::from_millis(10)).await;
        app.shut_down();
        let (out, _) = conn.all().await;
        let frames = texts(&out);
        assert_eq!(frames[0]["type"], "ack");
        assert_eq!(frames[0]["result"]["user"], "bob");
        assert_eq!(frames[1]["id"], 2);
        assert!(frames.iter().all(|f| f["type"] != "welcome"));
        assert_eq!(close_code(out.last()), Some(1001));
    }

    #[tokio::test(start_paused = true)]
    async fn the_protocol_error_after_the_limit_is_answered_then_closes_4503() {
        let app = app(|c| c.server.protocol_errors_max = 3);
        let conn = drive(&app, Some(("bob", Role::Viewer)), 64);
        for _ in 0..10 {
            conn.send("{not json");
        }
        let (out, _) = conn.all().await;
        let errors = texts(&out)
            .into_iter()
            .filter(|f| f["type"] == "error")
            .count();
        // Three tolerated, the fourth answered and then the connection closes.
        assert_eq!(errors, 4);
        assert_eq!(close_code(out.last()), Some(4503));
    }

    /// A client that pipelines far more commands than its outbox holds, and reads its acks only
    /// afterwards, is not slow: its own acks must never get it dropped.
    #[tokio::test(start_paused = true)]
    async fn a_pipelining_client_is_held_back_not_dropped_by_its_own_acks() {
        let app = app(|c| {
            c.server.outbox_frames_max = 8;
            let lots = crate::config::Rate {
                per_sec: 1e6,
                burst: 1_000_000,
            };
            c.limits.connection.commands = lots;
            c.limits.user.commands = lots;
        });
        let mut conn = drive(&app, Some(("bob", Role::Viewer)), 4);
        for id in 1..=600 {
            conn.send(&format!(r#"{{"type":"ping","id":{id}}}"#));
        }
        let mut acks = 0;
        while acks < 600 {
            match conn.from_server.recv().await.expect("still connected") {
                Message::Text(t) if t.as_str().contains(r#""type":"ack""#) => acks += 1,
                Message::Text(t) if t.as_str().contains(r#""type":"welcome""#) => {}
                other => panic!("after {acks} acks: {other:?}"),
            }
        }
        assert_eq!(app.metrics.slow_consumers.get(), 0);
        app.shut_down();
        let (out, _) = conn.all().await;
        assert_eq!(close_code(out.last()), Some(1001));
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_reading_is_dropped_as_slow_then_reset() {
        let app = app(|_| {});
        // Room for the welcome only; the test never reads, like a stuck client.
        let conn = drive(&app, Some(("bob", Role::Viewer)), 1);
        conn.send(r#"{"type":"ping","id":1}"#);
        let started = tokio::time::Instant::now();
        let Driven {
            from_server,
            reset,
            done,
            to_server,
        } = conn;
        done.await.unwrap();
        let server = &app.config.server;
        // Detected after write_timeout_ms; reset after close_timeout_ms more, as nothing could be
        // written, not even the close frame.
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(server.write_timeout_ms + server.close_timeout_ms)
        );
        assert!(reset.is_requested());
        assert_eq!(app.metrics.slow_consumers.get(), 1);
        assert_eq!(app.metrics.close_resets.get(), 1);
        drop((from_server, to_server));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_client_that_reads_in_time_gets_close_4000_not_its_queued_frames() {
        let app = app(|_| {});
        let mut conn = drive(&app, Some(("bob", Role::Viewer)), 1);
        for id in 1..=3 {
            conn.send(&format!(r#"{{"type":"ping","id":{id}}}"#));
        }
        // Stuck for longer than write_timeout_ms, then the client reads again.
        let server = &app.config.server;
        tokio::time::sleep(Duration::from_millis(server.write_timeout_ms + 1)).await;
        assert_eq!(app.metrics.slow_consumers.get(), 1);
        let mut out = Vec::new();
        while let Some(m) = conn.from_server.recv().await {
            out.push(m);
        }
        conn.done.await.unwrap();
        assert_eq!(close_code(out.last()), Some(4000));
        // The welcome was in the pipe; the ping acks still queued were skipped.
        let frames = texts(&out);
        assert!(frames.len() <= 2, "{frames:?}");
        assert!(!conn.reset.is_requested());
        assert_eq!(app.metrics.close_resets.get(), 0);
    }

    /// A streamer's room "r" and a viewer in it, each driven through channels; returns the room
    /// once the viewer's join is acknowledged.
    async fn room_with_a_viewer(
        app: &TestApp,
        out_capacity: usize,
    ) -> (Driven, Driven, Arc<crate::room::Room>) {
        // The streamer's writer never waits for its socket either.
        let mut star = drive(app, Some(("star", Role::Streamer)), 4096);
        star.send(r#"{"type":"open_room","id":1,"room":"r","title":"t"}"#);
        while !matches!(star.from_server.recv().await, Some(Message::Text(t)) if t.as_str().contains(r#""id":1"#))
        {
        }
        let mut viewer = drive(app, Some(("amy", Role::Viewer)), out_capacity);
        viewer.send(r#"{"type":"join","id":1,"room":"r"}"#);
        while !matches!(viewer.from_server.recv().await, Some(Message::Text(t)) if t.as_str().contains(r#""type":"ack""#))
        {
        }
        let room = app.rooms.get("r").expect("the room is open");
        (star, viewer, room)
    }

    /// Events published while the viewer's writer gets no CPU (the test holds the only thread):
    /// to the writer, exactly a node that is slower than its room.
    fn publish_without_yielding(room: &crate::room::Room, events: u64) {
        for count in 0..events {
            room.announce(&server::EventKind::Viewers { count })
                .unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_writer_behind_with_a_socket_that_takes_everything_makes_the_room_busy() {
        let app = app(|_| {});
        let (_star, mut viewer, room) = room_with_a_viewer(&app, 4096).await;
        room.admit().expect("not busy yet");
        let busy = app.config.rooms.busy_backlog_events as u64;
        // Behind by more than busy_backlog_events, less than the ring. The mean backlog over the
        // two members (the streamer's writer keeps up) stays under the threshold: only the
        // writer's own report can tell the room.
        publish_without_yielding(&room, busy + 100);
        let mut seen = 0;
        while seen < busy + 100 {
            match viewer.from_server.recv().await.expect("still connected") {
                Message::Text(t) if t.as_str().contains(r#""kind":"viewers""#) => seen += 1,
                other => panic!("after {seen} events: {other:?}"),
            }
            if seen == 1 {
                assert!(
                    matches!(room.admit(), Err(Error::RoomBusy)),
                    "the writer found the node behind on its first batch"
                );
            }
        }
        assert!(app.metrics.fanout_node_behind.get() >= 1);
        assert_eq!(app.metrics.slow_consumers.get(), 0);
        tokio::time::sleep(crate::bounds::NODE_BEHIND_HOLD).await;
        room.admit()
            .expect("the writers caught up: the room takes commands again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_writer_lapped_while_its_socket_took_everything_is_sent_to_resync_not_called_slow() {
        let app = app(|c| {
            c.rooms.room_ring_frames = 16;
            c.rooms.busy_backlog_events = 12;
        });
        let (_star, viewer, room) = room_with_a_viewer(&app, 4096).await;
        publish_without_yielding(&room, 40);
        let (out, _) = viewer.all().await;
        assert_eq!(close_code(out.last()), Some(4002), "{out:?}");
        assert_eq!(app.metrics.slow_consumers.get(), 0);
        assert!(app.metrics.fanout_node_behind.get() >= 1);
        assert!(matches!(room.admit(), Err(Error::RoomBusy)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_writer_lapped_while_its_socket_was_full_is_slow() {
        let app = app(|c| {
            c.rooms.room_ring_frames = 16;
            c.rooms.busy_backlog_events = 12;
        });
        // Room for 2 frames: the client reads nothing more, so the writer waits on its socket.
        let (_star, viewer, room) = room_with_a_viewer(&app, 2).await;
        // A few at a time, so the streamer's writer keeps up: only the viewer's socket is full.
        for _ in 0..10 {
            publish_without_yielding(&room, 4);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let Driven {
            from_server, done, ..
        } = viewer;
        done.await.unwrap();
        drop(from_server);
        assert_eq!(app.metrics.slow_consumers.get(), 1);
        assert_eq!(app.metrics.fanout_node_behind.get(), 0);
        room.admit()
            .expect("a slow client does not make the room busy");
    }
}

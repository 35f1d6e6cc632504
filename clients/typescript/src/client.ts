import { TypedEmitter } from './emitter.js';
import { GiftdError, shouldReconnect } from './errors.js';
import { Sequencer } from './sequencer.js';
import type {
  AnswerEvent,
  AnsweredMessage,
  AnswerResult,
  AskResult,
  BalanceResult,
  Board,
  CloseRoomResult,
  ErrorMessage,
  ErrorReason,
  FreeAskResult,
  GiftEvent,
  GiftReceivedMessage,
  JoinResult,
  LeaderboardResult,
  LeaveResult,
  PaidAskResult,
  PingResult,
  PkResult,
  Position,
  QuestionEvent,
  Receipt,
  RecoveredJoin,
  Role,
  RoomClosedEvent,
  RoomEvent,
  Snapshot,
  ThankResult,
  ThanksEvent,
  ThanksMessage,
  ViewersEvent,
} from './protocol.js';

/** The part of the WebSocket API the client uses: the browser's `WebSocket` and `ws` both fit. */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  /** `ws` only: destroy the TCP connection at once. */
  terminate?: () => void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}

export type WebSocketConstructor = new (
  url: string,
  protocols?: string | string[],
  options?: { headers?: Record<string, string> },
) => WebSocketLike;

export interface ReconnectOptions {
  /** First delay in ms (default 250). */
  initialDelayMs?: number;
  /** Largest delay in ms (default 10,000). */
  maxDelayMs?: number;
  /** Attempts in a row before giving up (default: unlimited). */
  maxAttempts?: number;
}

export interface GiftdClientOptions {
  /** `ws://HOST:PORT/ws` (or `wss://`). */
  url: string;
  /** A token, or a function returning one, called before every connection (to refresh it). */
  token: string | (() => string | Promise<string>);
  /**
   * How the token is presented: `'header'` (`Authorization: Bearer`, Node's `ws` only), `'query'`
   * (`?token=`, for browsers) or `'message'` (an `auth` message after the upgrade, which keeps it
   * out of URLs). Default: `'header'` with the `ws` package, `'query'` with a global `WebSocket`.
   */
  auth?: 'header' | 'query' | 'message';
  /** The WebSocket constructor; default: the global `WebSocket`, else the `ws` package. */
  WebSocket?: WebSocketConstructor;
  reconnect?: ReconnectOptions | false;
  /** A command with no ack this long drops the connection as dead (default 15,000 ms). */
  requestTimeoutMs?: number;
  /** Sends a `ping` this often to find dead connections (default 25,000 ms; 0 = never). */
  pingIntervalMs?: number;
  /** A tap on every frame sent (`'out'`) and handled (`'in'`), for logging and tests. */
  onFrame?: (direction: 'in' | 'out', text: string) => void;
}

export interface ConnectedInfo {
  user: string;
  role: Role;
  /** True on the connections after the first. */
  reconnect: boolean;
}

export interface RejoinedInfo {
  room: string;
  /** True: every missed event follows (or has followed). False: `snapshot` replaces the state. */
  recovered: boolean;
  snapshot?: Snapshot;
}

export interface ClientEvents {
  connected: ConnectedInfo;
  disconnected: { code: number; reason: string; willReconnect: boolean };
  reconnecting: { attempt: number; delayMs: number };
  /** After a reconnect (or a gap), the client is back in its room. */
  rejoined: RejoinedInfo;
  /** After a reconnect, the room could not be joined again (closed meanwhile, ...). */
  roomLost: { room: string; error: GiftdError };
  /** A room's state: after `openRoom`, `join`, or a re-join that could not recover. */
  snapshot: Snapshot;
  /** Every room event, once each, in `seq` order. */
  event: RoomEvent;
  viewers: ViewersEvent;
  gift: GiftEvent;
  question: QuestionEvent;
  answer: AnswerEvent;
  thanks: ThanksEvent;
  room_closed: RoomClosedEvent;
  /** Private: the streamer thanked one of this user's gifts. */
  thanked: ThanksMessage;
  /** Private: the streamer answered this user's question. */
  answered: AnsweredMessage;
  /**
   * Private, to the streamer: a gift (or paid question) was committed in their room, with its
   * exact split (`store_coins`, `streamer_coins`, `platform_coins`), which the `gift` event lacks.
   */
  gift_received: GiftReceivedMessage;
  /** An error not tied to a command (a final close, an `error` with `id: null`). */
  error: GiftdError;
  /** The client stopped for good: `close()`, a final close code, or reconnects exhausted. */
  closed: { code: number; reason: string };
}

export type ClientState = 'idle' | 'connecting' | 'open' | 'rejoining' | 'reconnecting' | 'closed';

type Command = { type: string } & Record<string, unknown>;

interface Pending {
  order: number;
  wireId: number | null;
  command: Command;
  resolve: (result: unknown) => void;
  reject: (error: GiftdError) => void;
  /** May be sent again on a new connection: gifts and paid questions (by key), balance, ping. */
  resendable: boolean;
  key?: string;
  timer?: ReturnType<typeof setTimeout>;
  /** Internal requests (re-joins) bypass the queue. */
  internal?: boolean;
}

const OPEN = 1;

/** A fresh idempotency key: 128 random bits, hex. */
export function newIdempotencyKey(): string {
  const bytes = new Uint8Array(16);
  const crypto = (globalThis as { crypto?: { getRandomValues(a: Uint8Array): Uint8Array } }).crypto;
  if (!crypto) throw new Error('no crypto.getRandomValues: pass `key` to sendGift');
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/**
 * A giftd client: one promise per command, room events in order and exactly once, reconnects
 * with backoff that re-join the room from the last position delivered, and gifts that are resent
 * with their idempotency key until they get a receipt.
 */
export class GiftdClient extends TypedEmitter<ClientEvents> {
  private readonly opts: GiftdClientOptions;
  private ws: WebSocketLike | null = null;
  private wsCtor: WebSocketConstructor | null = null;
  private authMode: 'header' | 'query' | 'message' = 'query';
  private state_: ClientState = 'idle';
  private nextWireId = 1;
  private nextOrder = 1;
  /** Every command not yet answered, in the order the app made them. */
  private pending = new Map<number, Pending>();
  /** In-flight commands by wire id (this connection only). */
  private inFlight = new Map<number, Pending>();
  private seq = new Sequencer();
  /** The room is closing (close_room acked): do not re-join it. */
  private closingRoom = false;
  private connectedOnce = false;
  private attempt = 0;
  private reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  private pingTimer: ReturnType<typeof setInterval> | null = null;
  private connectWaiter: { resolve: (i: ConnectedInfo) => void; reject: (e: GiftdError) => void } | null =
    null;
  private handshakeStatus: number | null = null;
  private forceReconnect = false;
  private holdReconnect: Promise<unknown> | null = null;
  private deaf = false;
  private skipEventsLeft = 0;
  private resyncing = false;
  private lastClose = { code: 1000, reason: '' };
  private user_: { user: string; role: Role } | null = null;

  /** Counters, for monitoring and tests. */
  readonly stats = { reconnects: 0, duplicatesDropped: 0, gaps: 0, resends: 0 };

  constructor(options: GiftdClientOptions) {
    super();
    this.opts = options;
  }

  get state(): ClientState {
    return this.state_;
  }

  /** The authenticated user, once connected. */
  get user(): { user: string; role: Role } | null {
    return this.user_;
  }

  /** The room the client is in, as the SDK knows it. */
  get room(): string | null {
    return this.seq.currentRoom;
  }

  /** The position of the last room event delivered (or of the last snapshot). */
  get position(): Position | null {
    return this.seq.position;
  }

  /**
   * Connects and authenticates. Rejects if this first attempt fails; after it, lost connections
   * are re-established with backoff.
   */
  connect(): Promise<ConnectedInfo> {
    if (this.state_ !== 'idle' && this.state_ !== 'closed') {
      return Promise.reject(new Error(`connect() while ${this.state_}`));
    }
    this.connectedOnce = false;
    this.attempt = 0;
    this.seq.clear();
    this.closingRoom = false;
    return new Promise<ConnectedInfo>((resolve, reject) => {
      this.connectWaiter = { resolve, reject };
      void this.openSocket();
    });
  }

  /** Closes the connection for good; every unanswered command is rejected with `closed`. */
  close(): void {
    if (this.state_ === 'closed') return;
    this.finish(1000, 'closed by the client');
  }

  // ---- commands -------------------------------------------------------------------------------

  /** Opens a room as its streamer; resolves with its snapshot. */
  openRoom(room: string, title: string): Promise<Snapshot> {
    return this.request<Snapshot>({ type: 'open_room', room, title });
  }

  closeRoom(): Promise<CloseRoomResult> {
    return this.request<CloseRoomResult>({ type: 'close_room' });
  }

  /** Joins a room; resolves with its snapshot (also emitted as `snapshot`). */
  join(room: string, options: { since?: Position } = {}): Promise<JoinResult> {
    const command: Command = { type: 'join', room };
    if (options.since) command.since = { epoch: options.since.epoch, seq: options.since.seq };
    return this.request<JoinResult>(command);
  }

  leave(): Promise<LeaveResult> {
    return this.request<LeaveResult>({ type: 'leave' });
  }

  /**
   * Sends a gift. The idempotency key (made here unless given) is reused on every resend, across
   * reconnects, so the gift is charged at most once; on failure the error carries it as `key`.
   * The SDK resends only after a lost connection; it does not retry error replies. After
   * `room_busy` (nothing charged) or `room_unavailable` (charged or not: unknown), retry with
   * the SAME key, `sendGift(sticker, { key: error.key })`, never a new one.
   */
  sendGift(sticker: string, options: { key?: string } = {}): Promise<Receipt> {
    const key = options.key ?? newIdempotencyKey();
    return this.request<Receipt>({ type: 'send_gift', sticker, key }, { resendable: true, key });
  }

  /** Asks a question; with `sticker` it is a paid question (charged like a gift, by key). */
  ask(text: string): Promise<FreeAskResult>;
  ask(text: string, options: { sticker: string; key?: string }): Promise<PaidAskResult>;
  ask(text: string, options: { sticker?: string; key?: string } = {}): Promise<AskResult> {
    if (options.sticker === undefined) return this.request<FreeAskResult>({ type: 'ask', text });
    const key = options.key ?? newIdempotencyKey();
    return this.request<PaidAskResult>(
      { type: 'ask', text, sticker: options.sticker, key },
      { resendable: true, key },
    );
  }

  answer(questionId: number, text: string): Promise<AnswerResult> {
    return this.request<AnswerResult>({ type: 'answer', question_id: questionId, text });
  }

  thank(giftId: string, text?: string): Promise<ThankResult> {
    const command: Command = { type: 'thank', gift_id: giftId };
    if (text !== undefined) command.text = text;
    return this.request<ThankResult>(command);
  }

  /** A board of the current room: its top N, and with `around`, that user's rank and neighbours. */
  leaderboard(board: Board, opts: { around?: string } = {}): Promise<LeaderboardResult> {
    const command: Command = { type: 'leaderboard', board };
    if (opts.around !== undefined) command.around = opts.around;
    return this.request<LeaderboardResult>(command, { resendable: true });
  }

  /** Streamer: challenges the streamer of live room `room` to a PK battle. */
  pkChallenge(room: string): Promise<PkResult> {
    return this.request<PkResult>({ type: 'pk_challenge', room });
  }

  /** Streamer: accepts a challenge to the current room (its id is in the `pk_invite` event). */
  pkAccept(battleId: string): Promise<PkResult> {
    return this.request<PkResult>({ type: 'pk_accept', battle_id: battleId });
  }

  /** Streamer: declines a challenge to the current room. */
  pkDecline(battleId: string): Promise<PkResult> {
    return this.request<PkResult>({ type: 'pk_decline', battle_id: battleId });
  }

  /** Streamer: leaves the current room's battle (the other room wins) or withdraws a challenge. */
  pkLeave(battleId: string): Promise<PkResult> {
    return this.request<PkResult>({ type: 'pk_leave', battle_id: battleId });
  }

  balance(): Promise<BalanceResult> {
    return this.request<BalanceResult>({ type: 'balance' }, { resendable: true });
  }

  ping(): Promise<PingResult> {
    return this.request<PingResult>({ type: 'ping' }, { resendable: true });
  }

  // ---- test hooks (not part of the API) -----------------------------------------------------

  /**
   * @internal Test hook: ends the connection abruptly (a TCP reset with `ws`), as a network
   * failure would; the client reconnects as after a 1006. `holdReconnect` delays the reconnect
   * until it settles.
   */
  dropConnection(options: { holdReconnect?: Promise<unknown> } = {}): void {
    const ws = this.ws;
    if (!ws) return;
    this.forceReconnect = true;
    this.holdReconnect = options.holdReconnect ?? null;
    if (ws.terminate) ws.terminate();
    else ws.close(4000, 'dropped');
  }

  /** @internal Test hook: ignore every frame from now until the connection ends. */
  _deafen(): void {
    this.deaf = true;
  }

  /** @internal Test hook: lose the next `n` room-event frames, as if they had never arrived. */
  _loseEvents(n: number): void {
    this.skipEventsLeft = n;
  }

  /** @internal Test hook: re-join the current room from an older position (to cause duplicates). */
  _rejoinFrom(since: Position): void {
    this.resync(since);
  }

  // ---- internals ------------------------------------------------------------------------------

  private request<T>(command: Command, extra: { resendable?: boolean; key?: string } = {}): Promise<T> {
    if (this.state_ === 'closed' || this.state_ === 'idle') {
      return Promise.reject(
        new GiftdError(0, 'not_connected', 'the client is not connected', keyOf(extra.key)),
      );
    }
    return new Promise<T>((resolve, reject) => {
      const p: Pending = {
        order: this.nextOrder++,
        wireId: null,
        command,
        resolve: resolve as (r: unknown) => void,
        reject,
        resendable: extra.resendable ?? false,
      };
      if (extra.key !== undefined) p.key = extra.key;
      this.pending.set(p.order, p);
      if (this.state_ === 'open') this.transmit(p);
    });
  }

  private transmit(p: Pending): void {
    const ws = this.ws;
    if (!ws || ws.readyState !== OPEN) return;
    p.wireId = this.nextWireId++;
    this.inFlight.set(p.wireId, p);
    const timeout = this.opts.requestTimeoutMs ?? 15_000;
    p.timer = setTimeout(() => this.onTimeout(p), timeout);
    const text = JSON.stringify({ ...p.command, id: p.wireId });
    ws.send(text);
    this.opts.onFrame?.('out', text);
  }

  private onTimeout(p: Pending): void {
    if (p.wireId === null || !this.inFlight.has(p.wireId)) return;
    if (!p.resendable) {
      this.settle(p);
      p.reject(new GiftdError(0, 'timeout', `no reply to ${p.command.type}`, keyOf(p.key)));
    }
    // The server answers every command: one without an answer means a dead connection.
    this.dropConnection();
  }

  /** Removes a pending command from the books (before resolving or rejecting it). */
  private settle(p: Pending): void {
    if (p.timer) clearTimeout(p.timer);
    if (p.wireId !== null) this.inFlight.delete(p.wireId);
    this.pending.delete(p.order);
  }

  /** Sends every queued command, in the order the app made them. */
  private flush(): void {
    const queued = [...this.pending.values()]
      .filter((p) => p.wireId === null && !p.internal)
      .sort((a, b) => a.order - b.order);
    for (const p of queued) {
      if (this.state_ !== 'open') return;
      this.transmit(p);
    }
  }

  private async openSocket(): Promise<void> {
    this.state_ = 'connecting';
    this.handshakeStatus = null;
    this.deaf = false;
    this.skipEventsLeft = 0;
    this.resyncing = false;
    let token: string;
    let ws: WebSocketLike;
    try {
      token = typeof this.opts.token === 'function' ? await this.opts.token() : this.opts.token;
      const Ctor = await this.constructorToUse();
      if (this.state_ !== 'connecting') return; // closed meanwhile
      let url = this.opts.url;
      if (this.authMode === 'query') {
        url += (url.includes('?') ? '&' : '?') + 'token=' + encodeURIComponent(token);
      }
      ws =
        this.authMode === 'header'
          ? new Ctor(url, [], { headers: { Authorization: `Bearer ${token}` } })
          : new Ctor(url);
    } catch (e) {
      this.onSocketClosed(null, 1006, e instanceof Error ? e.message : String(e));
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      if (this.authMode === 'message') {
        const p: Pending = {
          order: this.nextOrder++,
          wireId: null,
          command: { type: 'auth', token },
          internal: true,
          resendable: false,
          resolve: (r) => {
            const result = r as { user: string; role: Role };
            this.onAuthenticated(result.user, result.role);
          },
          reject: (e) => this.failConnect(e),
        };
        this.pending.set(p.order, p);
        this.transmit(p);
      }
    };
    ws.onmessage = (ev) => {
      if (this.ws !== ws || this.deaf) return;
      this.onFrame(typeof ev.data === 'string' ? ev.data : String(ev.data));
    };
    ws.onerror = (ev) => {
      const message = (ev as { message?: unknown })?.message;
      const m = typeof message === 'string' ? /Unexpected server response: (\d+)/.exec(message) : null;
      if (m) this.handshakeStatus = Number(m[1]);
    };
    ws.onclose = (ev) => this.onSocketClosed(ws, ev.code, ev.reason);
  }

  private async constructorToUse(): Promise<WebSocketConstructor> {
    if (this.wsCtor) return this.wsCtor;
    let ctor = this.opts.WebSocket;
    let mode: 'header' | 'query' = 'query';
    if (!ctor) {
      const global = (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
      if (global) {
        ctor = global;
      } else {
        const mod = (await import('ws')) as unknown as { default: WebSocketConstructor };
        ctor = mod.default;
        mode = 'header';
      }
    } else if ((ctor as unknown as { prototype?: { terminate?: unknown } }).prototype?.terminate) {
      mode = 'header'; // the `ws` package, injected
    }
    this.authMode = this.opts.auth ?? mode;
    this.wsCtor = ctor;
    return ctor;
  }

  /** The `auth` message was refused (the server then closes with 4502). */
  private failConnect(error: GiftdError): void {
    if (error.code === 0) return; // the connection was lost: its close decides
    const waiter = this.connectWaiter;
    this.connectWaiter = null;
    if (waiter) waiter.reject(error);
    else this.emit('error', error);
  }

  private onFrame(text: string): void {
    this.opts.onFrame?.('in', text);
    let msg: { type?: unknown } & Record<string, unknown>;
    try {
      msg = JSON.parse(text) as typeof msg;
    } catch {
      return;
    }
    switch (msg.type) {
      case 'welcome':
        this.onAuthenticated(msg.user as string, msg.role as Role);
        return;
      case 'ack':
      case 'error':
        this.onReply(msg);
        return;
      case 'event':
        this.onEvent(msg as unknown as RoomEvent);
        return;
      case 'thanks':
        this.emit('thanked', msg as unknown as ThanksMessage);
        return;
      case 'answered':
        this.emit('answered', msg as unknown as AnsweredMessage);
        return;
      case 'gift_received':
        this.emit('gift_received', msg as unknown as GiftReceivedMessage);
        return;
      default:
        return; // a newer server's frame: ignore it
    }
  }

  private onAuthenticated(user: string, role: Role): void {
    this.user_ = { user, role };
    const reconnect = this.connectedOnce;
    this.connectedOnce = true;
    this.attempt = 0;
    this.emit('connected', { user, role, reconnect });
    const waiter = this.connectWaiter;
    this.connectWaiter = null;
    waiter?.resolve({ user, role, reconnect });
    const room = this.seq.currentRoom;
    const position = this.seq.position;
    if (reconnect && room !== null && position !== null && !this.closingRoom) {
      this.rejoin(room, position, false);
    } else {
      if (this.closingRoom) {
        this.seq.clear();
        this.closingRoom = false;
      }
      this.startOpen();
    }
    if (this.pingTimer === null && (this.opts.pingIntervalMs ?? 25_000) > 0) {
      this.pingTimer = setInterval(() => {
        if (this.state_ === 'open') this.ping().catch(() => undefined);
      }, this.opts.pingIntervalMs ?? 25_000);
      (this.pingTimer as { unref?: () => void }).unref?.();
    }
  }

  private startOpen(): void {
    this.state_ = 'open';
    this.flush();
  }

  /**
   * Joins `room` again from `since`, before any queued command is sent. `resync` is true when
   * this connection was already in the room (a gap): then it leaves first.
   */
  private rejoin(room: string, since: Position, resync: boolean): void {
    this.state_ = 'rejoining';
    this.resyncing = true;
    const join: Pending = {
      order: this.nextOrder++,
      wireId: null,
      command: { type: 'join', room, since: { epoch: since.epoch, seq: since.seq } },
      internal: true,
      resendable: false,
      resolve: (r) => {
        this.resyncing = false;
        const result = r as JoinResult;
        if (result.recovered === true) {
          this.emit('rejoined', { room, recovered: true });
        } else {
          const snapshot = result as Snapshot;
          this.seq.reset(snapshot.room, { epoch: snapshot.epoch, seq: snapshot.seq });
          this.emit('snapshot', snapshot);
          this.emit('rejoined', { room, recovered: false, snapshot });
        }
        this.startOpen();
      },
      reject: (error) => {
        this.resyncing = false;
        // The connection is gone (or about to be, after a timeout): the next one re-joins.
        if (error.code === 0) return;
        this.seq.clear();
        this.emit('roomLost', { room, error });
        this.startOpen();
      },
    };
    if (resync) {
      const leave: Pending = {
        order: this.nextOrder++,
        wireId: null,
        command: { type: 'leave' },
        internal: true,
        resendable: false,
        resolve: () => undefined,
        reject: () => undefined,
      };
      this.pending.set(leave.order, leave);
      this.transmit(leave);
    }
    this.pending.set(join.order, join);
    this.transmit(join);
  }

  /** A gap on a live connection: leave and join again from the last position delivered. */
  private resync(since?: Position): void {
    const room = this.seq.currentRoom;
    const position = since ?? this.seq.position;
    if (this.resyncing || room === null || position === null || this.state_ !== 'open') return;
    this.rejoin(room, position, true);
  }

  private onReply(msg: Record<string, unknown>): void {
    const id = msg.id;
    if (typeof id !== 'number') {
      const e = msg as unknown as ErrorMessage;
      this.emit('error', new GiftdError(e.code, e.reason, e.message));
      return;
    }
    const p = this.inFlight.get(id);
    if (!p) return;
    this.settle(p);
    if (msg.type === 'error') {
      const e = msg as unknown as ErrorMessage;
      p.reject(new GiftdError(e.code, e.reason as ErrorReason, e.message, keyOf(p.key)));
      return;
    }
    const result = msg.result;
    if (!p.internal) this.onCommandAck(p.command, result);
    p.resolve(result);
  }

  /** Keeps the room state in step with the app's own room commands. */
  private onCommandAck(command: Command, result: unknown): void {
    switch (command.type) {
      case 'open_room':
      case 'join': {
        const r = result as Snapshot | RecoveredJoin;
        this.closingRoom = false;
        if (r.recovered === true) {
          // The app joined with its own `since`: it has everything up to there.
          this.seq.reset(r.room, { epoch: r.epoch, seq: r.seq });
        } else {
          this.seq.reset(r.room, { epoch: r.epoch, seq: r.seq });
          this.emit('snapshot', r);
        }
        return;
      }
      case 'leave':
        this.seq.clear();
        return;
      case 'close_room': {
        const r = result as CloseRoomResult;
        const pos = this.seq.position;
        if (pos !== null && pos.seq >= r.seq) this.seq.clear();
        else this.closingRoom = true; // cleared when its room_closed event is delivered
        return;
      }
      default:
        return;
    }
  }

  private onEvent(event: RoomEvent): void {
    if (this.skipEventsLeft > 0) {
      this.skipEventsLeft--;
      return;
    }
    if (this.resyncing) return; // the re-join delivers everything after the position again
    const verdict = this.seq.check(event);
    switch (verdict) {
      case 'duplicate':
        this.stats.duplicatesDropped++;
        return;
      case 'foreign':
        return;
      case 'gap':
        this.stats.gaps++;
        this.resync();
        return;
      case 'deliver':
        break;
    }
    this.emit('event', event);
    switch (event.kind) {
      case 'viewers':
        this.emit('viewers', event);
        break;
      case 'gift':
        this.emit('gift', event);
        break;
      case 'question':
        this.emit('question', event);
        break;
      case 'answer':
        this.emit('answer', event);
        break;
      case 'thanks':
        this.emit('thanks', event);
        break;
      case 'room_closed':
        this.seq.clear();
        this.closingRoom = false;
        this.emit('room_closed', event);
        break;
    }
  }

  private onSocketClosed(ws: WebSocketLike | null, code: number, reason: string): void {
    if (ws !== null && this.ws !== ws) return;
    this.ws = null;
    this.lastClose = { code, reason };
    this.resyncing = false;
    // Commands in flight on the lost connection: resend the safe ones, fail the others.
    for (const p of [...this.inFlight.values()]) {
      if (p.timer) clearTimeout(p.timer);
      this.inFlight.delete(p.wireId as number);
      if (p.resendable) {
        p.wireId = null;
        this.stats.resends++;
      } else {
        this.pending.delete(p.order);
        p.reject(
          new GiftdError(0, 'connection_lost', `connection lost before the reply to ${p.command.type}`),
        );
      }
    }
    if (this.state_ === 'closed') return;
    const forced = this.forceReconnect;
    this.forceReconnect = false;
    const status = this.handshakeStatus;
    let again = forced || shouldReconnect(code);
    if (status === 401 || status === 403) again = false;
    if (!this.connectedOnce) again = false; // the first attempt failed: connect() rejects
    if (this.opts.reconnect === false) again = false;
    this.emit('disconnected', { code, reason, willReconnect: again });
    if (!again) {
      const error =
        status !== null
          ? new GiftdError(0, 'handshake_refused', `handshake refused with HTTP ${status}`, { status })
          : new GiftdError(0, 'closed', `connection closed: ${code} ${reason}`.trim());
      const waiter = this.connectWaiter;
      this.connectWaiter = null;
      waiter?.reject(error);
      if (this.connectedOnce) this.emit('error', error);
      this.finish(code, reason);
      return;
    }
    this.scheduleReconnect();
  }

  private scheduleReconnect(): void {
    const r = this.opts.reconnect || {};
    this.attempt++;
    if (this.attempt > (r.maxAttempts ?? Infinity)) {
      this.emit('error', new GiftdError(0, 'closed', `gave up after ${this.attempt - 1} reconnects`));
      this.finish(this.lastClose.code, this.lastClose.reason);
      return;
    }
    const delayMs = reconnectDelay(this.attempt, this.lastClose.code, r);
    this.state_ = 'reconnecting';
    this.emit('reconnecting', { attempt: this.attempt, delayMs });
    const hold = this.holdReconnect;
    this.holdReconnect = null;
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      const go = () => {
        if (this.state_ !== 'reconnecting') return;
        this.stats.reconnects++;
        void this.openSocket();
      };
      if (hold) hold.then(go, go);
      else go();
    }, delayMs);
  }

  private finish(code: number, reason: string): void {
    const wasClosed = this.state_ === 'closed';
    this.state_ = 'closed';
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    if (this.pingTimer) clearInterval(this.pingTimer);
    this.pingTimer = null;
    const ws = this.ws;
    this.ws = null;
    if (ws && ws.readyState <= OPEN) ws.close(1000, 'normal');
    for (const p of [...this.pending.values()]) {
      this.settle(p);
      p.reject(new GiftdError(0, 'closed', 'the client closed', keyOf(p.key)));
    }
    const waiter = this.connectWaiter;
    this.connectWaiter = null;
    waiter?.reject(new GiftdError(0, 'closed', 'the client closed'));
    if (!wasClosed) this.emit('closed', { code, reason });
  }
}

/** Close 4002 `resync` (PROTOCOL.md §9, §12): reconnect at once and re-join with `since`. */
export const RESYNC_CLOSE_CODE = 4002;

/**
 * The delay before reconnect attempt `attempt` (1 for the first after a loss): exponential from
 * `initialDelayMs` up to `maxDelayMs`, with "equal jitter" (half fixed, half random). The first
 * attempt after close 4002 `resync` is immediate: the server asks for it, nothing is wrong with
 * the client or its network. If that attempt fails, the usual backoff follows.
 */
export function reconnectDelay(
  attempt: number,
  closeCode: number,
  options: ReconnectOptions = {},
  random: () => number = Math.random,
): number {
  if (closeCode === RESYNC_CLOSE_CODE && attempt === 1) return 0;
  const initial = options.initialDelayMs ?? 250;
  const max = options.maxDelayMs ?? 10_000;
  const base = Math.min(max, initial * 2 ** (attempt - 1));
  return Math.round(base / 2 + random() * (base / 2));
}

function keyOf(key: string | undefined): { key?: string } {
  return key === undefined ? {} : { key };
}

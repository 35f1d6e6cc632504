// Built by clients/demo/build.mjs from clients/demo/src and clients/typescript/src. Do not edit.

// ../typescript/src/emitter.ts
var TypedEmitter = class {
  listeners = /* @__PURE__ */ new Map();
  /** Subscribes; returns a function that unsubscribes. */
  on(name, listener) {
    let set = this.listeners.get(name);
    if (!set) {
      set = /* @__PURE__ */ new Set();
      this.listeners.set(name, set);
    }
    set.add(listener);
    return () => this.off(name, listener);
  }
  /** Subscribes for the next emission only. */
  once(name, listener) {
    const off = this.on(name, (payload) => {
      off();
      listener(payload);
    });
    return off;
  }
  off(name, listener) {
    this.listeners.get(name)?.delete(listener);
  }
  /** Calls every listener; a listener that throws does not stop the others or the client. */
  emit(name, payload) {
    const set = this.listeners.get(name);
    if (!set) return;
    for (const listener of [...set]) {
      try {
        listener(payload);
      } catch (e) {
        console.error(`giftd client: a '${String(name)}' listener threw`, e);
      }
    }
  }
};

// ../typescript/src/errors.ts
var GiftdError = class extends Error {
  code;
  reason;
  /** The idempotency key of the gift (or paid question) that failed: resend with it to retry. */
  key;
  /** The HTTP status of a refused handshake. */
  status;
  constructor(code, reason, message, extra = {}) {
    super(message);
    this.name = "GiftdError";
    this.code = code;
    this.reason = reason;
    if (extra.key !== void 0) this.key = extra.key;
    if (extra.status !== void 0) this.status = extra.status;
  }
};
function shouldReconnect(code) {
  if (code >= 4e3 && code <= 4499) return true;
  return [1001, 1005, 1006, 1011, 1012, 1013, 1014].includes(code);
}

// ../typescript/src/sequencer.ts
var Sequencer = class {
  room = null;
  pos = null;
  /** Enters `room` at `position` (a snapshot's `{epoch, seq}`, or a recovered position). */
  reset(room, position) {
    this.room = room;
    this.pos = { epoch: position.epoch, seq: position.seq };
  }
  clear() {
    this.room = null;
    this.pos = null;
  }
  get currentRoom() {
    return this.room;
  }
  /** The position of the last event delivered (or of the snapshot), if in a room. */
  get position() {
    return this.pos ? { ...this.pos } : null;
  }
  check(event) {
    if (this.room === null || this.pos === null || event.room !== this.room) return "foreign";
    if (event.epoch !== this.pos.epoch) return "gap";
    if (event.seq <= this.pos.seq) return "duplicate";
    if (event.seq !== this.pos.seq + 1) return "gap";
    this.pos.seq = event.seq;
    return "deliver";
  }
};

// ../typescript/src/client.ts
var OPEN = 1;
function newIdempotencyKey() {
  const bytes = new Uint8Array(16);
  const crypto = globalThis.crypto;
  if (!crypto) throw new Error("no crypto.getRandomValues: pass `key` to sendGift");
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
var GiftdClient = class extends TypedEmitter {
  opts;
  ws = null;
  wsCtor = null;
  authMode = "query";
  state_ = "idle";
  nextWireId = 1;
  nextOrder = 1;
  /** Every command not yet answered, in the order the app made them. */
  pending = /* @__PURE__ */ new Map();
  /** In-flight commands by wire id (this connection only). */
  inFlight = /* @__PURE__ */ new Map();
  seq = new Sequencer();
  /** The room is closing (close_room acked): do not re-join it. */
  closingRoom = false;
  connectedOnce = false;
  attempt = 0;
  reconnectTimer = null;
  pingTimer = null;
  connectWaiter = null;
  handshakeStatus = null;
  forceReconnect = false;
  holdReconnect = null;
  deaf = false;
  skipEventsLeft = 0;
  resyncing = false;
  lastClose = { code: 1e3, reason: "" };
  user_ = null;
  /** Counters, for monitoring and tests. */
  stats = { reconnects: 0, duplicatesDropped: 0, gaps: 0, resends: 0 };
  constructor(options) {
    super();
    this.opts = options;
  }
  get state() {
    return this.state_;
  }
  /** The authenticated user, once connected. */
  get user() {
    return this.user_;
  }
  /** The room the client is in, as the SDK knows it. */
  get room() {
    return this.seq.currentRoom;
  }
  /** The position of the last room event delivered (or of the last snapshot). */
  get position() {
    return this.seq.position;
  }
  /**
   * Connects and authenticates. Rejects if this first attempt fails; after it, lost connections
   * are re-established with backoff.
   */
  connect() {
    if (this.state_ !== "idle" && this.state_ !== "closed") {
      return Promise.reject(new Error(`connect() while ${this.state_}`));
    }
    this.connectedOnce = false;
    this.attempt = 0;
    this.seq.clear();
    this.closingRoom = false;
    return new Promise((resolve, reject) => {
      this.connectWaiter = { resolve, reject };
      void this.openSocket();
    });
  }
  /** Closes the connection for good; every unanswered command is rejected with `closed`. */
  close() {
    if (this.state_ === "closed") return;
    this.finish(1e3, "closed by the client");
  }
  // ---- commands -------------------------------------------------------------------------------
  /** Opens a room as its streamer; resolves with its snapshot. */
  openRoom(room, title) {
    return this.request({ type: "open_room", room, title });
  }
  closeRoom() {
    return this.request({ type: "close_room" });
  }
  /** Joins a room; resolves with its snapshot (also emitted as `snapshot`). */
  join(room, options = {}) {
    const command = { type: "join", room };
    if (options.since) command.since = { epoch: options.since.epoch, seq: options.since.seq };
    return this.request(command);
  }
  leave() {
    return this.request({ type: "leave" });
  }
  /**
   * Sends a gift. The idempotency key (made here unless given) is reused on every resend, across
   * reconnects, so the gift is charged at most once; on failure the error carries it as `key`.
   * The SDK resends only after a lost connection; it does not retry error replies. After
   * `room_busy` (nothing charged) or `room_unavailable` (charged or not: unknown), retry with
   * the SAME key, `sendGift(sticker, { key: error.key })`, never a new one.
   */
  sendGift(sticker, options = {}) {
    const key = options.key ?? newIdempotencyKey();
    return this.request({ type: "send_gift", sticker, key }, { resendable: true, key });
  }
  ask(text, options = {}) {
    if (options.sticker === void 0) return this.request({ type: "ask", text });
    const key = options.key ?? newIdempotencyKey();
    return this.request(
      { type: "ask", text, sticker: options.sticker, key },
      { resendable: true, key }
    );
  }
  answer(questionId, text) {
    return this.request({ type: "answer", question_id: questionId, text });
  }
  thank(giftId, text) {
    const command = { type: "thank", gift_id: giftId };
    if (text !== void 0) command.text = text;
    return this.request(command);
  }
  /** A board of the current room: its top N, and with `around`, that user's rank and neighbours. */
  leaderboard(board, opts = {}) {
    const command = { type: "leaderboard", board };
    if (opts.around !== void 0) command.around = opts.around;
    return this.request(command, { resendable: true });
  }
  /** Streamer: challenges the streamer of live room `room` to a PK battle. */
  pkChallenge(room) {
    return this.request({ type: "pk_challenge", room });
  }
  /** Streamer: accepts a challenge to the current room (its id is in the `pk_invite` event). */
  pkAccept(battleId) {
    return this.request({ type: "pk_accept", battle_id: battleId });
  }
  /** Streamer: declines a challenge to the current room. */
  pkDecline(battleId) {
    return this.request({ type: "pk_decline", battle_id: battleId });
  }
  /** Streamer: leaves the current room's battle (the other room wins) or withdraws a challenge. */
  pkLeave(battleId) {
    return this.request({ type: "pk_leave", battle_id: battleId });
  }
  balance() {
    return this.request({ type: "balance" }, { resendable: true });
  }
  ping() {
    return this.request({ type: "ping" }, { resendable: true });
  }
  // ---- test hooks (not part of the API) -----------------------------------------------------
  /**
   * @internal Test hook: ends the connection abruptly (a TCP reset with `ws`), as a network
   * failure would; the client reconnects as after a 1006. `holdReconnect` delays the reconnect
   * until it settles.
   */
  dropConnection(options = {}) {
    const ws = this.ws;
    if (!ws) return;
    this.forceReconnect = true;
    this.holdReconnect = options.holdReconnect ?? null;
    if (ws.terminate) ws.terminate();
    else ws.close(4e3, "dropped");
  }
  /** @internal Test hook: ignore every frame from now until the connection ends. */
  _deafen() {
    this.deaf = true;
  }
  /** @internal Test hook: lose the next `n` room-event frames, as if they had never arrived. */
  _loseEvents(n) {
    this.skipEventsLeft = n;
  }
  /** @internal Test hook: re-join the current room from an older position (to cause duplicates). */
  _rejoinFrom(since) {
    this.resync(since);
  }
  // ---- internals ------------------------------------------------------------------------------
  request(command, extra = {}) {
    if (this.state_ === "closed" || this.state_ === "idle") {
      return Promise.reject(
        new GiftdError(0, "not_connected", "the client is not connected", keyOf(extra.key))
      );
    }
    return new Promise((resolve, reject) => {
      const p = {
        order: this.nextOrder++,
        wireId: null,
        command,
        resolve,
        reject,
        resendable: extra.resendable ?? false
      };
      if (extra.key !== void 0) p.key = extra.key;
      this.pending.set(p.order, p);
      if (this.state_ === "open") this.transmit(p);
    });
  }
  transmit(p) {
    const ws = this.ws;
    if (!ws || ws.readyState !== OPEN) return;
    p.wireId = this.nextWireId++;
    this.inFlight.set(p.wireId, p);
    const timeout = this.opts.requestTimeoutMs ?? 15e3;
    p.timer = setTimeout(() => this.onTimeout(p), timeout);
    const text = JSON.stringify({ ...p.command, id: p.wireId });
    ws.send(text);
    this.opts.onFrame?.("out", text);
  }
  onTimeout(p) {
    if (p.wireId === null || !this.inFlight.has(p.wireId)) return;
    if (!p.resendable) {
      this.settle(p);
      p.reject(new GiftdError(0, "timeout", `no reply to ${p.command.type}`, keyOf(p.key)));
    }
    this.dropConnection();
  }
  /** Removes a pending command from the books (before resolving or rejecting it). */
  settle(p) {
    if (p.timer) clearTimeout(p.timer);
    if (p.wireId !== null) this.inFlight.delete(p.wireId);
    this.pending.delete(p.order);
  }
  /** Sends every queued command, in the order the app made them. */
  flush() {
    const queued = [...this.pending.values()].filter((p) => p.wireId === null && !p.internal).sort((a, b) => a.order - b.order);
    for (const p of queued) {
      if (this.state_ !== "open") return;
      this.transmit(p);
    }
  }
  async openSocket() {
    this.state_ = "connecting";
    this.handshakeStatus = null;
    this.deaf = false;
    this.skipEventsLeft = 0;
    this.resyncing = false;
    let token;
    let ws;
    try {
      token = typeof this.opts.token === "function" ? await this.opts.token() : this.opts.token;
      const Ctor = await this.constructorToUse();
      if (this.state_ !== "connecting") return;
      let url = this.opts.url;
      if (this.authMode === "query") {
        url += (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
      }
      ws = this.authMode === "header" ? new Ctor(url, [], { headers: { Authorization: `Bearer ${token}` } }) : new Ctor(url);
    } catch (e) {
      this.onSocketClosed(null, 1006, e instanceof Error ? e.message : String(e));
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      if (this.authMode === "message") {
        const p = {
          order: this.nextOrder++,
          wireId: null,
          command: { type: "auth", token },
          internal: true,
          resendable: false,
          resolve: (r) => {
            const result = r;
            this.onAuthenticated(result.user, result.role);
          },
          reject: (e) => this.failConnect(e)
        };
        this.pending.set(p.order, p);
        this.transmit(p);
      }
    };
    ws.onmessage = (ev) => {
      if (this.ws !== ws || this.deaf) return;
      this.onFrame(typeof ev.data === "string" ? ev.data : String(ev.data));
    };
    ws.onerror = (ev) => {
      const message = ev?.message;
      const m = typeof message === "string" ? /Unexpected server response: (\d+)/.exec(message) : null;
      if (m) this.handshakeStatus = Number(m[1]);
    };
    ws.onclose = (ev) => this.onSocketClosed(ws, ev.code, ev.reason);
  }
  async constructorToUse() {
    if (this.wsCtor) return this.wsCtor;
    let ctor = this.opts.WebSocket;
    let mode = "query";
    if (!ctor) {
      const global = globalThis.WebSocket;
      if (global) {
        ctor = global;
      } else {
        const mod = await import("ws");
        ctor = mod.default;
        mode = "header";
      }
    } else if (ctor.prototype?.terminate) {
      mode = "header";
    }
    this.authMode = this.opts.auth ?? mode;
    this.wsCtor = ctor;
    return ctor;
  }
  /** The `auth` message was refused (the server then closes with 4502). */
  failConnect(error) {
    if (error.code === 0) return;
    const waiter = this.connectWaiter;
    this.connectWaiter = null;
    if (waiter) waiter.reject(error);
    else this.emit("error", error);
  }
  onFrame(text) {
    this.opts.onFrame?.("in", text);
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      return;
    }
    switch (msg.type) {
      case "welcome":
        this.onAuthenticated(msg.user, msg.role);
        return;
      case "ack":
      case "error":
        this.onReply(msg);
        return;
      case "event":
        this.onEvent(msg);
        return;
      case "thanks":
        this.emit("thanked", msg);
        return;
      case "answered":
        this.emit("answered", msg);
        return;
      case "gift_received":
        this.emit("gift_received", msg);
        return;
      default:
        return;
    }
  }
  onAuthenticated(user, role) {
    this.user_ = { user, role };
    const reconnect = this.connectedOnce;
    this.connectedOnce = true;
    this.attempt = 0;
    this.emit("connected", { user, role, reconnect });
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
    if (this.pingTimer === null && (this.opts.pingIntervalMs ?? 25e3) > 0) {
      this.pingTimer = setInterval(() => {
        if (this.state_ === "open") this.ping().catch(() => void 0);
      }, this.opts.pingIntervalMs ?? 25e3);
      this.pingTimer.unref?.();
    }
  }
  startOpen() {
    this.state_ = "open";
    this.flush();
  }
  /**
   * Joins `room` again from `since`, before any queued command is sent. `resync` is true when
   * this connection was already in the room (a gap): then it leaves first.
   */
  rejoin(room, since, resync) {
    this.state_ = "rejoining";
    this.resyncing = true;
    const join = {
      order: this.nextOrder++,
      wireId: null,
      command: { type: "join", room, since: { epoch: since.epoch, seq: since.seq } },
      internal: true,
      resendable: false,
      resolve: (r) => {
        this.resyncing = false;
        const result = r;
        if (result.recovered === true) {
          this.emit("rejoined", { room, recovered: true });
        } else {
          const snapshot = result;
          this.seq.reset(snapshot.room, { epoch: snapshot.epoch, seq: snapshot.seq });
          this.emit("snapshot", snapshot);
          this.emit("rejoined", { room, recovered: false, snapshot });
        }
        this.startOpen();
      },
      reject: (error) => {
        this.resyncing = false;
        if (error.code === 0) return;
        this.seq.clear();
        this.emit("roomLost", { room, error });
        this.startOpen();
      }
    };
    if (resync) {
      const leave = {
        order: this.nextOrder++,
        wireId: null,
        command: { type: "leave" },
        internal: true,
        resendable: false,
        resolve: () => void 0,
        reject: () => void 0
      };
      this.pending.set(leave.order, leave);
      this.transmit(leave);
    }
    this.pending.set(join.order, join);
    this.transmit(join);
  }
  /** A gap on a live connection: leave and join again from the last position delivered. */
  resync(since) {
    const room = this.seq.currentRoom;
    const position = since ?? this.seq.position;
    if (this.resyncing || room === null || position === null || this.state_ !== "open") return;
    this.rejoin(room, position, true);
  }
  onReply(msg) {
    const id = msg.id;
    if (typeof id !== "number") {
      const e = msg;
      this.emit("error", new GiftdError(e.code, e.reason, e.message));
      return;
    }
    const p = this.inFlight.get(id);
    if (!p) return;
    this.settle(p);
    if (msg.type === "error") {
      const e = msg;
      p.reject(new GiftdError(e.code, e.reason, e.message, keyOf(p.key)));
      return;
    }
    const result = msg.result;
    if (!p.internal) this.onCommandAck(p.command, result);
    p.resolve(result);
  }
  /** Keeps the room state in step with the app's own room commands. */
  onCommandAck(command, result) {
    switch (command.type) {
      case "open_room":
      case "join": {
        const r = result;
        this.closingRoom = false;
        if (r.recovered === true) {
          this.seq.reset(r.room, { epoch: r.epoch, seq: r.seq });
        } else {
          this.seq.reset(r.room, { epoch: r.epoch, seq: r.seq });
          this.emit("snapshot", r);
        }
        return;
      }
      case "leave":
        this.seq.clear();
        return;
      case "close_room": {
        const r = result;
        const pos = this.seq.position;
        if (pos !== null && pos.seq >= r.seq) this.seq.clear();
        else this.closingRoom = true;
        return;
      }
      default:
        return;
    }
  }
  onEvent(event) {
    if (this.skipEventsLeft > 0) {
      this.skipEventsLeft--;
      return;
    }
    if (this.resyncing) return;
    const verdict = this.seq.check(event);
    switch (verdict) {
      case "duplicate":
        this.stats.duplicatesDropped++;
        return;
      case "foreign":
        return;
      case "gap":
        this.stats.gaps++;
        this.resync();
        return;
      case "deliver":
        break;
    }
    this.emit("event", event);
    switch (event.kind) {
      case "viewers":
        this.emit("viewers", event);
        break;
      case "gift":
        this.emit("gift", event);
        break;
      case "question":
        this.emit("question", event);
        break;
      case "answer":
        this.emit("answer", event);
        break;
      case "thanks":
        this.emit("thanks", event);
        break;
      case "room_closed":
        this.seq.clear();
        this.closingRoom = false;
        this.emit("room_closed", event);
        break;
    }
  }
  onSocketClosed(ws, code, reason) {
    if (ws !== null && this.ws !== ws) return;
    this.ws = null;
    this.lastClose = { code, reason };
    this.resyncing = false;
    for (const p of [...this.inFlight.values()]) {
      if (p.timer) clearTimeout(p.timer);
      this.inFlight.delete(p.wireId);
      if (p.resendable) {
        p.wireId = null;
        this.stats.resends++;
      } else {
        this.pending.delete(p.order);
        p.reject(
          new GiftdError(0, "connection_lost", `connection lost before the reply to ${p.command.type}`)
        );
      }
    }
    if (this.state_ === "closed") return;
    const forced = this.forceReconnect;
    this.forceReconnect = false;
    const status = this.handshakeStatus;
    let again = forced || shouldReconnect(code);
    if (status === 401 || status === 403) again = false;
    if (!this.connectedOnce) again = false;
    if (this.opts.reconnect === false) again = false;
    this.emit("disconnected", { code, reason, willReconnect: again });
    if (!again) {
      const error = status !== null ? new GiftdError(0, "handshake_refused", `handshake refused with HTTP ${status}`, { status }) : new GiftdError(0, "closed", `connection closed: ${code} ${reason}`.trim());
      const waiter = this.connectWaiter;
      this.connectWaiter = null;
      waiter?.reject(error);
      if (this.connectedOnce) this.emit("error", error);
      this.finish(code, reason);
      return;
    }
    this.scheduleReconnect();
  }
  scheduleReconnect() {
    const r = this.opts.reconnect || {};
    this.attempt++;
    if (this.attempt > (r.maxAttempts ?? Infinity)) {
      this.emit("error", new GiftdError(0, "closed", `gave up after ${this.attempt - 1} reconnects`));
      this.finish(this.lastClose.code, this.lastClose.reason);
      return;
    }
    const delayMs = reconnectDelay(this.attempt, this.lastClose.code, r);
    this.state_ = "reconnecting";
    this.emit("reconnecting", { attempt: this.attempt, delayMs });
    const hold = this.holdReconnect;
    this.holdReconnect = null;
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      const go = () => {
        if (this.state_ !== "reconnecting") return;
        this.stats.reconnects++;
        void this.openSocket();
      };
      if (hold) hold.then(go, go);
      else go();
    }, delayMs);
  }
  finish(code, reason) {
    const wasClosed = this.state_ === "closed";
    this.state_ = "closed";
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    if (this.pingTimer) clearInterval(this.pingTimer);
    this.pingTimer = null;
    const ws = this.ws;
    this.ws = null;
    if (ws && ws.readyState <= OPEN) ws.close(1e3, "normal");
    for (const p of [...this.pending.values()]) {
      this.settle(p);
      p.reject(new GiftdError(0, "closed", "the client closed", keyOf(p.key)));
    }
    const waiter = this.connectWaiter;
    this.connectWaiter = null;
    waiter?.reject(new GiftdError(0, "closed", "the client closed"));
    if (!wasClosed) this.emit("closed", { code, reason });
  }
};
var RESYNC_CLOSE_CODE = 4002;
function reconnectDelay(attempt, closeCode, options = {}, random = Math.random) {
  if (closeCode === RESYNC_CLOSE_CODE && attempt === 1) return 0;
  const initial = options.initialDelayMs ?? 250;
  const max = options.maxDelayMs ?? 1e4;
  const base = Math.min(max, initial * 2 ** (attempt - 1));
  return Math.round(base / 2 + random() * (base / 2));
}
function keyOf(key) {
  return key === void 0 ? {} : { key };
}

// src/common.ts
function $(id) {
  const el2 = document.getElementById(id);
  if (!el2) throw new Error(`#${id} is missing from the page`);
  return el2;
}
function el(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== void 0) e.textContent = text;
  return e;
}
function button(text, onClick, className) {
  const b = el("button", className, text);
  b.addEventListener("click", onClick);
  return b;
}
function prepend(list, item) {
  list.insertBefore(item, list.firstChild);
}
function log(text, level = "info") {
  const list = $("log");
  prepend(list, el("li", level, `${(/* @__PURE__ */ new Date()).toLocaleTimeString()} ${text}`));
  while (list.children.length > 20) list.lastChild?.remove();
}
function describeError(e) {
  if (e instanceof GiftdError) return `${e.reason} (${e.code}): ${e.message}`;
  return e instanceof Error ? e.message : String(e);
}
async function guarded(what, action) {
  try {
    await action();
  } catch (e) {
    log(`${what} failed: ${describeError(e)}`, "error");
  }
}
async function devCall(path, body) {
  const adminToken = $("admin-token").value.trim();
  const res = await fetch(`/demo/dev/${path}`, {
    method: "POST",
    headers: { authorization: `Bearer ${adminToken}`, "content-type": "application/json" },
    body: JSON.stringify(body)
  });
  const reply = await res.json();
  if (!res.ok) {
    throw new Error(`${reply.reason ?? "error"} (${reply.code ?? res.status}): ${reply.message ?? ""}`);
  }
  return reply;
}
function wsUrl() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${location.host}/ws`;
}
async function getJson(path) {
  const res = await fetch(path);
  if (!res.ok) throw new Error(`${path}: HTTP ${res.status}`);
  return await res.json();
}
async function stickers() {
  return (await getJson("/stickers")).stickers;
}
function connectPanel(role, ready) {
  const user = $("user");
  user.value = document.body.dataset.defaultUser ?? "";
  const state = $("conn-state");
  const connect = $("connect-btn");
  connect.addEventListener(
    "click",
    () => guarded("connect", async () => {
      connect.disabled = true;
      try {
        let token = $("token").value.trim();
        if (!token) {
          const minted = await devCall("token", { user: user.value.trim(), role });
          token = minted.token;
          $("token").value = token;
        }
        const client = new GiftdClient({ url: wsUrl(), token });
        client.on("connected", (info2) => {
          state.textContent = `connected as ${info2.user} (${info2.role})`;
          state.className = "state open";
        });
        client.on("reconnecting", ({ attempt }) => {
          state.textContent = `reconnecting (attempt ${attempt})`;
          state.className = "state";
        });
        client.on("closed", ({ code, reason }) => {
          state.textContent = `closed (${code} ${reason})`;
          state.className = "state";
          connect.disabled = false;
        });
        client.on("error", (e) => log(describeError(e), "error"));
        const info = await client.connect();
        user.value = info.user;
        user.disabled = true;
        ready(client, info.user);
      } catch (e) {
        connect.disabled = false;
        throw e;
      }
    })
  );
}
var Questions = class {
  constructor(render) {
    this.render = render;
    setInterval(() => this.byId.size > 0 && this.draw(), 5e3);
  }
  render;
  byId = /* @__PURE__ */ new Map();
  reset(snapshot) {
    this.byId.clear();
    for (const q of [...snapshot.questions_pinned, ...snapshot.questions_open]) this.byId.set(q.question_id, q);
    this.draw();
  }
  add(e) {
    const { type: _t, room: _r, epoch: _e, seq: _s, kind: _k, ...q } = e;
    this.byId.set(q.question_id, q);
    this.draw();
  }
  answered(questionId, text) {
    const q = this.byId.get(questionId);
    if (!q) return;
    q.answered = true;
    q.answer = text;
    this.draw();
  }
  draw() {
    const now = Date.now();
    const pinned = $("pinned");
    const open = $("questions");
    pinned.replaceChildren();
    open.replaceChildren();
    const all = [...this.byId.values()].sort((a, b) => b.question_id - a.question_id);
    for (const q of all) {
      const isPinned = q.paid !== void 0 && (q.pinned_until_ms ?? 0) > now;
      (isPinned ? pinned : open).appendChild(this.render(q));
    }
  }
};
var TopGifters = class {
  constructor(client) {
    client.on("snapshot", (s) => this.draw(s.leaderboards.session));
    client.on("event", (e) => {
      if (e.kind === "leaderboard" && e.board === "session") this.draw(e.top);
    });
    client.on("room_closed", () => this.draw([]));
  }
  draw(top) {
    $("top-gifters").replaceChildren(
      ...top.map((r) => {
        const li = el("li");
        li.append(`${r.rank}. `, el("span", "who", r.user), ` ${r.coins} coins`);
        return li;
      })
    );
  }
};
function questionLine(q) {
  const li = el("li");
  li.dataset.questionId = String(q.question_id);
  li.append(el("span", "who", q.from), document.createTextNode(": "), el("span", "text", q.text));
  if (q.paid) li.append(" ", el("span", "pin", `paid ${q.paid.price_coins} coins (${q.paid.sticker})`));
  if (q.answer !== void 0) li.append(el("span", "answer", `Answer: ${q.answer}`));
  else if (q.answered) li.append(el("span", "answer", "answered"));
  return li;
}

// src/streamer.ts
function streamerPage() {
  connectPanel("streamer", (client) => {
    for (const id of ["room-panel", "earnings", "gifts-panel", "board-panel", "questions-panel"]) $(id).hidden = false;
    new StreamerRoom(client);
  });
}
var StreamerRoom = class {
  constructor(client) {
    this.client = client;
    this.questions = new Questions((q) => this.questionItem(q));
    new TopGifters(client);
    const open = $("open-room");
    const close = $("close-room");
    open.addEventListener(
      "click",
      () => guarded("open room", async () => {
        $("gifts").replaceChildren();
        const room = $("room").value.trim();
        this.room = room;
        this.earned = { price: 0, store: 0, streamer: 0, platform: 0 };
        this.counted.clear();
        this.showEarnings();
        await client.openRoom(room, $("title").value.trim());
        open.disabled = true;
        close.disabled = false;
        $("room-live").textContent = room;
        log(`room ${room} is live`);
      })
    );
    close.addEventListener(
      "click",
      () => guarded("close room", async () => {
        await client.closeRoom();
        open.disabled = false;
        close.disabled = true;
        $("room-live").textContent = "no";
      })
    );
    client.on("snapshot", (s) => {
      $("viewers").textContent = String(s.viewers);
      this.questions.reset(s);
    });
    client.on("viewers", (e) => $("viewers").textContent = String(e.count));
    client.on("gift", (e) => this.gift(e));
    client.on("gift_received", (m) => this.earn(m));
    client.on("question", (e) => this.questions.add(e));
    client.on("answer", (e) => this.questions.answered(e.question_id, e.text));
    client.on("room_closed", (e) => {
      log(`room closed: ${e.reason}`);
      open.disabled = false;
      close.disabled = true;
      $("room-live").textContent = "no";
    });
  }
  client;
  questions;
  /** The room open on this page, whose gifts the earnings panel adds up. */
  room = null;
  /** Running totals of this room's gifts since it opened, by share. */
  earned = { price: 0, store: 0, streamer: 0, platform: 0 };
  /** Gifts already counted (a gift is counted once, whatever arrives twice). */
  counted = /* @__PURE__ */ new Set();
  gift(e) {
    const li = el("li");
    li.dataset.giftId = e.gift_id;
    li.append(
      el("span", "who", e.from),
      ` sent ${e.sticker_name} `,
      el("span", "price", `${e.price_coins} coins`)
    );
    const actions = el("div", "actions");
    const thank = button(
      "Thank",
      () => guarded("thank", async () => {
        thank.disabled = true;
        await this.client.thank(e.gift_id, `Thank you ${e.from} for the ${e.sticker_name}!`);
        thank.replaceWith(el("span", "thanked", "thanked"));
      })
    );
    actions.append(thank);
    li.append(actions);
    prepend($("gifts"), li);
  }
  /** A gift's exact split (sent to the streamer only): add it to the room's running totals. */
  earn(m) {
    if (m.room !== this.room || this.counted.has(m.gift_id)) return;
    this.counted.add(m.gift_id);
    this.earned.price += m.price_coins;
    this.earned.store += m.store_coins;
    this.earned.streamer += m.streamer_coins;
    this.earned.platform += m.platform_coins;
    this.showEarnings();
  }
  showEarnings() {
    $("earn-total").textContent = String(this.earned.price);
    $("earn-store").textContent = String(this.earned.store);
    $("earn-streamer").textContent = String(this.earned.streamer);
    $("earn-platform").textContent = String(this.earned.platform);
  }
  questionItem(q) {
    const li = questionLine(q);
    if (!q.answered) {
      const text = el("input");
      text.placeholder = "Your answer";
      text.className = "answer-text";
      const send = button(
        "Answer",
        () => guarded("answer", async () => {
          send.disabled = true;
          try {
            await this.client.answer(q.question_id, text.value.trim() || "Yes!");
          } finally {
            send.disabled = false;
          }
        })
      );
      const actions = el("div", "actions");
      actions.append(text, send);
      li.append(actions);
    }
    return li;
  }
};

// src/viewer.ts
function viewerPage() {
  connectPanel("viewer", (client, user) => {
    for (const id of ["room-panel", "wallet", "stickers-panel", "receipts-panel", "ticker-panel", "board-panel", "questions-panel"]) {
      $(id).hidden = false;
    }
    new ViewerRoom(client, user);
  });
}
var ViewerRoom = class {
  constructor(client, user) {
    this.client = client;
    this.user = user;
    new TopGifters(client);
    void this.listRooms();
    void guarded("stickers", () => this.picker());
    void guarded("balance", async () => this.showBalance((await client.balance()).balance_coins));
    const join = $("join");
    const leave = $("leave");
    join.addEventListener(
      "click",
      () => guarded("join", async () => {
        const snapshot = await client.join($("room").value.trim());
        join.disabled = true;
        leave.disabled = false;
        $("room-title").textContent = snapshot.title;
        $("room-streamer").textContent = `by ${snapshot.streamer}`;
        $("ticker").replaceChildren();
      })
    );
    leave.addEventListener(
      "click",
      () => guarded("leave", async () => {
        await client.leave();
        join.disabled = false;
        leave.disabled = true;
        $("room-title").textContent = "not in a room";
        $("room-streamer").textContent = "";
      })
    );
    $("topup").addEventListener("click", () => guarded("top up", () => this.topUp()));
    $("ask").addEventListener("click", () => guarded("ask", () => this.ask()));
    client.on("snapshot", (s) => {
      $("viewers").textContent = String(s.viewers);
      this.questions.reset(s);
    });
    client.on("viewers", (e) => $("viewers").textContent = String(e.count));
    client.on("gift", (e) => {
      const li = el("li");
      li.dataset.giftId = e.gift_id;
      li.append(el("span", "who", e.from), ` sent ${e.sticker_name} `, el("span", "price", `${e.price_coins} coins`));
      prepend($("ticker"), li);
    });
    client.on("question", (e) => this.questions.add(e));
    client.on("answer", (e) => this.questions.answered(e.question_id, e.text));
    client.on("thanked", (m) => {
      const li = el("li");
      li.dataset.giftId = m.gift_id;
      li.append(el("span", "who", m.from), ": ", el("span", "text", m.text));
      prepend($("thanks"), li);
    });
    client.on("answered", (m) => log(`the streamer answered your question ${m.question_id}: ${m.text}`));
    client.on("room_closed", (e) => {
      log(`room closed: ${e.reason}`);
      join.disabled = false;
      leave.disabled = true;
    });
  }
  client;
  user;
  questions = new Questions(questionLine);
  async listRooms() {
    try {
      const { rooms } = await getJson("/rooms");
      const list = $("room-list");
      list.replaceChildren(...rooms.map((r) => Object.assign(el("option"), { value: r.room, label: r.title })));
    } catch {
    }
  }
  async picker() {
    const all = await stickers();
    const picker = $("sticker-picker");
    const paid = $("question-sticker");
    for (const s of all) {
      const b = button("", () => guarded("gift", () => this.send(s.id)));
      b.dataset.sticker = s.id;
      b.append(s.name, el("span", "price", String(s.price_coins)));
      picker.append(b);
      paid.append(Object.assign(el("option"), { value: s.id, textContent: `paid: ${s.name} (${s.price_coins})` }));
    }
  }
  async send(sticker) {
    const receipt = await this.client.sendGift(sticker, { key: newIdempotencyKey() });
    this.receipt(receipt);
  }
  receipt(r) {
    const li = el("li", "receipt");
    li.dataset.giftId = r.gift_id;
    li.append(el("span", "who", r.sticker), " ", el("span", "price", `${r.price_coins} coins`));
    const split = el("span", "split");
    split.append(
      el("span", "store", `store ${r.store_coins}`),
      " · ",
      el("span", "streamer", `streamer ${r.streamer_coins}`),
      " · ",
      el("span", "platform", `platform ${r.platform_coins}`),
      " · ",
      el("span", "balance", `balance ${r.balance_coins}`)
    );
    li.append(split);
    prepend($("receipts"), li);
    this.showBalance(r.balance_coins);
  }
  async topUp() {
    const coins = Number($("topup-coins").value);
    const channel = $("topup-channel").value;
    const reply = await devCall("topup", {
      user: this.user,
      channel,
      coins,
      purchase_id: `demo-${newIdempotencyKey()}`
    });
    this.showBalance(reply.balance_coins);
    log(`topped up ${coins} ${channel} coins`);
  }
  async ask() {
    const input = $("question-text");
    const text = input.value.trim();
    if (!text) return;
    const sticker = $("question-sticker").value;
    if (sticker) {
      const result = await this.client.ask(text, { sticker, key: newIdempotencyKey() });
      this.receipt(result.receipt);
    } else {
      await this.client.ask(text);
    }
    input.value = "";
  }
  showBalance(coins) {
    $("balance").textContent = String(coins);
  }
};

// src/main.ts
var pages = { streamer: streamerPage, viewer: viewerPage };
pages[document.body.dataset.page ?? ""]?.();

// What both demo pages share: the connect panel (a pasted token, or one minted by the dev tools),
// the dev tools' HTTP calls, small DOM helpers, the questions list and the top gifters.
import { GiftdClient, GiftdError } from '../../typescript/src/index.js';
import type { Question, QuestionEvent, Ranked, Snapshot } from '../../typescript/src/index.js';

/** An entry of `GET /stickers`. */
export interface Sticker {
  id: string;
  name: string;
  price_coins: number;
}

export type Role = 'streamer' | 'viewer';

/** The element with this id; the pages are static, so a missing one is a bug in the page. */
export function $<T extends HTMLElement = HTMLElement>(id: string): T {
  const el = document.getElementById(id);
  if (!el) throw new Error(`#${id} is missing from the page`);
  return el as T;
}

/** A new element with text content (never HTML: every string shown comes from other users). */
export function el(tag: string, className?: string, text?: string): HTMLElement {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
}

export function button(text: string, onClick: () => void, className?: string): HTMLButtonElement {
  const b = el('button', className, text) as HTMLButtonElement;
  b.addEventListener('click', onClick);
  return b;
}

/** Adds `item` at the top of a feed. */
export function prepend(list: HTMLElement, item: HTMLElement): void {
  list.insertBefore(item, list.firstChild);
}

export function log(text: string, level: 'info' | 'error' = 'info'): void {
  const list = $('log');
  prepend(list, el('li', level, `${new Date().toLocaleTimeString()} ${text}`));
  while (list.children.length > 20) list.lastChild?.remove();
}

export function describeError(e: unknown): string {
  if (e instanceof GiftdError) return `${e.reason} (${e.code}): ${e.message}`;
  return e instanceof Error ? e.message : String(e);
}

/** Runs `action` for a button, disabled while it runs; failures go to the log. */
export async function guarded(what: string, action: () => Promise<void>): Promise<void> {
  try {
    await action();
  } catch (e) {
    log(`${what} failed: ${describeError(e)}`, 'error');
  }
}

/** A development tool (`/demo/dev/*`): JSON in, JSON out, the wire error body on failure. */
export async function devCall<T>(path: string, body: unknown): Promise<T> {
  const adminToken = $<HTMLInputElement>('admin-token').value.trim();
  const res = await fetch(`/demo/dev/${path}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${adminToken}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  const reply = (await res.json()) as T & { code?: number; reason?: string; message?: string };
  if (!res.ok) {
    throw new Error(`${reply.reason ?? 'error'} (${reply.code ?? res.status}): ${reply.message ?? ''}`);
  }
  return reply;
}

export function wsUrl(): string {
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  return `${scheme}://${location.host}/ws`;
}

export async function getJson<T>(path: string): Promise<T> {
  const res = await fetch(path);
  if (!res.ok) throw new Error(`${path}: HTTP ${res.status}`);
  return (await res.json()) as T;
}

export async function stickers(): Promise<Sticker[]> {
  return (await getJson<{ stickers: Sticker[] }>('/stickers')).stickers;
}

/**
 * Wires the connect panel: on Connect, uses the pasted token or mints one with the dev tools,
 * connects, and calls `ready` with the client. The client reconnects by itself after drops.
 */
export function connectPanel(role: Role, ready: (client: GiftdClient, user: string) => void): void {
  const user = $<HTMLInputElement>('user');
  user.value = document.body.dataset.defaultUser ?? '';
  const state = $('conn-state');
  const connect = $<HTMLButtonElement>('connect-btn');
  connect.addEventListener('click', () =>
    guarded('connect', async () => {
      connect.disabled = true;
      try {
        let token = $<HTMLInputElement>('token').value.trim();
        if (!token) {
          const minted = await devCall<{ token: string }>('token', { user: user.value.trim(), role });
          token = minted.token;
          $<HTMLInputElement>('token').value = token;
        }
        const client = new GiftdClient({ url: wsUrl(), token });
        client.on('connected', (info) => {
          state.textContent = `connected as ${info.user} (${info.role})`;
          state.className = 'state open';
        });
        client.on('reconnecting', ({ attempt }) => {
          state.textContent = `reconnecting (attempt ${attempt})`;
          state.className = 'state';
        });
        client.on('closed', ({ code, reason }) => {
          state.textContent = `closed (${code} ${reason})`;
          state.className = 'state';
          connect.disabled = false;
        });
        client.on('error', (e) => log(describeError(e), 'error'));
        const info = await client.connect();
        user.value = info.user;
        user.disabled = true;
        ready(client, info.user);
      } catch (e) {
        connect.disabled = false;
        throw e;
      }
    }),
  );
}

/** A room's questions, kept by id; pinned ones (paid, pin not expired) are listed apart. */
export class Questions {
  private byId = new Map<number, Question & { answer?: string }>();

  constructor(private render: (q: Question & { answer?: string }) => HTMLElement) {
    // Pins expire: move questions whose pin ran out to the open list.
    setInterval(() => this.byId.size > 0 && this.draw(), 5_000);
  }

  reset(snapshot: Snapshot): void {
    this.byId.clear();
    for (const q of [...snapshot.questions_pinned, ...snapshot.questions_open]) this.byId.set(q.question_id, q);
    this.draw();
  }

  add(e: QuestionEvent): void {
    const { type: _t, room: _r, epoch: _e, seq: _s, kind: _k, ...q } = e;
    this.byId.set(q.question_id, q);
    this.draw();
  }

  answered(questionId: number, text: string): void {
    const q = this.byId.get(questionId);
    if (!q) return;
    q.answered = true;
    q.answer = text;
    this.draw();
  }

  draw(): void {
    const now = Date.now();
    const pinned = $('pinned');
    const open = $('questions');
    pinned.replaceChildren();
    open.replaceChildren();
    const all = [...this.byId.values()].sort((a, b) => b.question_id - a.question_id);
    for (const q of all) {
      const isPinned = q.paid !== undefined && (q.pinned_until_ms ?? 0) > now;
      (isPinned ? pinned : open).appendChild(this.render(q));
    }
  }
}

/**
 * The room's top gifters this stream (the `session` leaderboard): from the snapshot, then from
 * each coalesced `leaderboard` event, which carries the whole top N.
 */
export class TopGifters {
  constructor(client: GiftdClient) {
    client.on('snapshot', (s) => this.draw(s.leaderboards.session));
    client.on('event', (e) => {
      if (e.kind === 'leaderboard' && e.board === 'session') this.draw(e.top);
    });
    client.on('room_closed', () => this.draw([]));
  }

  private draw(top: Ranked[]): void {
    $('top-gifters').replaceChildren(
      ...top.map((r) => {
        const li = el('li');
        li.append(`${r.rank}. `, el('span', 'who', r.user), ` ${r.coins} coins`);
        return li;
      }),
    );
  }
}

/** The common part of a question's line: who asked what, and what it paid. */
export function questionLine(q: Question & { answer?: string }): HTMLElement {
  const li = el('li');
  li.dataset.questionId = String(q.question_id);
  li.append(el('span', 'who', q.from), document.createTextNode(': '), el('span', 'text', q.text));
  if (q.paid) li.append(' ', el('span', 'pin', `paid ${q.paid.price_coins} coins (${q.paid.sticker})`));
  if (q.answer !== undefined) li.append(el('span', 'answer', `Answer: ${q.answer}`));
  else if (q.answered) li.append(el('span', 'answer', 'answered'));
  return li;
}

import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { inject } from 'vitest';
import WebSocket from 'ws';
import { GiftdClient, type GiftdClientOptions } from '../src/index.js';

export const giftd = inject('giftd');
export const ADMIN_TOKEN = 'giftd-dev-admin-token';

/** A unique id for this run (users, rooms), so tests never share state by accident. */
export function uid(prefix: string): string {
  return `${prefix}-${randomBytes(4).toString('hex')}`;
}

/** A token minted by `giftd token`, with the same dev defaults as the server under test. */
export function token(user: string, role: 'viewer' | 'streamer'): string {
  return execFileSync(giftd.bin, ['token', '--user', user, '--role', role], {
    encoding: 'utf8',
  }).trim();
}

export async function topup(user: string, channel: 'ios' | 'android' | 'web', coins: number) {
  const res = await fetch(`${giftd.adminUrl}/admin/topup`, {
    method: 'POST',
    headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
    body: JSON.stringify({ user, channel, coins, purchase_id: uid('purchase') }),
  });
  if (res.status !== 200) throw new Error(`topup: HTTP ${res.status} ${await res.text()}`);
  return (await res.json()) as { balance_coins: number };
}

export interface Wallet {
  user: string;
  balance_coins: number;
  ios_coins: number;
  android_coins: number;
  web_coins: number;
  earnings_coins: number;
}

export async function wallet(user: string): Promise<Wallet> {
  const res = await fetch(`${giftd.adminUrl}/admin/wallets/${user}`, {
    headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
  });
  if (res.status !== 200) throw new Error(`wallet: HTTP ${res.status} ${await res.text()}`);
  return (await res.json()) as Wallet;
}

const clients: GiftdClient[] = [];

/** A connected SDK client for a new user (closed by `closeAll`). */
export async function client(
  user: string,
  role: 'viewer' | 'streamer',
  options: Partial<GiftdClientOptions> = {},
): Promise<GiftdClient> {
  const c = new GiftdClient({
    url: giftd.wsUrl,
    token: token(user, role),
    WebSocket: WebSocket as unknown as GiftdClientOptions['WebSocket'],
    reconnect: { initialDelayMs: 50, maxDelayMs: 500, maxAttempts: 20 },
    ...options,
  });
  clients.push(c);
  await c.connect();
  return c;
}

export function closeAll(): void {
  for (const c of clients.splice(0)) c.close();
}

/** Waits until `check` returns a value other than undefined/false, polling, at most `ms`. */
export async function until<T>(what: string, check: () => T | undefined | false, ms = 5_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

export async function untilAsync<T>(
  what: string,
  check: () => Promise<T | undefined | false>,
  ms = 5_000,
): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

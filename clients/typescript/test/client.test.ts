// GiftdClient against a real giftd: commands, the gift split, errors, reconnects that recover
// missed events exactly once and in order, and gifts resent across reconnects charged once.
import { afterEach, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import {
  GiftdClient,
  GiftdError,
  type GiftdClientOptions,
  type GiftReceivedMessage,
  type Receipt,
  type RejoinedInfo,
  type RoomEvent,
} from '../src/index.js';
import { client, closeAll, giftd, token, topup, uid, until, untilAsync, wallet } from './helpers.js';

afterEach(closeAll);

/** Records every room event a client delivers to the app. */
function record(c: GiftdClient): RoomEvent[] {
  const events: RoomEvent[] = [];
  c.on('event', (e) => events.push(e));
  return events;
}

/** Asserts that `events` are one epoch's consecutive seqs, each once, in order. */
function expectExactlyOnceInOrder(events: RoomEvent[]): void {
  expect(events.length).toBeGreaterThan(0);
  const epoch = events[0]!.epoch;
  const first = events[0]!.seq;
  expect(events.map((e) => e.epoch)).toEqual(events.map(() => epoch));
  expect(events.map((e) => e.seq)).toEqual(events.map((_, i) => first + i));
}

/** A streamer with an open room, and a viewer (the one under test) in it. */
async function stage() {
  const room = uid('room');
  const star = uid('star');
  const s = await client(star, 'streamer');
  await s.openRoom(room, 'Test stream');
  return { room, star, s };
}

describe('commands', () => {
  it('a gift: exact three-way receipt, the event to every member, the streamer thanks', async () => {
    const { room, star, s } = await stage();
    const bob = uid('bob');
    await topup(bob, 'ios', 100);
    const b = await client(bob, 'viewer');
    const c = await client(uid('carol'), 'viewer');
    const snap = await b.join(room);
    expect(snap).toMatchObject({ room, streamer: star, title: 'Test stream' });
    await c.join(room);
    const starGifts: string[] = [];
    const carolGifts: string[] = [];
    s.on('gift', (e) => starGifts.push(`${e.from}:${e.sticker}:${e.price_coins}:${e.gift_id}`));
    c.on('gift', (e) => carolGifts.push(`${e.from}:${e.sticker}:${e.price_coins}:${e.gift_id}`));
    const earningsBefore = (await s.balance()).earnings_coins ?? 0;

    const receipt = await b.sendGift('coffee');
    expect(receipt).toMatchObject({
      room,
      sticker: 'coffee',
      price_coins: 100,
      store_coins: 30,
      streamer_coins: 35,
      platform_coins: 35,
      funding: { ios_coins: 100, android_coins: 0, web_coins: 0 },
      balance_coins: 0,
      replayed: false,
    });
    const line = `${bob}:coffee:100:${receipt.gift_id}`;
    await until('the gift at the streamer and the other viewer', () => starGifts.length && carolGifts.length);
    expect(starGifts).toEqual([line]);
    expect(carolGifts).toEqual([line]);
    expect((await s.balance()).earnings_coins).toBe(earningsBefore + 35);
    expect(await wallet(bob)).toMatchObject({ balance_coins: 0, ios_coins: 0 });

    const thanked = new Promise<{ gift_id: string; text: string }>((r) => b.once('thanked', r));
    const ack = await s.thank(receipt.gift_id, 'Thanks!');
    expect(ack).toMatchObject({ gift_id: receipt.gift_id, to: bob });
    expect(await thanked).toMatchObject({ gift_id: receipt.gift_id, text: 'Thanks!', room });
  });

  it('the streamer (every connection of theirs) gets gift_received with the receipt\'s exact split', async () => {
    const { room, star, s } = await stage();
    // A second connection of the streamer, in no room: private messages go to every connection.
    const s2 = await client(star, 'streamer');
    const bob = uid('bob');
    // Coins from two stores, so that the gifts' splits differ (the store's share depends on it):
    // the coffee is paid with iOS coins, the rest with web coins, added after it.
    await topup(bob, 'ios', 100);
    const b = await client(bob, 'viewer');
    const c = await client(uid('carol'), 'viewer');
    await b.join(room);
    await c.join(room);
    const got = { s: [] as GiftReceivedMessage[], s2: [] as GiftReceivedMessage[], b: [] as unknown[], c: [] as unknown[] };
    s.on('gift_received', (m) => got.s.push(m));
    s2.on('gift_received', (m) => got.s2.push(m));
    b.on('gift_received', (m) => got.b.push(m));
    c.on('gift_received', (m) => got.c.push(m));
    const earningsBefore = (await s.balance()).earnings_coins ?? 0;

    const receipts: Receipt[] = [];
    receipts.push(await b.sendGift('coffee'));
    await topup(bob, 'web', 2_000);
    receipts.push(await b.sendGift('rose'));
    receipts.push((await b.ask('Shout-out?', { sticker: 'coffee' })).receipt);
    await until('3 gift_received at both streamer connections', () => got.s.length === 3 && got.s2.length === 3);

    const expected = receipts.map((r) => ({
      type: 'gift_received',
      room,
      gift_id: r.gift_id,
      from: bob,
      sticker: r.sticker,
      price_coins: r.price_coins,
      store_coins: r.store_coins,
      streamer_coins: r.streamer_coins,
      platform_coins: r.platform_coins,
      seq: r.seq,
    }));
    expect(got.s).toEqual(expected);
    expect(got.s2).toEqual(expected);
    // Not a test that passes on zeros: the splits are real and differ between the stores.
    for (const m of got.s) {
      expect(m.store_coins + m.streamer_coins + m.platform_coins).toBe(m.price_coins);
      expect(m.streamer_coins).toBeGreaterThan(0);
    }
    expect(new Set(got.s.map((m) => m.store_coins / m.price_coins)).size).toBeGreaterThan(1);
    // The streamer's shares are what the ledger credited.
    const streamerSum = got.s.reduce((n, m) => n + m.streamer_coins, 0);
    expect((await s.balance()).earnings_coins).toBe(earningsBefore + streamerSum);
    // Viewers never get it (a ping after the receipts flushes anything sent to them before).
    await Promise.all([b.ping(), c.ping()]);
    expect(got.b).toEqual([]);
    expect(got.c).toEqual([]);
  });

  it('errors reject with a typed GiftdError carrying code and reason (and the gift key)', async () => {
    const { room } = await stage();
    const v = await client(uid('poor'), 'viewer');
    const notInRoom = await v.sendGift('rose').catch((e: unknown) => e);
    expect(notInRoom).toBeInstanceOf(GiftdError);
    expect(notInRoom).toMatchObject({ code: 13003, reason: 'not_in_room' });
    await v.join(room);
    const poor = (await v.sendGift('coffee', { key: 'my-key-1' }).catch((e: unknown) => e)) as GiftdError;
    expect(poor).toBeInstanceOf(GiftdError);
    expect(poor).toMatchObject({ code: 14001, reason: 'insufficient_funds', key: 'my-key-1' });
    expect(poor.message).toMatch(/insufficient/);
    await expect(v.openRoom(uid('r'), 'x')).rejects.toMatchObject({ code: 12003, reason: 'wrong_role' });
    await expect(v.answer(1, 'no')).rejects.toMatchObject({ code: 12003 });
    // The connection survives errors.
    expect((await v.ping()).server_time_ms).toBeGreaterThan(0);
  });

  it('a bad token fails connect(): refused handshake (401) or auth message (12001, final 4502)', async () => {
    const opts: GiftdClientOptions = {
      url: giftd.wsUrl,
      token: 'not-a-jwt',
      WebSocket: WebSocket as unknown as GiftdClientOptions['WebSocket'],
    };
    const viaHandshake = new GiftdClient(opts);
    await expect(viaHandshake.connect()).rejects.toMatchObject({ reason: 'handshake_refused', status: 401 });
    expect(viaHandshake.state).toBe('closed');
    const viaMessage = new GiftdClient({ ...opts, auth: 'message' });
    const closes: number[] = [];
    viaMessage.on('disconnected', (d) => closes.push(d.code));
    await expect(viaMessage.connect()).rejects.toMatchObject({ code: 12001, reason: 'invalid_token' });
    await until('the 4502 close', () => closes.length > 0);
    expect(closes).toEqual([4502]);
    expect(viaMessage.state).toBe('closed');
  });

  it('a token provider is asked again on every connection', async () => {
    const { room } = await stage();
    const user = uid('fresh');
    let asked = 0;
    const v = await client(user, 'viewer', {
      token: () => {
        asked++;
        return token(user, 'viewer');
      },
    });
    await v.join(room);
    const rejoined = new Promise<RejoinedInfo>((r) => v.once('rejoined', r));
    v.dropConnection();
    expect(await rejoined).toMatchObject({ room, recovered: true });
    expect(asked).toBe(2);
  });
});

describe('reconnects', () => {
  it('re-joins with `since` and delivers the missed events exactly once, in order', async () => {
    const { room, s } = await stage();
    const viewer = await client(uid('viewer'), 'viewer');
    const giver = uid('giver');
    await topup(giver, 'web', 1_000);
    const g = await client(giver, 'viewer');
    await viewer.join(room);
    await g.join(room);
    const events = record(viewer);
    const rejoins: RejoinedInfo[] = [];
    viewer.on('rejoined', (r) => rejoins.push(r));
    const before = await g.sendGift('rose');
    await until('the first gift', () => events.some((e) => e.kind === 'gift'));

    let release!: () => void;
    const hold = new Promise<void>((r) => (release = r));
    const disconnected = new Promise((r) => viewer.once('disconnected', r));
    viewer.dropConnection({ holdReconnect: hold });
    await disconnected;
    // While the viewer is away: three gifts, a question and the streamer's thanks.
    const missed = [await g.sendGift('rose'), await g.sendGift('heart'), await g.sendGift('clap')];
    await g.ask('Did you see that?');
    await s.thank(before.gift_id, 'ty');
    const lastMissedSeq = Math.max(...missed.map((r) => r.seq ?? 0));
    // A command made while away waits for the new connection.
    const ping = viewer.ping();
    expect(events.some((e) => e.seq > before.seq!)).toBe(false);
    release();

    await until('the re-join', () => rejoins.length > 0);
    expect(rejoins).toEqual([{ room, recovered: true }]);
    await ping;
    const after = await g.sendGift('rose');
    await until('the live gift after the re-join', () => events.some((e) => e.seq === after.seq));
    expectExactlyOnceInOrder(events);
    const giftIds = events.filter((e) => e.kind === 'gift').map((e) => (e as { gift_id: string }).gift_id);
    expect(giftIds).toEqual([before, ...missed, after].map((r) => r.gift_id));
    expect(events.some((e) => e.kind === 'question')).toBe(true);
    expect(events.some((e) => e.kind === 'thanks')).toBe(true);
    expect(events.some((e) => e.seq === lastMissedSeq)).toBe(true);
    expect(viewer.stats.reconnects).toBe(1);
    expect(viewer.stats.duplicatesDropped).toBe(0);
  });

  it('a streamer that reconnects is back in its own room with its owner rights', async () => {
    const { room, s } = await stage();
    const bob = uid('bob');
    await topup(bob, 'web', 10);
    const b = await client(bob, 'viewer');
    await b.join(room);
    const rejoined = new Promise<RejoinedInfo>((r) => s.once('rejoined', r));
    s.dropConnection();
    expect(await rejoined).toMatchObject({ room, recovered: true });
    const receipt = await b.sendGift('rose');
    expect(await s.thank(receipt.gift_id)).toMatchObject({ to: bob });
  });

  it('a gift whose ack was lost is resent with the same key after reconnecting: charged once', async () => {
    const { room } = await stage();
    const bob = uid('bob');
    await topup(bob, 'ios', 1_000);
    const b = await client(bob, 'viewer');
    await b.join(room);
    const sent: string[] = [];
    const tap = record(b);
    // Watch the frames on the wire through a second client-side listener: the tap option.
    const b2 = await client(bob, 'viewer', {
      onFrame: (dir, text) => {
        if (dir === 'out' && text.includes('send_gift')) sent.push(text);
      },
    });
    await b2.join(room);

    const receipt = b2.sendGift('coffee');
    b2._deafen(); // the ack will be lost, as if the connection died just before it arrived
    await untilAsync('the debit', async () => (await wallet(bob)).balance_coins === 900);
    b2.dropConnection();
    const r = await receipt;
    expect(r).toMatchObject({ price_coins: 100, store_coins: 30, streamer_coins: 35, platform_coins: 35 });
    expect(r.replayed).toBe(true);
    expect(r.balance_coins).toBe(900);
    // Two sends of one gift, with one key.
    expect(sent).toHaveLength(2);
    const keys = sent.map((t) => (JSON.parse(t) as { key: string }).key);
    expect(keys[0]).toBe(keys[1]);
    expect(keys[0]).toMatch(/^[0-9a-f]{32}$/);
    expect(b2.stats.resends).toBe(1);
    // One debit, one gift event.
    expect(await wallet(bob)).toMatchObject({ balance_coins: 900, ios_coins: 900 });
    await new Promise((r) => setTimeout(r, 200));
    expect(tap.filter((e) => e.kind === 'gift')).toHaveLength(1);
  });

  it('a gift sent just before the connection drops resolves once and is charged once', async () => {
    const { room } = await stage();
    const bob = uid('bob');
    await topup(bob, 'android', 1_000);
    const b = await client(bob, 'viewer');
    await b.join(room);
    const events = record(b);
    const receipts = [b.sendGift('coffee'), b.sendGift('heart')];
    b.dropConnection();
    const [coffee, heart] = await Promise.all(receipts);
    expect(coffee!.price_coins + heart!.price_coins).toBe(105);
    expect((await wallet(bob)).balance_coins).toBe(1_000 - 105);
    expect(heart!.balance_coins).toBe(1_000 - 105);
    await until('both gift events', () => events.filter((e) => e.kind === 'gift').length >= 2);
    expect(events.filter((e) => e.kind === 'gift')).toHaveLength(2);
    expectExactlyOnceInOrder(events);
  });

  it('a gap in the event stream makes it re-join with `since` and fill the gap', async () => {
    const { room } = await stage();
    const v = await client(uid('viewer'), 'viewer');
    const giver = uid('giver');
    await topup(giver, 'web', 100);
    const g = await client(giver, 'viewer');
    await v.join(room);
    await g.join(room);
    const events = record(v);
    const rejoins: RejoinedInfo[] = [];
    v.on('rejoined', (r) => rejoins.push(r));
    const first = await g.sendGift('rose');
    await until('the first gift', () => events.some((e) => e.seq === first.seq));
    v._loseEvents(2);
    const gifts = [await g.sendGift('rose'), await g.sendGift('rose'), await g.sendGift('rose')];
    const last = gifts[2]!.seq!;
    await until('the last gift', () => events.some((e) => e.seq === last));
    expect(v.stats.gaps).toBe(1);
    expect(rejoins).toEqual([{ room, recovered: true }]);
    expectExactlyOnceInOrder(events);
    const ids = events.filter((e) => e.kind === 'gift').map((e) => (e as { gift_id: string }).gift_id);
    expect(ids).toEqual([first, ...gifts].map((r) => r.gift_id));
  });

  it('events the server sends again are dropped: each is delivered once', async () => {
    const { room } = await stage();
    const v = await client(uid('viewer'), 'viewer');
    const giver = uid('giver');
    await topup(giver, 'web', 100);
    const g = await client(giver, 'viewer');
    await v.join(room);
    await g.join(room);
    const events = record(v);
    const gifts = [await g.sendGift('rose'), await g.sendGift('rose'), await g.sendGift('rose')];
    await until('three gifts', () => events.filter((e) => e.kind === 'gift').length === 3);
    const pos = v.position!;
    expect(pos.seq).toBeGreaterThanOrEqual(gifts[2]!.seq!);
    const rejoined = new Promise<RejoinedInfo>((r) => v.once('rejoined', r));
    // Re-join from before the three gifts: the server sends them again.
    v._rejoinFrom({ epoch: pos.epoch, seq: gifts[0]!.seq! - 1 });
    expect(await rejoined).toEqual({ room, recovered: true });
    const next = await g.sendGift('heart');
    await until('the next gift', () => events.some((e) => e.seq === next.seq));
    expect(v.stats.duplicatesDropped).toBeGreaterThanOrEqual(3);
    expectExactlyOnceInOrder(events);
    expect(events.filter((e) => e.kind === 'gift')).toHaveLength(4);
  });

  it('a re-join that cannot recover (history outrun) delivers a fresh snapshot, then events from it', async () => {
    const { room } = await stage();
    const v = await client(uid('viewer'), 'viewer');
    const giver = uid('giver');
    await topup(giver, 'web', 1_000);
    const g = await client(giver, 'viewer');
    await v.join(room);
    await g.join(room);
    const events = record(v);
    const snapshots: number[] = [];
    v.on('snapshot', (s) => snapshots.push(s.seq));
    const first = await g.sendGift('rose');
    await until('the first gift', () => events.some((e) => e.seq === first.seq));
    let release!: () => void;
    const hold = new Promise<void>((r) => (release = r));
    const rejoined = new Promise<RejoinedInfo>((r) => v.once('rejoined', r));
    const disconnected = new Promise((r) => v.once('disconnected', r));
    v.dropConnection({ holdReconnect: hold });
    await disconnected;
    // More events than the room keeps (rooms.history_events_max = 32 in these tests).
    const away = await Promise.all(Array.from({ length: 40 }, () => g.sendGift('rose')));
    const lastAway = Math.max(...away.map((r) => r.seq!));
    release();
    const r = await rejoined;
    expect(r.recovered).toBe(false);
    expect(r.snapshot).toMatchObject({ room, recovered: false });
    expect(r.snapshot!.seq).toBeGreaterThanOrEqual(lastAway);
    expect(snapshots).toEqual([r.snapshot!.seq]); // also emitted as `snapshot`
    const next = await g.sendGift('heart');
    await until('the next gift', () => events.some((e) => e.seq === next.seq));
    // Nothing from the lost stretch was delivered; after the snapshot, events follow it in order.
    const before = events.filter((e) => e.seq <= first.seq!);
    const after = events.filter((e) => e.seq > first.seq!);
    expectExactlyOnceInOrder(before);
    expectExactlyOnceInOrder(after);
    expect(after[0]!.seq).toBe(r.snapshot!.seq + 1);
    expect(v.position).toEqual({ epoch: r.snapshot!.epoch, seq: events.at(-1)!.seq });
  });

  it('backoff grows exponentially with jitter, is bounded, and gives up after maxAttempts', async () => {
    const user = uid('viewer');
    let calls = 0;
    const v = await client(user, 'viewer', {
      token: () => {
        if (++calls > 1) throw new Error('no token today');
        return token(user, 'viewer');
      },
      reconnect: { initialDelayMs: 40, maxDelayMs: 160, maxAttempts: 5 },
    });
    const delays: number[] = [];
    v.on('reconnecting', (r) => delays.push(r.delayMs));
    const closed = new Promise((r) => v.once('closed', r));
    const errors: string[] = [];
    v.on('error', (e) => errors.push(e.reason));
    v.dropConnection();
    await closed;
    expect(delays).toHaveLength(5);
    const bases = [40, 80, 160, 160, 160];
    delays.forEach((d, i) => {
      expect(d).toBeGreaterThanOrEqual(bases[i]! / 2);
      expect(d).toBeLessThanOrEqual(bases[i]!);
    });
    expect(errors).toEqual(['closed']);
    expect(v.state).toBe('closed');
  });

  it('the token can go in the URL (`auth: query`, as browsers do)', async () => {
    const v = await client(uid('browser'), 'viewer', { auth: 'query' });
    expect(v.user?.role).toBe('viewer');
    expect((await v.ping()).server_time_ms).toBeGreaterThan(0);
  });

  it('works with the WHATWG WebSocket of browsers (token in the URL, reconnect, recovery)', async () => {
    expect(typeof globalThis.WebSocket).toBe('function');
    const { room } = await stage();
    const user = uid('browser');
    // No `WebSocket` option: the SDK finds the global one, as in a browser.
    const v = new GiftdClient({
      url: giftd.wsUrl,
      token: token(user, 'viewer'),
      reconnect: { initialDelayMs: 50, maxDelayMs: 200 },
    });
    try {
      await v.connect();
      await v.join(room);
      const events = record(v);
      const giver = uid('giver');
      await topup(giver, 'web', 10);
      const g = await client(giver, 'viewer');
      await g.join(room);
      const first = await g.sendGift('rose');
      await until('the first gift', () => events.some((e) => e.seq === first.seq));
      let release!: () => void;
      const hold = new Promise<void>((r) => (release = r));
      const rejoined = new Promise<RejoinedInfo>((r) => v.once('rejoined', r));
      const disconnected = new Promise((r) => v.once('disconnected', r));
      v.dropConnection({ holdReconnect: hold }); // no terminate() here: a close(4000)
      await disconnected;
      const missed = await g.sendGift('rose');
      release();
      expect(await rejoined).toEqual({ room, recovered: true });
      await until('the missed gift', () => events.some((e) => e.seq === missed.seq));
      expectExactlyOnceInOrder(events);
    } finally {
      v.close();
    }
  });

  it('a room closed while away: the re-join fails with room_not_found and the app is told', async () => {
    const { room, s } = await stage();
    const v = await client(uid('viewer'), 'viewer');
    await v.join(room);
    let release!: () => void;
    const hold = new Promise<void>((r) => (release = r));
    const lost = new Promise<{ room: string; error: GiftdError }>((r) => v.once('roomLost', r));
    v.dropConnection({ holdReconnect: hold });
    await s.closeRoom();
    release();
    expect(await lost).toMatchObject({ room, error: { code: 13001, reason: 'room_not_found' } });
    expect(v.room).toBeNull();
    expect((await v.ping()).server_time_ms).toBeGreaterThan(0);
  });

  it('close() is final: pending commands reject with `closed`, no reconnect', async () => {
    const v = await client(uid('viewer'), 'viewer');
    const closed = new Promise((r) => v.once('closed', r));
    const ping = v.ping();
    v.close();
    await expect(ping).rejects.toMatchObject({ code: 0, reason: 'closed' });
    await closed;
    await new Promise((r) => setTimeout(r, 200));
    expect(v.state).toBe('closed');
    expect(v.stats.reconnects).toBe(0);
  });
});

// The protocol schema against real frames from a real giftd: every frame the SDK sends and every
// frame it receives in a session that exercises every command, event kind and private message.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Ajv2020 } from 'ajv/dist/2020.js';
import { afterAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { GiftdError } from '../src/index.js';
import { client, closeAll, giftd, topup, uid, until } from './helpers.js';

const schemaPath = fileURLToPath(new URL('../schema/protocol.schema.json', import.meta.url));
const schema = JSON.parse(readFileSync(schemaPath, 'utf8')) as { $id: string };
const ajv = new Ajv2020({ strict: true, allErrors: true });
ajv.addSchema(schema);
const validator = (def: string) => {
  const v = ajv.getSchema(`${schema.$id}#/$defs/${def}`);
  if (!v) throw new Error(`no $defs/${def}`);
  return v;
};

/** Validates `value` against `$defs/def`, failing with ajv's errors and the frame. */
function expectValid(def: string, value: unknown): void {
  const v = validator(def);
  if (!v(value)) {
    throw new Error(`not a valid ${def}: ${JSON.stringify(value)}\n${ajv.errorsText(v.errors)}`);
  }
}

const RESULT_DEF: Record<string, string> = {
  auth: 'AuthResult',
  open_room: 'OpenRoomResult',
  close_room: 'CloseRoomResult',
  join: 'JoinResult',
  leave: 'LeaveResult',
  send_gift: 'SendGiftResult',
  ask: 'AskResult',
  answer: 'AnswerResult',
  thank: 'ThankResult',
  set_goal: 'GoalResult',
  end_goal: 'GoalResult',
  leaderboard: 'LeaderboardResult',
  pk_challenge: 'PkResult',
  pk_accept: 'PkResult',
  pk_decline: 'PkResult',
  pk_leave: 'PkResult',
  balance: 'BalanceResult',
  ping: 'PingResult',
};

/** Collects one client's frames; `check()` validates them all and returns what was seen. */
class Tap {
  readonly out: Record<string, unknown>[] = [];
  readonly in: Record<string, unknown>[] = [];
  readonly onFrame = (dir: 'in' | 'out', text: string) => {
    (dir === 'in' ? this.in : this.out).push(JSON.parse(text) as Record<string, unknown>);
  };

  check(seen: Set<string>): void {
    const commandById = new Map<number, Record<string, unknown>>();
    for (const m of this.out) {
      expectValid('ClientMessage', m);
      commandById.set(m.id as number, m);
    }
    for (const m of this.in) {
      expectValid('ServerMessage', m);
      if (m.type === 'ack') {
        const command = commandById.get(m.id as number);
        expect(command, `ack for an id never sent: ${JSON.stringify(m)}`).toBeDefined();
        const type = command!.type as string;
        // Which variant: the generic result definition, and the specific one for the record.
        expectValid(RESULT_DEF[type]!, m.result);
        let variant = type;
        const r = m.result as Record<string, unknown>;
        if (type === 'join') variant = r.recovered === true ? 'join(recovered)' : r.recovered === false ? 'join(not recovered)' : 'join';
        if (type === 'ask') variant = 'receipt' in r ? 'ask(paid)' : 'ask(free)';
        if (type === 'balance' && 'earnings_coins' in r) variant = 'balance(streamer)';
        seen.add(`ack:${variant}`);
      } else if (m.type === 'event') {
        seen.add(`event:${m.kind as string}`);
        if (m.kind === 'question' && 'paid' in m) seen.add('event:question(paid)');
      } else {
        seen.add(m.type as string);
      }
    }
  }
}

afterAll(closeAll);

describe('protocol schema', () => {
  it('src/protocol.ts is generated from the schema and up to date', () => {
    const script = fileURLToPath(new URL('../scripts/gen-types.mjs', import.meta.url));
    const out = execFileSync(process.execPath, [script, '--check'], { encoding: 'utf8' });
    expect(out).toContain('matches the schema');
  });

  it('every frame of a full session with a real giftd matches it', async () => {
    const room = uid('schema');
    const star = uid('star');
    const bob = uid('bob');
    const carol = uid('carol');
    const taps = { star: new Tap(), bob: new Tap(), carol: new Tap(), rival: new Tap() };
    const s = await client(star, 'streamer', { onFrame: taps.star.onFrame });
    // bob authenticates with an `auth` message, the others in the handshake.
    const b = await client(bob, 'viewer', { onFrame: taps.bob.onFrame, auth: 'message' });
    const c = await client(carol, 'viewer', { onFrame: taps.carol.onFrame });
    await topup(bob, 'ios', 10_000);

    await s.openRoom(room, 'Schema stream');
    await b.join(room);
    await c.join(room);
    const receipt = await b.sendGift('coffee');
    const free = await b.ask('What game is next?');
    const paid = await b.ask('Shout-out?', { sticker: 'star' });
    const answered = new Promise((r) => b.once('answered', r));
    const thanked = new Promise((r) => b.once('thanked', r));
    await s.answer(free.question_id, 'Chess!');
    await s.thank(receipt.gift_id, 'Thanks bob!');
    await Promise.all([answered, thanked]);
    expect(paid.receipt.price_coins).toBe(500);
    await b.balance();
    await s.balance();
    await c.ping();
    const board = await c.leaderboard('session', { around: bob });
    expect(board.around?.map((e) => e.user)).toEqual([bob]);
    await c.leaderboard('all_time');
    // A PK battle with a rival streamer's room: challenged, accepted, scored by a gift, left.
    const rival = await client(uid('rival'), 'streamer', { onFrame: taps.rival.onFrame });
    const rivalRoom = uid('rival');
    await rival.openRoom(rivalRoom, 'Rival stream');
    const invited = await s.pkChallenge(rivalRoom);
    await until('a pk_invite in the rival room', () => taps.rival.in.some((m) => m.kind === 'pk_invite'));
    const started = await rival.pkAccept(invited.battle.battle_id);
    expect(started.battle.status).toBe('active');
    await b.sendGift('rose');
    await until('a pk_score', () => taps.star.in.some((m) => m.kind === 'pk_score'));
    const left = await rival.pkLeave(invited.battle.battle_id);
    expect(left.battle).toMatchObject({ status: 'ended', reason: 'left', winner: room });
    await until('a pk_ended', () => taps.star.in.some((m) => m.kind === 'pk_ended'));
    // Errors: one per family the SDK meets in a normal session.
    const errors = await Promise.all([
      c.sendGift('no-such-sticker').catch((e: unknown) => e),
      c.sendGift('castle').catch((e: unknown) => e),
      c.openRoom(uid('nope'), 'x').catch((e: unknown) => e),
      b.join(room).catch((e: unknown) => e),
    ]);
    expect(errors.map((e) => (e as GiftdError).reason)).toEqual([
      'unknown_sticker',
      'insufficient_funds',
      'wrong_role',
      'already_in_room',
    ]);
    // A viewer count is published at most every 500 ms after it changes.
    await until('a viewers event', () => taps.star.in.some((m) => m.kind === 'viewers'));
    // So are the leaderboards whose top changed.
    await until('a leaderboard event', () => taps.star.in.some((m) => m.kind === 'leaderboard'));
    // Leave; join again from a position (recovered), and from a foreign epoch (a fresh snapshot).
    const position = c.position!;
    await c.leave();
    await c.join(room, { since: position });
    await c.leave();
    await c.join(room, { since: { epoch: 'feedfacefeedface', seq: 1 } });
    const closed = new Promise((r) => c.once('room_closed', r));
    await s.closeRoom();
    await closed;

    const seen = new Set<string>();
    for (const tap of Object.values(taps)) tap.check(seen);
    const expected = [
      'welcome',
      'error',
      'thanks',
      'answered',
      'gift_received',
      ...['auth', 'open_room', 'close_room', 'join', 'join(recovered)', 'join(not recovered)', 'leave'].map((k) => `ack:${k}`),
      ...['send_gift', 'ask(free)', 'ask(paid)', 'answer', 'thank', 'balance', 'balance(streamer)', 'ping', 'leaderboard'].map(
        (k) => `ack:${k}`,
      ),
      ...['pk_challenge', 'pk_accept', 'pk_leave'].map((k) => `ack:${k}`),
      ...['pk_invite', 'pk_started', 'pk_score', 'pk_ended'].map((k) => `event:${k}`),
      ...['viewers', 'gift', 'question', 'question(paid)', 'answer', 'thanks', 'room_closed', 'leaderboard'].map(
        (k) => `event:${k}`,
      ),
    ];
    expect([...seen].sort()).toEqual(expect.arrayContaining(expected.sort()));
  });

  it('an error with `id: null` (malformed JSON) matches it', async () => {
    const ws = new WebSocket(giftd.wsUrl);
    const frames: unknown[] = [];
    await new Promise<void>((ok, fail) => {
      ws.once('error', fail);
      ws.on('open', () => {
        ws.send(JSON.stringify({ type: 'ping', id: 1 })); // before auth: not_authenticated
        ws.send('{nope');
      });
      ws.on('message', (data) => {
        frames.push(JSON.parse(String(data)));
        if (frames.length === 2) ok();
      });
    });
    ws.close();
    for (const f of frames) expectValid('ErrorMessage', f);
    expect(frames).toMatchObject([
      { id: 1, code: 11005, reason: 'not_authenticated' },
      { id: null, code: 11001, reason: 'bad_json' },
    ]);
  });

  it('the schema rejects frames that break it (the checks can fail)', () => {
    const v = validator('ServerMessage');
    expect(v({ type: 'event', room: 'r', epoch: 'e1', seq: 1, kind: 'gift' })).toBe(false);
    expect(v({ type: 'welcome', user: 'u', role: 'viewer', server_time_ms: 1, extra: 1 })).toBe(false);
    expect(validator('Receipt')({ gift_id: 'g1' })).toBe(false);
    expect(validator('ClientMessage')({ type: 'send_gift', id: 1, sticker: 'rose' })).toBe(false);
  });

  it('gift_received: PROTOCOL.md §4\'s example passes, with or without `seq`; broken ones fail', () => {
    const v = validator('ServerMessage');
    const example = {
      type: 'gift_received', room: 'live1', gift_id: 'g1a2017cb8bde3f62d4b7a4f86d8', from: 'bob', sticker: 'coffee',
      price_coins: 100, store_coins: 30, streamer_coins: 35, platform_coins: 35, seq: 5,
    };
    expectValid('GiftReceivedMessage', example);
    expect(v(example)).toBe(true);
    const { seq: _seq, ...unpublished } = example;
    expect(v(unpublished)).toBe(true); // the room closed before the gift was published
    expect(v({ ...example, seq: null })).toBe(true);
    for (const field of ['store_coins', 'streamer_coins', 'platform_coins', 'gift_id', 'room', 'from']) {
      const { [field]: _gone, ...missing } = example as Record<string, unknown>;
      expect(v(missing), `without ${field}`).toBe(false);
    }
    expect(v({ ...example, balance_coins: 900 }), 'an extra field').toBe(false);
    expect(v({ ...example, store_coins: -1 }), 'a negative share').toBe(false);
    expect(v({ ...example, seq: 'five' }), 'a string seq').toBe(false);
    expect(v({ ...example, type: 'gift_receivd' }), 'another type').toBe(false);
  });
});

describe('room mechanics', () => {
  it('combo and goal frames as PROTOCOL.md §4 shows them pass; broken ones fail', () => {
    const at = { type: 'event', room: 'live1', epoch: '9f2c4e1ab7d03366' };
    const goal = { goal_id: 12, target_coins: 1000, sticker: 'coffee', progress_coins: 1000, reached: true };
    const gift = { ...at, seq: 21, kind: 'gift', gift_id: 'g1', from: 'bob', sticker: 'clap', sticker_name: 'Clap', price_coins: 10 };
    expectValid('RoomEvent', { ...gift, combo: { count: 3, total_coins: 30 } });
    expectValid('RoomEvent', { ...at, seq: 24, kind: 'combo_end', from: 'bob', sticker: 'clap', count: 3, total_coins: 30 });
    for (const kind of ['goal_set', 'goal_progress', 'goal_reached']) expectValid('RoomEvent', { ...at, seq: 30, kind, goal });
    expectValid('RoomEvent', { ...at, seq: 41, kind: 'goal_ended', goal, reason: 'ended' });
    expectValid('GoalResult', { goal, seq: 41 });
    expectValid('ClientMessage', { type: 'set_goal', id: 1, target_coins: 500, sticker: 'rose', duration_ms: 60000 });
    expectValid('ClientMessage', { type: 'end_goal', id: 2 });
    expect(validator('RoomEvent')({ ...gift, combo: { count: 1, total_coins: 10 } })).toBe(false);
    expect(validator('RoomEvent')({ ...at, seq: 41, kind: 'goal_ended', goal, reason: 'other' })).toBe(false);
  });
});

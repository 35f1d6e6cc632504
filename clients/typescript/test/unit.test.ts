// Pure parts of the SDK: the close-code rule and the sequencer.
import { describe, expect, it } from 'vitest';
import { reconnectDelay, RESYNC_CLOSE_CODE, Sequencer, shouldReconnect } from '../src/index.js';

describe('close-code rule (PROTOCOL.md §9)', () => {
  it('reconnects on 4000–4499, 1001, 1011 and 1006; stops on 4500–4999, 1000 and 1007–1009', () => {
    for (const code of [4000, 4001, 4250, 4499, 1001, 1011, 1006]) expect(shouldReconnect(code), `${code}`).toBe(true);
    for (const code of [4500, 4502, 4503, 4999, 1000, 1007, 1008, 1009]) expect(shouldReconnect(code), `${code}`).toBe(false);
  });

  it('4002 `resync` reconnects at once on the first attempt, then with the usual backoff', () => {
    expect(RESYNC_CLOSE_CODE).toBe(4002);
    expect(shouldReconnect(4002)).toBe(true);
    const opts = { initialDelayMs: 100, maxDelayMs: 1_000 };
    const max = () => 1; // the largest jitter
    const min = () => 0; // the smallest
    expect(reconnectDelay(1, 4002, opts, max)).toBe(0);
    expect(reconnectDelay(1, 4002, opts, min)).toBe(0);
    // Any other code's first attempt waits half to all of initialDelayMs.
    for (const code of [4000, 4001, 1006, 1011]) {
      expect(reconnectDelay(1, code, opts, min), `${code}`).toBe(50);
      expect(reconnectDelay(1, code, opts, max), `${code}`).toBe(100);
    }
    // A failed immediate attempt (the next close is 1006) backs off as usual, bounded.
    expect(reconnectDelay(2, 1006, opts, max)).toBe(200);
    expect(reconnectDelay(5, 1006, opts, max)).toBe(1_000);
    expect(reconnectDelay(5, 1006, opts, min)).toBe(500);
  });
});

describe('Sequencer', () => {
  const ev = (seq: number, epoch = 'e1', room = 'r1') => ({ room, epoch, seq });

  it('delivers consecutive events once, drops duplicates, flags gaps and other epochs', () => {
    const s = new Sequencer();
    expect(s.check(ev(1))).toBe('foreign');
    s.reset('r1', { epoch: 'e1', seq: 4 });
    expect(s.check(ev(5))).toBe('deliver');
    expect(s.check(ev(5))).toBe('duplicate');
    expect(s.check(ev(3))).toBe('duplicate');
    expect(s.check(ev(7))).toBe('gap');
    expect(s.position).toEqual({ epoch: 'e1', seq: 5 });
    expect(s.check(ev(6, 'e2'))).toBe('gap');
    expect(s.check(ev(6, 'e1', 'other'))).toBe('foreign');
    expect(s.check(ev(6))).toBe('deliver');
    s.clear();
    expect(s.check(ev(7))).toBe('foreign');
    expect(s.position).toBeNull();
  });
});

// Pure parts of the SDK: the close-code rule and the sequencer.
import { describe, expect, it } from 'vitest';
import { Sequencer, shouldReconnect } from '../src/index.js';

describe('close-code rule (PROTOCOL.md §9)', () => {
  it('reconnects on 4000–4499, 1001, 1011 and 1006; stops on 4500–4999, 1000 and 1007–1009', () => {
    for (const code of [4000, 4001, 4250, 4499, 1001, 1011, 1006]) expect(shouldReconnect(code), `${code}`).toBe(true);
    for (const code of [4500, 4502, 4503, 4999, 1000, 1007, 1008, 1009]) expect(shouldReconnect(code), `${code}`).toBe(false);
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

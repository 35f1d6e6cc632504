import type { Position, RoomEvent } from './protocol.js';

/** What to do with a room event. */
export type Verdict =
  /** The next event: deliver it (the position has advanced). */
  | 'deliver'
  /** Already delivered (or older): drop it. */
  | 'duplicate'
  /** Events are missing before it (or it is of another epoch): re-join with `since`. */
  | 'gap'
  /** Not for the room the client is in: drop it. */
  | 'foreign';

/**
 * Tracks the position `{epoch, seq}` of the last room event delivered to the app, so that every
 * event is delivered exactly once and in order.
 */
export class Sequencer {
  private room: string | null = null;
  private pos: Position | null = null;

  /** Enters `room` at `position` (a snapshot's `{epoch, seq}`, or a recovered position). */
  reset(room: string, position: Position): void {
    this.room = room;
    this.pos = { epoch: position.epoch, seq: position.seq };
  }

  clear(): void {
    this.room = null;
    this.pos = null;
  }

  get currentRoom(): string | null {
    return this.room;
  }

  /** The position of the last event delivered (or of the snapshot), if in a room. */
  get position(): Position | null {
    return this.pos ? { ...this.pos } : null;
  }

  check(event: Pick<RoomEvent, 'room' | 'epoch' | 'seq'>): Verdict {
    if (this.room === null || this.pos === null || event.room !== this.room) return 'foreign';
    if (event.epoch !== this.pos.epoch) return 'gap';
    if (event.seq <= this.pos.seq) return 'duplicate';
    if (event.seq !== this.pos.seq + 1) return 'gap';
    this.pos.seq = event.seq;
    return 'deliver';
  }
}

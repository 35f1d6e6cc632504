import type { ErrorReason } from './protocol.js';

/** Reasons the SDK itself gives (code 0); the server's own reasons come with their code. */
export type ClientErrorReason =
  /** The connection was lost before the ack, and the command is not one the SDK may resend. */
  | 'connection_lost'
  /** The client was closed (by `close()` or a final close code) before the ack. */
  | 'closed'
  /** No ack within `requestTimeoutMs`. */
  | 'timeout'
  /** The WebSocket handshake was refused (HTTP status in `status`). */
  | 'handshake_refused'
  /** The command needs a room and the client is in none. */
  | 'not_connected';

/** A command's failure: the server's `error` frame, or one of the SDK's own (code 0). */
export class GiftdError extends Error {
  readonly code: number;
  readonly reason: ErrorReason | ClientErrorReason;
  /** The idempotency key of the gift (or paid question) that failed: resend with it to retry. */
  readonly key?: string;
  /** The HTTP status of a refused handshake. */
  readonly status?: number;

  constructor(
    code: number,
    reason: ErrorReason | ClientErrorReason,
    message: string,
    extra: { key?: string; status?: number } = {},
  ) {
    super(message);
    this.name = 'GiftdError';
    this.code = code;
    this.reason = reason;
    if (extra.key !== undefined) this.key = extra.key;
    if (extra.status !== undefined) this.status = extra.status;
  }
}

/**
 * The close-code rule of PROTOCOL.md §9: 4000–4499 and 1001/1011/1006 (plus the transient
 * 1005/1012/1013/1014) reconnect with backoff (4002 `resync`: at once, see `reconnectDelay`);
 * 4500–4999, 1000, 1007–1009 and anything else are final.
 */
export function shouldReconnect(code: number): boolean {
  if (code >= 4000 && code <= 4499) return true;
  return [1001, 1005, 1006, 1011, 1012, 1013, 1014].includes(code);
}

export { GiftdClient, newIdempotencyKey, reconnectDelay, RESYNC_CLOSE_CODE } from './client.js';
export type {
  ClientEvents,
  ClientState,
  ConnectedInfo,
  GiftdClientOptions,
  ReconnectOptions,
  RejoinedInfo,
  WebSocketConstructor,
  WebSocketLike,
} from './client.js';
export { GiftdError, shouldReconnect } from './errors.js';
export type { ClientErrorReason } from './errors.js';
export { Sequencer } from './sequencer.js';
export type { Verdict } from './sequencer.js';
export { TypedEmitter } from './emitter.js';
export type * from './protocol.js';

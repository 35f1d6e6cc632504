/* Generated from schema/protocol.schema.json by scripts/gen-types.mjs (npm run gen). Do not edit. */

/**
 * The giftd WebSocket protocol (docs/PROTOCOL.md): every client and server message. Strict on purpose: the SDK's tests validate real frames from a real giftd against it, so a server change that is not reflected here fails them.
 *
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "GiftdFrame".
 */
export type GiftdFrame = ClientMessage | ServerMessage;
/**
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "ClientMessage".
 */
export type ClientMessage =
  | AuthMessage
  | OpenRoomMessage
  | CloseRoomMessage
  | JoinMessage
  | LeaveMessage
  | SendGiftMessage
  | AskMessage
  | AnswerMessage
  | ThankMessage
  | SetGoalMessage
  | EndGoalMessage
  | LeaderboardMessage
  | PkChallengeMessage
  | PkBattleMessage
  | BalanceMessage
  | PingMessage;
/**
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "RequestId".
 */
export type RequestId = number;
/**
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "RoomId".
 */
export type RoomId = string;
/**
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "Epoch".
 */
export type Epoch = string;
/**
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "Seq".
 */
export type Seq = number;
/**
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "IdempotencyKey".
 */
export type IdempotencyKey = string;
/**
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "Coins".
 */
export type Coins = number;
/**
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "Millis".
 */
export type Millis = number;
/**
 * session: the room's gifts since it opened; window: its gifts of the last rooms.leaderboard_window_ms; all_time: every gift to the streamer, from the ledger.
 *
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "Board".
 */
export type Board = "session" | "window" | "all_time";
/**
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "ServerMessage".
 */
export type ServerMessage =
  WelcomeMessage | AckMessage | ErrorMessage | RoomEvent | ThanksMessage | AnsweredMessage | GiftReceivedMessage;
/**
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "Role".
 */
export type Role = "viewer" | "streamer";
/**
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "ErrorReason".
 */
export type ErrorReason =
  | "bad_json"
  | "unknown_type"
  | "invalid_message"
  | "binary_frame"
  | "not_authenticated"
  | "already_authenticated"
  | "message_too_large"
  | "invalid_token"
  | "token_expired"
  | "wrong_role"
  | "not_room_owner"
  | "token_room_mismatch"
  | "origin_not_allowed"
  | "room_not_found"
  | "room_exists"
  | "not_in_room"
  | "already_in_room"
  | "question_not_found"
  | "gift_not_found"
  | "self_gift"
  | "goal_not_found"
  | "pk_busy"
  | "pk_not_found"
  | "red_packet_not_found"
  | "red_packet_empty"
  | "red_packet_expired"
  | "insufficient_funds"
  | "unknown_sticker"
  | "idempotency_conflict"
  | "invalid_amount"
  | "spending_cap_exceeded"
  | "purchase_not_found"
  | "rate_limited"
  | "text_too_long"
  | "too_many_connections"
  | "room_full"
  | "too_many_rooms"
  | "room_busy"
  | "internal"
  | "ledger_unavailable"
  | "shutting_down"
  | "room_unavailable";
/**
 * With spending_cap_exceeded only: what the user may still spend in the window.
 */
export type Coins1 = number;
/**
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "RoomEvent".
 */
export type RoomEvent =
  | ViewersEvent
  | GiftEvent
  | QuestionEvent
  | AnswerEvent
  | ThanksEvent
  | RoomClosedEvent
  | ComboEndEvent
  | GoalEvent
  | GoalEndedEvent
  | LeaderboardEvent
  | PkEvent
  | PkClockEvent;
/**
 * Coins of the gifts the ledger committed in this room while the battle was active.
 */
export type Coins2 = number;
/**
 * The winning room; absent for a draw or a battle that never started.
 */
export type RoomId1 = string;
/**
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "JoinResult".
 */
export type JoinResult = Snapshot | RecoveredJoin;
/**
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "AskResult".
 */
export type AskResult = FreeAskResult | PaidAskResult;
/**
 * Debt left by refunds of coins already spent; later top-ups repay it first.
 */
export type Coins3 = number;

export interface GiftdProtocolSchema {}
/**
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "AuthMessage".
 */
export interface AuthMessage {
  type: "auth";
  id: RequestId;
  token: string;
}
/**
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "OpenRoomMessage".
 */
export interface OpenRoomMessage {
  type: "open_room";
  id: RequestId;
  room: RoomId;
  title: string;
}
/**
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "CloseRoomMessage".
 */
export interface CloseRoomMessage {
  type: "close_room";
  id: RequestId;
}
/**
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "JoinMessage".
 */
export interface JoinMessage {
  type: "join";
  id: RequestId;
  room: RoomId;
  since?: Position;
}
/**
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "Position".
 */
export interface Position {
  epoch: Epoch;
  seq: Seq;
}
/**
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "LeaveMessage".
 */
export interface LeaveMessage {
  type: "leave";
  id: RequestId;
}
/**
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "SendGiftMessage".
 */
export interface SendGiftMessage {
  type: "send_gift";
  id: RequestId;
  sticker: string;
  key: IdempotencyKey;
}
/**
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "AskMessage".
 */
export interface AskMessage {
  type: "ask";
  id: RequestId;
  text: string;
  sticker?: string;
  key?: IdempotencyKey;
}
/**
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "AnswerMessage".
 */
export interface AnswerMessage {
  type: "answer";
  id: RequestId;
  question_id: number;
  text: string;
}
/**
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "ThankMessage".
 */
export interface ThankMessage {
  type: "thank";
  id: RequestId;
  gift_id: string;
  text?: string;
}
/**
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "SetGoalMessage".
 */
export interface SetGoalMessage {
  type: "set_goal";
  id: RequestId;
  target_coins: Coins;
  sticker?: string;
  duration_ms?: Millis;
}
/**
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "EndGoalMessage".
 */
export interface EndGoalMessage {
  type: "end_goal";
  id: RequestId;
}
/**
 * A board of the current room: its top N and, with `around`, that user's entry with up to rooms.leaderboard_neighbours entries on each side.
 *
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "LeaderboardMessage".
 */
export interface LeaderboardMessage {
  type: "leaderboard";
  id: RequestId;
  board: Board;
  around?: string;
}
/**
 * The current room's streamer challenges the streamer of live room `room` to a PK battle.
 *
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "PkChallengeMessage".
 */
export interface PkChallengeMessage {
  type: "pk_challenge";
  id: RequestId;
  room: RoomId;
}
/**
 * The current room's streamer accepts or declines a challenge to the room, or leaves its battle (the other room wins) or withdraws its challenge.
 *
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "PkBattleMessage".
 */
export interface PkBattleMessage {
  type: "pk_accept" | "pk_decline" | "pk_leave";
  id: RequestId;
  battle_id: string;
}
/**
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "BalanceMessage".
 */
export interface BalanceMessage {
  type: "balance";
  id: RequestId;
}
/**
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "PingMessage".
 */
export interface PingMessage {
  type: "ping";
  id: RequestId;
}
/**
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "WelcomeMessage".
 */
export interface WelcomeMessage {
  type: "welcome";
  user: string;
  role: Role;
  server_time_ms: Millis;
}
/**
 * The result's shape depends on the command: see the *Result definitions.
 *
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "AckMessage".
 */
export interface AckMessage {
  type: "ack";
  id: RequestId;
  result: {};
}
/**
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "ErrorMessage".
 */
export interface ErrorMessage {
  type: "error";
  id: RequestId | null;
  code: number;
  reason: ErrorReason;
  message: string;
  remaining_coins?: Coins1;
}
/**
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "ViewersEvent".
 */
export interface ViewersEvent {
  type: "event";
  room: RoomId;
  epoch: Epoch;
  seq: Seq;
  kind: "viewers";
  count: number;
}
/**
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "GiftEvent".
 */
export interface GiftEvent {
  type: "event";
  room: RoomId;
  epoch: Epoch;
  seq: Seq;
  kind: "gift";
  gift_id: string;
  from: string;
  sticker: string;
  sticker_name: string;
  price_coins: Coins;
  combo?: Combo;
}
/**
 * A gift's place in its combo: on the 2nd and later gifts of one sticker from one sender within rooms.combo_window_ms.
 *
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "Combo".
 */
export interface Combo {
  count: number;
  total_coins: Coins;
}
/**
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "QuestionEvent".
 */
export interface QuestionEvent {
  type: "event";
  room: RoomId;
  epoch: Epoch;
  seq: Seq;
  kind: "question";
  question_id: number;
  from: string;
  text: string;
  created_ms: Millis;
  answered: boolean;
  paid?: PaidInfo;
  pinned_until_ms?: Millis;
}
/**
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "PaidInfo".
 */
export interface PaidInfo {
  gift_id: string;
  sticker: string;
  price_coins: Coins;
}
/**
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "AnswerEvent".
 */
export interface AnswerEvent {
  type: "event";
  room: RoomId;
  epoch: Epoch;
  seq: Seq;
  kind: "answer";
  question_id: number;
  asker: string;
  text: string;
}
/**
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "ThanksEvent".
 */
export interface ThanksEvent {
  type: "event";
  room: RoomId;
  epoch: Epoch;
  seq: Seq;
  kind: "thanks";
  gift_id: string;
  to: string;
  text: string;
}
/**
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "RoomClosedEvent".
 */
export interface RoomClosedEvent {
  type: "event";
  room: RoomId;
  epoch: Epoch;
  seq: Seq;
  kind: "room_closed";
  reason: string;
}
/**
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "ComboEndEvent".
 */
export interface ComboEndEvent {
  type: "event";
  room: RoomId;
  epoch: Epoch;
  seq: Seq;
  kind: "combo_end";
  from: string;
  sticker: string;
  count: number;
  total_coins: Coins;
}
/**
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "GoalEvent".
 */
export interface GoalEvent {
  type: "event";
  room: RoomId;
  epoch: Epoch;
  seq: Seq;
  kind: "goal_set" | "goal_progress" | "goal_reached";
  goal: Goal;
}
/**
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "Goal".
 */
export interface Goal {
  goal_id: Seq;
  target_coins: Coins;
  sticker?: string;
  deadline_ms?: Millis;
  progress_coins: Coins;
  reached: boolean;
}
/**
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "GoalEndedEvent".
 */
export interface GoalEndedEvent {
  type: "event";
  room: RoomId;
  epoch: Epoch;
  seq: Seq;
  kind: "goal_ended";
  goal: Goal;
  reason: "deadline" | "ended" | "replaced" | "room_closed";
}
/**
 * A board's top N changed; coalesced, at most once per rooms.viewer_count_interval_ms.
 *
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "LeaderboardEvent".
 */
export interface LeaderboardEvent {
  type: "event";
  room: RoomId;
  epoch: Epoch;
  seq: Seq;
  kind: "leaderboard";
  board: Board;
  top: Ranked[];
}
/**
 * A gifter's place on a board: more coins first, equal coins by user id in byte order.
 *
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "Ranked".
 */
export interface Ranked {
  rank: number;
  user: string;
  coins: Coins;
}
/**
 * pk_invite: a challenge the room is in; pk_ended: the battle or challenge ended (exactly once per room).
 *
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "PkEvent".
 */
export interface PkEvent {
  type: "event";
  room: RoomId;
  epoch: Epoch;
  seq: Seq;
  kind: "pk_invite" | "pk_ended";
  battle: PkBattle;
}
/**
 * A PK battle as the ledger records it.
 *
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "PkBattle".
 */
export interface PkBattle {
  battle_id: string;
  challenger: PkSide;
  opponent: PkSide;
  status: "invited" | "active" | "ended";
  created_ms: Millis;
  answer_by_ms: Millis;
  duration_ms: Millis;
  started_ms?: Millis;
  ends_ms?: Millis;
  ended_ms?: Millis;
  reason?: "time_up" | "declined" | "expired" | "left" | "room_closed";
  winner?: RoomId1;
}
/**
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "PkSide".
 */
export interface PkSide {
  room: RoomId;
  streamer: string;
  score_coins: Coins2;
}
/**
 * pk_started: the challenge was accepted; pk_score: the scores changed (coalesced, at most once per rooms.viewer_count_interval_ms). `remaining_ms` is the countdown when the event was published.
 *
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "PkClockEvent".
 */
export interface PkClockEvent {
  type: "event";
  room: RoomId;
  epoch: Epoch;
  seq: Seq;
  kind: "pk_started" | "pk_score";
  battle: PkBattle;
  remaining_ms: Millis;
}
/**
 * Private: the streamer thanked one of your gifts.
 *
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "ThanksMessage".
 */
export interface ThanksMessage {
  type: "thanks";
  room: RoomId;
  gift_id: string;
  from: string;
  text: string;
}
/**
 * Private: the streamer answered your question.
 *
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "AnsweredMessage".
 */
export interface AnsweredMessage {
  type: "answered";
  room: RoomId;
  question_id: number;
  text: string;
}
/**
 * Private, to the streamer: a gift (or paid question) was committed in your room, with its exact three-way split, which the public `gift` event leaves out. `seq` is the gift's room event; PROTOCOL.md §4 says it is absent if the room closed before the gift was published (giftd sends `null` then, so both are accepted).
 *
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "GiftReceivedMessage".
 */
export interface GiftReceivedMessage {
  type: "gift_received";
  room: RoomId;
  gift_id: string;
  from: string;
  sticker: string;
  price_coins: Coins;
  store_coins: Coins;
  streamer_coins: Coins;
  platform_coins: Coins;
  seq?: Seq | null;
}
/**
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "Leaderboards".
 */
export interface Leaderboards {
  session: Ranked[];
  window: Ranked[];
  all_time: Ranked[];
}
/**
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "Question".
 */
export interface Question {
  question_id: number;
  from: string;
  text: string;
  created_ms: Millis;
  answered: boolean;
  paid?: PaidInfo;
  pinned_until_ms?: Millis;
}
/**
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "Funding".
 */
export interface Funding {
  ios_coins: Coins;
  android_coins: Coins;
  web_coins: Coins;
}
/**
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "AuthResult".
 */
export interface AuthResult {
  user: string;
  role: Role;
}
/**
 * The ack of open_room, of join, and of a join whose `since` could not be recovered (then `recovered: false`).
 *
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "Snapshot".
 */
export interface Snapshot {
  room: RoomId;
  title: string;
  streamer: string;
  /**
   * Viewer connections (the cluster's).
   */
  viewers: number;
  /**
   * Distinct viewer users: a user on two devices counts once (in a cluster, once per node).
   */
  users: number;
  epoch: Epoch;
  seq: Seq;
  recovered?: false;
  questions_open: Question[];
  questions_pinned: Question[];
  goal?: Goal;
  pk?: PkBattle;
  leaderboards: Leaderboards;
}
/**
 * The ack of a join whose `since` was recovered: no snapshot, the missed events follow.
 *
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "RecoveredJoin".
 */
export interface RecoveredJoin {
  room: RoomId;
  title: string;
  streamer: string;
  epoch: Epoch;
  seq: Seq;
  recovered: true;
}
/**
 * The ack of open_room, of join, and of a join whose `since` could not be recovered (then `recovered: false`).
 *
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "OpenRoomResult".
 */
export interface OpenRoomResult {
  room: RoomId;
  title: string;
  streamer: string;
  /**
   * Viewer connections (the cluster's).
   */
  viewers: number;
  /**
   * Distinct viewer users: a user on two devices counts once (in a cluster, once per node).
   */
  users: number;
  epoch: Epoch;
  seq: Seq;
  recovered?: false;
  questions_open: Question[];
  questions_pinned: Question[];
  goal?: Goal;
  pk?: PkBattle;
  leaderboards: Leaderboards;
}
/**
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "CloseRoomResult".
 */
export interface CloseRoomResult {
  room: RoomId;
  seq: Seq;
}
/**
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "LeaveResult".
 */
export interface LeaveResult {
  room: RoomId;
}
/**
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "Receipt".
 */
export interface Receipt {
  gift_id: string;
  room: RoomId;
  sticker: string;
  price_coins: Coins;
  store_coins: Coins;
  streamer_coins: Coins;
  platform_coins: Coins;
  funding: Funding;
  balance_coins: Coins;
  seq: Seq | null;
  replayed: boolean;
}
/**
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "SendGiftResult".
 */
export interface SendGiftResult {
  gift_id: string;
  room: RoomId;
  sticker: string;
  price_coins: Coins;
  store_coins: Coins;
  streamer_coins: Coins;
  platform_coins: Coins;
  funding: Funding;
  balance_coins: Coins;
  seq: Seq | null;
  replayed: boolean;
}
/**
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "FreeAskResult".
 */
export interface FreeAskResult {
  question_id: number;
  seq: Seq;
}
/**
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "PaidAskResult".
 */
export interface PaidAskResult {
  question_id: number | null;
  seq: Seq | null;
  receipt: Receipt;
}
/**
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "AnswerResult".
 */
export interface AnswerResult {
  question_id: number;
  seq: Seq;
}
/**
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "ThankResult".
 */
export interface ThankResult {
  gift_id: string;
  to: string;
  seq: Seq;
}
/**
 * The ack of set_goal (the new goal and its goal_set event) and of end_goal (the goal as it ended and its goal_ended event).
 *
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "GoalResult".
 */
export interface GoalResult {
  goal: Goal;
  seq: Seq;
}
/**
 * The ack of pk_challenge, pk_accept, pk_decline and pk_leave: the battle as the ledger recorded it, and the room event that shows it (null if the room had already shown it).
 *
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "PkResult".
 */
export interface PkResult {
  battle: PkBattle;
  seq: Seq | null;
}
/**
 * The ack of leaderboard: the board's top N, and with `around`, that user's entry and neighbours (empty if the user is not on the board).
 *
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "LeaderboardResult".
 */
export interface LeaderboardResult {
  board: Board;
  top: Ranked[];
  around?: Ranked[];
}
/**
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "BalanceResult".
 */
export interface BalanceResult {
  balance_coins: Coins;
  ios_coins: Coins;
  android_coins: Coins;
  web_coins: Coins;
  earnings_coins?: Coins;
  owed_coins: Coins3;
}
/**
 * This interface was referenced by `GiftdProtocolSchema`'s JSON-Schema
 * via the `definition` "PingResult".
 */
export interface PingResult {
  server_time_ms: Millis;
}

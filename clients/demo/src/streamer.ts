// The streamer page: open a room, watch gifts arrive and thank them, follow earnings (each gift's
// three-way split, from the private `gift_received`), answer questions (paid ones pinned), close
// the room.
import type { GiftdClient, GiftEvent, GiftReceivedMessage, Question } from '../../typescript/src/index.js';
import { $, button, el, guarded, log, prepend, Questions, questionLine, connectPanel, TopGifters } from './common.js';

export function streamerPage(): void {
  connectPanel('streamer', (client) => {
    for (const id of ['room-panel', 'earnings', 'gifts-panel', 'board-panel', 'questions-panel']) $(id).hidden = false;
    new StreamerRoom(client);
  });
}

class StreamerRoom {
  private questions: Questions;
  /** The room open on this page, whose gifts the earnings panel adds up. */
  private room: string | null = null;
  /** Running totals of this room's gifts since it opened, by share. */
  private earned = { price: 0, store: 0, streamer: 0, platform: 0 };
  /** Gifts already counted (a gift is counted once, whatever arrives twice). */
  private counted = new Set<string>();

  constructor(private client: GiftdClient) {
    this.questions = new Questions((q) => this.questionItem(q));
    new TopGifters(client);
    const open = $<HTMLButtonElement>('open-room');
    const close = $<HTMLButtonElement>('close-room');
    open.addEventListener('click', () =>
      guarded('open room', async () => {
        $('gifts').replaceChildren();
        const room = $<HTMLInputElement>('room').value.trim();
        this.room = room;
        this.earned = { price: 0, store: 0, streamer: 0, platform: 0 };
        this.counted.clear();
        this.showEarnings();
        await client.openRoom(room, $<HTMLInputElement>('title').value.trim());
        open.disabled = true;
        close.disabled = false;
        $('room-live').textContent = room;
        log(`room ${room} is live`);
      }),
    );
    close.addEventListener('click', () =>
      guarded('close room', async () => {
        await client.closeRoom();
        open.disabled = false;
        close.disabled = true;
        $('room-live').textContent = 'no';
      }),
    );
    client.on('snapshot', (s) => {
      $('viewers').textContent = String(s.viewers);
      this.questions.reset(s);
    });
    client.on('viewers', (e) => ($('viewers').textContent = String(e.count)));
    client.on('gift', (e) => this.gift(e));
    client.on('gift_received', (m) => this.earn(m));
    client.on('question', (e) => this.questions.add(e));
    client.on('answer', (e) => this.questions.answered(e.question_id, e.text));
    client.on('room_closed', (e) => {
      log(`room closed: ${e.reason}`);
      open.disabled = false;
      close.disabled = true;
      $('room-live').textContent = 'no';
    });
  }

  private gift(e: GiftEvent): void {
    const li = el('li');
    li.dataset.giftId = e.gift_id;
    li.append(
      el('span', 'who', e.from),
      ` sent ${e.sticker_name} `,
      el('span', 'price', `${e.price_coins} coins`),
    );
    const actions = el('div', 'actions');
    const thank = button('Thank', () =>
      guarded('thank', async () => {
        thank.disabled = true;
        await this.client.thank(e.gift_id, `Thank you ${e.from} for the ${e.sticker_name}!`);
        thank.replaceWith(el('span', 'thanked', 'thanked'));
      }),
    );
    actions.append(thank);
    li.append(actions);
    prepend($('gifts'), li);
  }

  /** A gift's exact split (sent to the streamer only): add it to the room's running totals. */
  private earn(m: GiftReceivedMessage): void {
    if (m.room !== this.room || this.counted.has(m.gift_id)) return;
    this.counted.add(m.gift_id);
    this.earned.price += m.price_coins;
    this.earned.store += m.store_coins;
    this.earned.streamer += m.streamer_coins;
    this.earned.platform += m.platform_coins;
    this.showEarnings();
  }

  private showEarnings(): void {
    $('earn-total').textContent = String(this.earned.price);
    $('earn-store').textContent = String(this.earned.store);
    $('earn-streamer').textContent = String(this.earned.streamer);
    $('earn-platform').textContent = String(this.earned.platform);
  }

  private questionItem(q: Question & { answer?: string }): HTMLElement {
    const li = questionLine(q);
    if (!q.answered) {
      const text = el('input') as HTMLInputElement;
      text.placeholder = 'Your answer';
      text.className = 'answer-text';
      const send = button('Answer', () =>
        guarded('answer', async () => {
          send.disabled = true;
          try {
            await this.client.answer(q.question_id, text.value.trim() || 'Yes!');
          } finally {
            send.disabled = false;
          }
        }),
      );
      const actions = el('div', 'actions');
      actions.append(text, send);
      li.append(actions);
    }
    return li;
  }
}

// The streamer page: open a room, watch gifts arrive and thank them, follow earnings, answer
// questions (paid ones pinned), close the room.
import type { GiftdClient, GiftEvent, Question } from '../../typescript/src/index.js';
import { $, button, el, guarded, log, prepend, Questions, questionLine, connectPanel } from './common.js';

export function streamerPage(): void {
  connectPanel('streamer', (client) => {
    for (const id of ['room-panel', 'earnings', 'gifts-panel', 'questions-panel']) $(id).hidden = false;
    new StreamerRoom(client);
  });
}

class StreamerRoom {
  private questions: Questions;
  /** The ledger's earnings when the room opened, so the page shows this room's part. */
  private earningsAtOpen = 0;
  private gifted = 0;

  constructor(private client: GiftdClient) {
    this.questions = new Questions((q) => this.questionItem(q));
    const open = $<HTMLButtonElement>('open-room');
    const close = $<HTMLButtonElement>('close-room');
    open.addEventListener('click', () =>
      guarded('open room', async () => {
        const balance = await client.balance();
        this.earningsAtOpen = balance.earnings_coins ?? 0;
        this.gifted = 0;
        this.showEarnings(this.earningsAtOpen);
        $('gifts').replaceChildren();
        const room = $<HTMLInputElement>('room').value.trim();
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
    this.gifted += e.price_coins;
    // The ledger committed the gift before the room heard of it, so the share is there already.
    void guarded('balance', async () => {
      const balance = await this.client.balance();
      this.showEarnings(balance.earnings_coins ?? 0);
    });
  }

  private showEarnings(earnings: number): void {
    const mine = earnings - this.earningsAtOpen;
    $('earn-total').textContent = String(this.gifted);
    $('earn-streamer').textContent = String(mine);
    $('earn-others').textContent = String(Math.max(0, this.gifted - mine));
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

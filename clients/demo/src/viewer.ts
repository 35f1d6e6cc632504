// The viewer page: join a room, pick and send stickers (a receipt with the three-way split for
// each), follow the room's gift ticker, questions and viewer count, see thank-yous, ask.
import { newIdempotencyKey } from '../../typescript/src/index.js';
import type { GiftdClient, Receipt } from '../../typescript/src/index.js';
import {
  $,
  button,
  connectPanel,
  devCall,
  el,
  getJson,
  guarded,
  log,
  prepend,
  Questions,
  questionLine,
  stickers,
  TopGifters,
} from './common.js';

export function viewerPage(): void {
  connectPanel('viewer', (client, user) => {
    for (const id of ['room-panel', 'wallet', 'stickers-panel', 'receipts-panel', 'ticker-panel', 'board-panel', 'questions-panel']) {
      $(id).hidden = false;
    }
    new ViewerRoom(client, user);
  });
}

class ViewerRoom {
  private questions = new Questions(questionLine);

  constructor(
    private client: GiftdClient,
    private user: string,
  ) {
    new TopGifters(client);
    void this.listRooms();
    void guarded('stickers', () => this.picker());
    void guarded('balance', async () => this.showBalance((await client.balance()).balance_coins));
    const join = $<HTMLButtonElement>('join');
    const leave = $<HTMLButtonElement>('leave');
    join.addEventListener('click', () =>
      guarded('join', async () => {
        const snapshot = await client.join($<HTMLInputElement>('room').value.trim());
        join.disabled = true;
        leave.disabled = false;
        $('room-title').textContent = snapshot.title;
        $('room-streamer').textContent = `by ${snapshot.streamer}`;
        $('ticker').replaceChildren();
      }),
    );
    leave.addEventListener('click', () =>
      guarded('leave', async () => {
        await client.leave();
        join.disabled = false;
        leave.disabled = true;
        $('room-title').textContent = 'not in a room';
        $('room-streamer').textContent = '';
      }),
    );
    $('topup').addEventListener('click', () => guarded('top up', () => this.topUp()));
    $('ask').addEventListener('click', () => guarded('ask', () => this.ask()));
    client.on('snapshot', (s) => {
      $('viewers').textContent = String(s.viewers);
      this.questions.reset(s);
    });
    client.on('viewers', (e) => ($('viewers').textContent = String(e.count)));
    client.on('gift', (e) => {
      const li = el('li');
      li.dataset.giftId = e.gift_id;
      li.append(el('span', 'who', e.from), ` sent ${e.sticker_name} `, el('span', 'price', `${e.price_coins} coins`));
      prepend($('ticker'), li);
    });
    client.on('question', (e) => this.questions.add(e));
    client.on('answer', (e) => this.questions.answered(e.question_id, e.text));
    client.on('thanked', (m) => {
      const li = el('li');
      li.dataset.giftId = m.gift_id;
      li.append(el('span', 'who', m.from), ': ', el('span', 'text', m.text));
      prepend($('thanks'), li);
    });
    client.on('answered', (m) => log(`the streamer answered your question ${m.question_id}: ${m.text}`));
    client.on('room_closed', (e) => {
      log(`room closed: ${e.reason}`);
      join.disabled = false;
      leave.disabled = true;
    });
  }

  private async listRooms(): Promise<void> {
    try {
      const { rooms } = await getJson<{ rooms: { room: string; title: string }[] }>('/rooms');
      const list = $('room-list');
      list.replaceChildren(...rooms.map((r) => Object.assign(el('option'), { value: r.room, label: r.title })));
    } catch {
      // The list is a convenience; the room id can always be typed.
    }
  }

  private async picker(): Promise<void> {
    const all = await stickers();
    const picker = $('sticker-picker');
    const paid = $('question-sticker');
    for (const s of all) {
      const b = button('', () => guarded('gift', () => this.send(s.id)));
      b.dataset.sticker = s.id;
      b.append(s.name, el('span', 'price', String(s.price_coins)));
      picker.append(b);
      paid.append(Object.assign(el('option'), { value: s.id, textContent: `paid: ${s.name} (${s.price_coins})` }));
    }
  }

  private async send(sticker: string): Promise<void> {
    // One key per click: a resend after a reconnect cannot charge twice.
    const receipt = await this.client.sendGift(sticker, { key: newIdempotencyKey() });
    this.receipt(receipt);
  }

  private receipt(r: Receipt): void {
    const li = el('li', 'receipt');
    li.dataset.giftId = r.gift_id;
    li.append(el('span', 'who', r.sticker), ' ', el('span', 'price', `${r.price_coins} coins`));
    const split = el('span', 'split');
    split.append(
      el('span', 'store', `store ${r.store_coins}`),
      ' · ',
      el('span', 'streamer', `streamer ${r.streamer_coins}`),
      ' · ',
      el('span', 'platform', `platform ${r.platform_coins}`),
      ' · ',
      el('span', 'balance', `balance ${r.balance_coins}`),
    );
    li.append(split);
    prepend($('receipts'), li);
    this.showBalance(r.balance_coins);
  }

  private async topUp(): Promise<void> {
    const coins = Number($<HTMLInputElement>('topup-coins').value);
    const channel = $<HTMLSelectElement>('topup-channel').value;
    const reply = await devCall<{ balance_coins: number }>('topup', {
      user: this.user,
      channel,
      coins,
      purchase_id: `demo-${newIdempotencyKey()}`,
    });
    this.showBalance(reply.balance_coins);
    log(`topped up ${coins} ${channel} coins`);
  }

  private async ask(): Promise<void> {
    const input = $<HTMLInputElement>('question-text');
    const text = input.value.trim();
    if (!text) return;
    const sticker = $<HTMLSelectElement>('question-sticker').value;
    if (sticker) {
      const result = await this.client.ask(text, { sticker, key: newIdempotencyKey() });
      this.receipt(result.receipt);
    } else {
      await this.client.ask(text);
    }
    input.value = '';
  }

  private showBalance(coins: number): void {
    $('balance').textContent = String(coins);
  }
}

// The demo room end to end, in headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core): a real giftd on free loopback ports with the dev tools on, a streamer and two
// viewers in three browser contexts.
//
// Screenshots of both pages go to $DEMO_SCREENSHOTS (default ../../target/demo-e2e);
// `DEMO_SCREENSHOTS=../../docs npm test` refreshes the ones the README shows.
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
// Where `npm test`'s pretest (`cargo build`) puts it.
const TARGET = process.env.CARGO_TARGET_DIR ? resolve(process.env.CARGO_TARGET_DIR) : resolve(here, '../../../target');
const GIFTD_BIN = join(TARGET, 'debug/giftd');
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const SHOTS = resolve(here, '..', process.env.DEMO_SCREENSHOTS ?? '../../target/demo-e2e');
const ADMIN_TOKEN = 'giftd-dev-admin-token';
const TIMEOUT_MS = 10_000;

function freePort() {
  return new Promise((ok, fail) => {
    const srv = createServer();
    srv.once('error', fail);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => ok(port));
    });
  });
}

let giftd;
let dir;
let browser;
let base;

before(async () => {
  if (!existsSync(GIFTD_BIN)) throw new Error(`${GIFTD_BIN} is missing: run \`cargo build -p giftd --bin giftd\``);
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: apt-get install -y chromium`);
  const [pub, admin] = [await freePort(), await freePort()];
  dir = mkdtempSync(join(tmpdir(), 'giftd-demo-e2e-'));
  const env = { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'warn' };
  for (const name of Object.keys(env)) if (name.startsWith('GIFTD_')) delete env[name];
  Object.assign(env, {
    GIFTD_SERVER__LISTEN: `127.0.0.1:${pub}`,
    GIFTD_SERVER__ADMIN_LISTEN: `127.0.0.1:${admin}`,
    GIFTD_LEDGER__PATH: join(dir, 'giftd.db'),
    GIFTD_DEMO__DEV_TOOLS: 'true',
    GIFTD_ROOMS__VIEWER_COUNT_INTERVAL_MS: '100',
  });
  giftd = spawn(GIFTD_BIN, ['serve'], { env, stdio: ['ignore', 'inherit', 'inherit'] });
  let exited = null;
  giftd.once('exit', (code, signal) => (exited = `giftd exited early (code ${code}, signal ${signal})`));
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (exited) throw new Error(exited);
    try {
      if ((await fetch(`http://127.0.0.1:${admin}/readyz`)).status === 200) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error('giftd did not become ready within 20 s');
    await new Promise((r) => setTimeout(r, 50));
  }
  base = `http://127.0.0.1:${pub}`;
  // Root in CI: Chromium's sandbox needs user namespaces it may not have there.
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox'] });
});

after(async () => {
  await browser?.close();
  if (giftd && giftd.exitCode === null) {
    const gone = new Promise((r) => giftd.once('exit', r));
    giftd.kill('SIGTERM');
    const timer = setTimeout(() => giftd.kill('SIGKILL'), 5_000);
    await gone;
    clearTimeout(timer);
  }
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** A page of its own browser context, connected as `user` through the dev tools. */
async function open(page, user) {
  const context = await browser.newContext({ viewport: { width: 1180, height: 900 } });
  const tab = await context.newPage();
  tab.setDefaultTimeout(TIMEOUT_MS);
  const problems = [];
  tab.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  tab.on('console', (m) => m.type() === 'error' && problems.push(`console: ${m.text()}`));
  await tab.goto(`${base}/demo/${page}`);
  await tab.fill('#user', user);
  await tab.locator('#dev-tools summary').click();
  await tab.fill('#admin-token', ADMIN_TOKEN);
  await tab.click('#connect-btn');
  await tab.locator('#conn-state').filter({ hasText: `connected as ${user}` }).waitFor();
  return { tab, problems };
}

const expectText = (locator, text) => locator.filter({ hasText: text }).first().waitFor();
/** Waits until `locator`'s whole text is `text` (a number shown must not merely contain it). */
const expectExactly = (locator, text) => locator.filter({ hasText: new RegExp(`^\\s*${text}\\s*$`) }).first().waitFor();

/** The three shares of every receipt on a viewer page, summed. */
async function receiptSums(tab) {
  const sums = { price: 0, store: 0, streamer: 0, platform: 0 };
  for (const li of await tab.locator('#receipts li').all()) {
    const price = /^(\d+) coins$/.exec((await li.locator('.price').textContent()).trim());
    if (!price) throw new Error(`unreadable receipt: ${await li.textContent()}`);
    sums.price += Number(price[1]);
    for (const share of ['store', 'streamer', 'platform']) {
      const m = new RegExp(`^${share} (\\d+)$`).exec((await li.locator(`.${share}`).textContent()).trim());
      if (!m) throw new Error(`receipt lacks its ${share} share: ${await li.textContent()}`);
      sums[share] += Number(m[1]);
    }
  }
  return sums;
}

test('a streamer and two viewers: gift, receipt, ticker, thanks, question and answer', async () => {
  const room = `e2e-${process.pid}`;
  const star = await open('streamer', 'star');
  await star.tab.fill('#room', room);
  await star.tab.fill('#title', 'Demo night');
  await star.tab.click('#open-room');
  await expectText(star.tab.locator('#room-live'), room);

  const bob = await open('viewer', 'bob');
  const amy = await open('viewer', 'amy');
  for (const v of [bob, amy]) {
    await v.tab.fill('#room', room);
    await v.tab.click('#join');
    await expectText(v.tab.locator('#room-title'), 'Demo night');
  }
  await expectText(star.tab.locator('#viewers'), '2');
  await expectText(amy.tab.locator('#viewers'), '2');

  // Viewer 1 tops up 1000 iOS coins and sends a 100-coin coffee: 30 % to the store, the rest
  // split 50/50.
  await bob.tab.fill('#topup-coins', '1000');
  await bob.tab.selectOption('#topup-channel', 'ios');
  await bob.tab.click('#topup');
  await expectText(bob.tab.locator('#balance'), '1000');
  await bob.tab.click('#sticker-picker button[data-sticker="coffee"]');
  const receipt = bob.tab.locator('#receipts li').first();
  await expectText(receipt, 'store 30');
  const text = await receipt.textContent();
  for (const part of ['coffee', '100 coins', 'store 30', 'streamer 35', 'platform 35', 'balance 900']) {
    if (!text.includes(part)) throw new Error(`receipt lacks "${part}": ${text}`);
  }
  await expectText(bob.tab.locator('#balance'), '900');

  // Viewer 2 sees it in the room's ticker; the streamer sees it with its share and thanks it.
  await expectText(amy.tab.locator('#ticker li'), 'bob sent Coffee 100 coins');
  const gift = star.tab.locator('#gifts li').filter({ hasText: 'bob sent Coffee' });
  await gift.waitFor();
  // The streamer's earnings: the gift's exact split, as on bob's receipt.
  await expectExactly(star.tab.locator('#earn-total'), '100');
  await expectExactly(star.tab.locator('#earn-store'), '30');
  await expectExactly(star.tab.locator('#earn-streamer'), '35');
  await expectExactly(star.tab.locator('#earn-platform'), '35');
  await gift.getByRole('button', { name: 'Thank' }).click();
  await expectText(gift, 'thanked');
  await expectText(bob.tab.locator('#thanks li'), 'star: Thank you bob for the Coffee!');
  if ((await amy.tab.locator('#thanks li').count()) !== 0) throw new Error('amy got bob\'s thank-you');

  // Viewer 2 asks; the streamer answers; everyone sees the answer.
  await amy.tab.fill('#question-text', 'What game is next?');
  await amy.tab.click('#ask');
  const question = star.tab.locator('#questions li').filter({ hasText: 'What game is next?' });
  await question.waitFor();
  await question.locator('.answer-text').fill('Chess!');
  await question.getByRole('button', { name: 'Answer' }).click();
  await expectText(amy.tab.locator('#questions li'), 'Answer: Chess!');
  await expectText(bob.tab.locator('#questions li'), 'Answer: Chess!');

  // Viewer 1 pays for a question with a 100-coin sticker: it is pinned on every page.
  await bob.tab.fill('#question-text', 'Can you say hi to my sister?');
  await bob.tab.selectOption('#question-sticker', 'coffee');
  await bob.tab.click('#ask');
  await expectText(star.tab.locator('#pinned li'), 'Can you say hi to my sister?');
  await expectText(amy.tab.locator('#pinned li'), 'paid 100 coins');
  await expectText(bob.tab.locator('#balance'), '800');

  // Viewer 2 pays with web coins, which no app store takes a share of: a different split.
  await amy.tab.fill('#topup-coins', '1000');
  await amy.tab.selectOption('#topup-channel', 'web');
  await amy.tab.click('#topup');
  await expectText(amy.tab.locator('#balance'), '1000');
  await amy.tab.click('#sticker-picker button[data-sticker="coffee"]');
  await expectText(amy.tab.locator('#receipts li').first(), 'store 0');

  // The streamer's earnings are the sums of the receipts' shares (bob's gift, bob's paid
  // question, amy's gift): 30+30+0 to the stores, 35+35+50 to the streamer, 35+35+50 to the
  // platform.
  const sums = { price: 0, store: 0, streamer: 0, platform: 0 };
  for (const v of [bob, amy]) {
    const s = await receiptSums(v.tab);
    for (const k of Object.keys(sums)) sums[k] += s[k];
  }
  if (JSON.stringify(sums) !== JSON.stringify({ price: 300, store: 60, streamer: 120, platform: 120 })) {
    throw new Error(`unexpected receipts: ${JSON.stringify(sums)}`);
  }
  await expectExactly(star.tab.locator('#earn-total'), String(sums.price));
  await expectExactly(star.tab.locator('#earn-store'), String(sums.store));
  await expectExactly(star.tab.locator('#earn-streamer'), String(sums.streamer));
  await expectExactly(star.tab.locator('#earn-platform'), String(sums.platform));

  // Both pages rank the room's gifters (the session leaderboard): bob's gift and paid question
  // (200 coins) ahead of amy's gift (100).
  for (const who of [star, amy]) {
    await expectText(who.tab.locator('#top-gifters li').nth(0), '1. bob 200 coins');
    await expectText(who.tab.locator('#top-gifters li').nth(1), '2. amy 100 coins');
  }

  mkdirSync(SHOTS, { recursive: true });
  await star.tab.screenshot({ path: join(SHOTS, 'demo-streamer.png'), fullPage: true });
  await bob.tab.screenshot({ path: join(SHOTS, 'demo-viewer.png'), fullPage: true });

  // Closing the room tells the viewers.
  await star.tab.click('#close-room');
  await expectText(amy.tab.locator('#log li'), 'room closed');

  for (const who of [star, bob, amy]) {
    if (who.problems.length) throw new Error(who.problems.join('\n'));
  }
});

test('the dev tools refuse a wrong admin token with the wire error', async () => {
  const context = await browser.newContext();
  const tab = await context.newPage();
  tab.setDefaultTimeout(TIMEOUT_MS);
  await tab.goto(`${base}/demo/viewer`);
  await tab.fill('#user', 'eve');
  await tab.locator('#dev-tools summary').click();
  await tab.fill('#admin-token', 'not-the-admin-token');
  await tab.click('#connect-btn');
  await expectText(tab.locator('#log li.error'), 'invalid_token (12001)');
  await context.close();
});

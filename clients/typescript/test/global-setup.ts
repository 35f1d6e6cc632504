// Starts one real giftd ($CARGO_TARGET_DIR or ../../target, then debug/giftd, built by `npm test`'s
// pretest) on free loopback ports with a throwaway ledger, and hands its addresses to the tests.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import type { TestProject } from 'vitest/node';

// Where `npm test`'s pretest (`cargo build`) puts it.
const TARGET = process.env.CARGO_TARGET_DIR
  ? resolve(process.env.CARGO_TARGET_DIR)
  : resolve(__dirname, '../../../target');
export const GIFTD_BIN = join(TARGET, 'debug/giftd');

declare module 'vitest' {
  export interface ProvidedContext {
    giftd: { wsUrl: string; httpUrl: string; adminUrl: string; bin: string };
  }
}

function freePort(): Promise<number> {
  return new Promise((ok, fail) => {
    const srv = createServer();
    srv.once('error', fail);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => ok(port));
    });
  });
}

let child: ChildProcess | null = null;
let dir: string | null = null;

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  if (!existsSync(GIFTD_BIN)) {
    throw new Error(`${GIFTD_BIN} is missing: run \`cargo build -p giftd --bin giftd\` (npm test does)`);
  }
  const [pub, admin] = [await freePort(), await freePort()];
  dir = mkdtempSync(join(tmpdir(), 'giftd-sdk-test-'));
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    RUST_LOG: process.env.RUST_LOG ?? 'warn',
    GIFTD_SERVER__LISTEN: `127.0.0.1:${pub}`,
    GIFTD_SERVER__ADMIN_LISTEN: `127.0.0.1:${admin}`,
    GIFTD_LEDGER__PATH: join(dir, 'giftd.db'),
    // A short room history, so that a test can outrun it (a re-join that cannot recover).
    GIFTD_ROOMS__HISTORY_EVENTS_MAX: '32',
    GIFTD_LIMITS__CONNECTION__GIFTS__PER_SEC: '1000',
    GIFTD_LIMITS__CONNECTION__GIFTS__BURST: '1000',
    GIFTD_LIMITS__CONNECTION__QUESTIONS__PER_SEC: '1000',
    GIFTD_LIMITS__CONNECTION__QUESTIONS__BURST: '1000',
    GIFTD_LIMITS__USER__GIFTS__PER_SEC: '1000',
    GIFTD_LIMITS__USER__GIFTS__BURST: '1000',
    GIFTD_LIMITS__USER__QUESTIONS__PER_SEC: '1000',
    GIFTD_LIMITS__USER__QUESTIONS__BURST: '1000',
  };
  const proc = spawn(GIFTD_BIN, ['serve'], { env, stdio: ['ignore', 'inherit', 'inherit'] });
  child = proc;
  let exited: string | null = null;
  proc.once('exit', (code, signal) => {
    exited = `giftd exited early (code ${code}, signal ${signal})`;
  });
  const adminUrl = `http://127.0.0.1:${admin}`;
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (exited) throw new Error(exited);
    try {
      const res = await fetch(`${adminUrl}/readyz`);
      if (res.status === 200) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error('giftd did not become ready within 20 s');
    await new Promise((r) => setTimeout(r, 50));
  }
  project.provide('giftd', {
    wsUrl: `ws://127.0.0.1:${pub}/ws`,
    httpUrl: `http://127.0.0.1:${pub}`,
    adminUrl,
    bin: GIFTD_BIN,
  });
  return async () => {
    if (child && child.exitCode === null) {
      const gone = new Promise((r) => child?.once('exit', r));
      child.kill('SIGTERM');
      const timer = setTimeout(() => child?.kill('SIGKILL'), 5_000);
      await gone;
      clearTimeout(timer);
    }
    if (dir) rmSync(dir, { recursive: true, force: true });
  };
}

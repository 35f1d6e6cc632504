import { defineConfig } from 'vitest/config';

// Node 20 has the WHATWG WebSocket (the browsers' API) behind a flag; from Node 22 it is global.
// The tests use it to check the SDK's browser path.
const major = Number(process.versions.node.split('.')[0]);
const execArgv = major < 22 ? ['--experimental-websocket'] : [];

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/global-setup.ts'],
    // One giftd for the run; test files run one after another (2 shared cores).
    fileParallelism: false,
    pool: 'forks',
    poolOptions: { forks: { execArgv } },
    testTimeout: 20_000,
    hookTimeout: 30_000,
  },
});

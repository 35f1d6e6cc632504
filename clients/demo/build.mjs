// Bundles the demo pages' script (src/main.ts and the SDK's sources) into assets/demo.js, which
// giftd embeds (src/demo.rs). The bundle is committed so that `cargo build` needs no npm;
// `npm run check-bundle` rebuilds it and fails if the committed one differs.
import { build } from 'esbuild';

await build({
  entryPoints: ['src/main.ts'],
  outfile: 'assets/demo.js',
  bundle: true,
  format: 'esm',
  platform: 'browser',
  target: 'es2022',
  // The SDK loads `ws` only where there is no global WebSocket, never in a browser.
  external: ['ws'],
  legalComments: 'none',
  charset: 'utf8',
  banner: { js: '// Built by clients/demo/build.mjs from clients/demo/src and clients/typescript/src. Do not edit.' },
  logLevel: 'warning',
});

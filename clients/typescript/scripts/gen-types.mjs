// Generates src/protocol.ts from schema/protocol.schema.json; `--check` fails if it is stale.
import { readFile, writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { compile } from 'json-schema-to-typescript';

const root = fileURLToPath(new URL('..', import.meta.url));
const schemaPath = `${root}schema/protocol.schema.json`;
const outPath = `${root}src/protocol.ts`;
// json-schema-to-typescript emits unreferenced definitions (every *Result) only from an object
// schema's `$defs`, so the root union becomes one more definition of an empty object schema.
const source = JSON.parse(await readFile(schemaPath, 'utf8'));
const { $defs, $schema, $id, oneOf, title, description, ...rest } = source;
const schema = {
  ...rest,
  title: 'GiftdProtocolSchema',
  type: 'object',
  additionalProperties: false,
  $defs: { GiftdFrame: { title, description, oneOf }, ...$defs },
};
const banner =
  '/* Generated from schema/protocol.schema.json by scripts/gen-types.mjs (npm run gen). Do not edit. */';
const ts = await compile(schema, 'GiftdProtocolSchema', {
  bannerComment: banner,
  unreachableDefinitions: true,
  additionalProperties: false,
  strictIndexSignatures: true,
  format: true,
  cwd: `${root}schema`,
});
if (process.argv.includes('--check')) {
  let current = '';
  try {
    current = await readFile(outPath, 'utf8');
  } catch {}
  if (current !== ts) {
    console.error('src/protocol.ts is out of date with schema/protocol.schema.json: run `npm run gen`');
    process.exit(1);
  }
  console.log('src/protocol.ts matches the schema');
} else {
  await writeFile(outPath, ts);
  console.log(`wrote ${outPath}`);
}

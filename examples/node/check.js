// Checks client.js against a running Copilot whose upstream echoes (the test suite's fake Ollama).
//
//   node check.js ADDRESS MODEL SLOW_MODEL
//
// MODEL replies "You said: <prompt>"; SLOW_MODEL streams without end. Exits non-zero with the
// first mismatch; run by tests/it/polyglot.rs.
'use strict';

const assert = require('node:assert/strict');
const grpc = require('@grpc/grpc-js');
const { connect, generate, chat, errorReason } = require('./client');

async function collect(stream) {
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  return chunks;
}

/** Runs `call`, which must fail with `code` and, when given, the ErrorInfo `reason`. */
async function expectError(call, code, reason) {
  const error = await call().then(
    () => assert.fail(`expected ${grpc.status[code]}, but the call succeeded`),
    (e) => e,
  );
  assert.equal(grpc.status[error.code], grpc.status[code], error.details);
  if (reason !== undefined) assert.equal(errorReason(error), reason);
  return error;
}

async function main() {
  const [address, model, slowModel] = process.argv.slice(2);
  const client = connect(address);

  const reply = await generate(client, model, 'hello from node', { timeoutMs: 20000 });
  assert.equal(reply.text, 'You said: hello from node');
  assert.equal(reply.finishReason, 'FINISH_REASON_STOP');
  assert.equal(reply.usage.outputTokens, 5);

  const messages = [{ role: 'ROLE_USER', content: 'stream this please' }];
  const chunks = await collect(chat(client, model, messages, { timeoutMs: 20000, options: { maxTokens: 100 } }));
  assert.equal(chunks.map((c) => c.content).join(''), 'You said: stream this please');
  assert.ok(chunks.length > 2, `expected several chunks, got ${chunks.length}`);
  const last = chunks[chunks.length - 1];
  assert.equal(last.finishReason, 'FINISH_REASON_STOP');
  assert.equal(last.model, model);

  const invalid = await expectError(
    () => generate(client, model, ''),
    grpc.status.INVALID_ARGUMENT,
    'INVALID_ARGUMENT',
  );
  assert.match(invalid.details, /prompt/);
  await expectError(() => generate(client, 'ollama/missing', 'hi'), grpc.status.NOT_FOUND, 'MODEL_NOT_FOUND');
  // The client's own deadline fires as the server's does: whichever status arrives first wins, and
  // only the server's carries an ErrorInfo, so the reason is not checked here.
  await expectError(
    () => collect(chat(client, slowModel, [{ role: 'ROLE_USER', content: 'go on' }], { timeoutMs: 300 })),
    grpc.status.DEADLINE_EXCEEDED,
  );

  client.close();
  console.log('node client: all checks passed');
}

main().catch((error) => {
  console.error(`FAILED: ${error.stack || error}`);
  process.exit(1);
});

// A small Copilot client: Generate, streaming Chat, gRPC errors and deadlines, with @grpc/grpc-js
// and the API loaded at run time from proto/copilot/v1/copilot.proto by @grpc/proto-loader.
//
//   node client.js [--address localhost:50051] [--model ollama/llama3.2:3b] "Why is the sky blue?"
//
// The exported functions are what an application would keep; main() shows them in use.
'use strict';

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'proto');

const definition = protoLoader.loadSync('copilot/v1/copilot.proto', {
  includeDirs: [PROTO_ROOT],
  // Enums as their names ("ROLE_USER"), 64-bit numbers as strings, unset fields with defaults.
  enums: String,
  longs: String,
  defaults: true,
});
const { Copilot } = grpc.loadPackageDefinition(definition).copilot.v1;

// google.rpc.Status and ErrorInfo, the error details Copilot sends in `grpc-status-details-bin`
// (Any is declared by its two fields, which is all the wire format has).
const rpcTypes = protobuf.parse(`
  syntax = "proto3";
  package google.rpc;
  message Any { string type_url = 1; bytes value = 2; }
  message Status { int32 code = 1; string message = 2; repeated Any details = 3; }
  message ErrorInfo { string reason = 1; string domain = 2; map<string, string> metadata = 3; }
`).root;
const Status = rpcTypes.lookupType('google.rpc.Status');
const ErrorInfo = rpcTypes.lookupType('google.rpc.ErrorInfo');

/** A client on a plaintext channel (grpc.credentials.createSsl() for TLS). */
function connect(address) {
  return new Copilot(address, grpc.credentials.createInsecure());
}

/** The deadline grpc-js wants, from a timeout in milliseconds. Copilot passes it to the upstream
 * and answers DEADLINE_EXCEEDED when it runs out. */
function deadlineIn(timeoutMs) {
  return new Date(Date.now() + timeoutMs);
}

/** One completion; resolves to the GenerateResponse, rejects with the gRPC error. */
function generate(client, model, prompt, { timeoutMs = 30000, options = {} } = {}) {
  return new Promise((resolve, reject) => {
    client.Generate({ model, prompt, options }, { deadline: deadlineIn(timeoutMs) }, (error, reply) =>
      error ? reject(error) : resolve(reply),
    );
  });
}

/** Streams a reply to `messages` ([{ role: 'ROLE_USER', content }]): an async iterable of
 * ChatResponse, `content` pieces then a last one with finishReason, usage and timing. A failure
 * is thrown from the loop that consumes it. */
function chat(client, model, messages, { timeoutMs = 60000, options = {} } = {}) {
  return client.Chat({ model, messages, options }, { deadline: deadlineIn(timeoutMs) });
}

/** The machine-readable reason of a failed call (ErrorInfo.reason, e.g. MODEL_NOT_FOUND), or
 * undefined when the status carries none. */
function errorReason(error) {
  const [bytes] = error.metadata ? error.metadata.get('grpc-status-details-bin') : [];
  if (!bytes) return undefined;
  const info = Status.decode(bytes).details.find((d) => d.typeUrl.endsWith('/google.rpc.ErrorInfo'));
  return info ? ErrorInfo.decode(info.value).reason : undefined;
}

async function main() {
  const args = process.argv.slice(2);
  const flag = (name, fallback) => {
    const i = args.indexOf(name);
    return i >= 0 ? args.splice(i, 2)[1] : fallback;
  };
  const address = flag('--address', 'localhost:50051');
  const model = flag('--model', '');
  const prompt = args.join(' ');
  if (!prompt) {
    console.error('usage: node client.js [--address HOST:PORT] [--model PROVIDER/MODEL] PROMPT');
    process.exit(2);
  }
  const client = connect(address);
  try {
    const reply = await generate(client, model, prompt, { options: { maxTokens: 256 } });
    console.log(`Generate: ${reply.text}\n`);
    process.stdout.write('Chat: ');
    const messages = [{ role: 'ROLE_USER', content: prompt }];
    for await (const chunk of chat(client, model, messages, { options: { maxTokens: 256 } })) {
      process.stdout.write(chunk.content);
      if (chunk.finishReason !== 'FINISH_REASON_UNSPECIFIED') {
        console.log(`\n[${chunk.model}: ${chunk.usage.outputTokens} tokens]`);
      }
    }
  } catch (error) {
    // Status codes and reasons: README "What a client can rely on".
    console.error(`\n${grpc.status[error.code]} (${errorReason(error)}): ${error.details}`);
    process.exitCode = 1;
  } finally {
    client.close();
  }
}

module.exports = { connect, generate, chat, errorReason };

if (require.main === module) {
  main();
}

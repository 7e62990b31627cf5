// Tool calling and structured output with Copilot: a tool loop, and an answer that follows a JSON
// Schema.
//
//   node tools.js [--address localhost:50051] [--model ollama/qwen3:4b] "What is the weather in Paris?"
//
// runToolLoop() is what an agent keeps: offer tools, stream the answer, run each call the model
// makes, send the results back, and repeat until the model answers in text. structured() asks for
// JSON that follows a schema. main() shows both.
'use strict';

const grpc = require('@grpc/grpc-js');
const { connect, errorReason } = require('./client');

const WEATHER_TOOL = {
  name: 'get_weather',
  description: 'The current weather in a city.',
  parametersJsonSchema: JSON.stringify({
    type: 'object',
    properties: { city: { type: 'string' } },
    required: ['city'],
  }),
};

/** The tool itself: a real agent would call a weather service here. */
function getWeather({ city }) {
  return { city, temperature_c: 18, sky: 'clear' };
}

const TOOLS = { get_weather: getWeather };

function deadlineIn(timeoutMs) {
  return new Date(Date.now() + timeoutMs);
}

/** Streams one answer and puts it back together as the API says: text, and each tool call
 * assembled by `index` (its first piece carries id and name; the argument pieces, concatenated,
 * are the arguments exactly). */
async function streamTurn(client, request, timeoutMs) {
  let text = '';
  let last;
  const calls = [];
  for await (const chunk of client.Chat(request, { deadline: deadlineIn(timeoutMs) })) {
    text += chunk.content;
    for (const piece of chunk.toolCalls) {
      if (!calls[piece.index]) calls[piece.index] = { id: piece.id, name: piece.name, argumentsJson: '' };
      calls[piece.index].argumentsJson += piece.argumentsJson;
      if (piece.signature.length > 0) calls[piece.index].signature = piece.signature;
    }
    if (chunk.finishReason !== 'FINISH_REASON_UNSPECIFIED') last = chunk;
  }
  return { text, calls, last };
}

/** Asks `question` with the tools offered; runs the calls the model makes until it answers in
 * text. Resolves to { answer, calls } (the calls made, in order). */
async function runToolLoop(client, model, question, { tools = TOOLS, maxTurns = 5, timeoutMs = 60000 } = {}) {
  const messages = [{ role: 'ROLE_USER', content: question }];
  const made = [];
  for (let turn = 0; turn < maxTurns; turn++) {
    const { text, calls, last } = await streamTurn(client, { model, messages, tools: [WEATHER_TOOL] }, timeoutMs);
    if (last.finishReason !== 'FINISH_REASON_TOOL_CALLS') return { answer: text, calls: made };
    // The assistant's turn goes back as it came (text and calls), then one ROLE_TOOL message per
    // call, tied to it by id.
    const parts = text ? [{ text }] : [];
    parts.push(...calls.map((toolCall) => ({ toolCall })));
    messages.push({ role: 'ROLE_ASSISTANT', parts });
    for (const call of calls) {
      const result = tools[call.name](JSON.parse(call.argumentsJson));
      messages.push({ role: 'ROLE_TOOL', toolCallId: call.id, content: JSON.stringify(result) });
      made.push(call);
    }
  }
  throw new Error(`no answer after ${maxTurns} turns`);
}

const INTENT_SCHEMA = {
  type: 'object',
  properties: {
    intent: { type: 'string', enum: ['weather', 'tariff', 'other'] },
    city: { type: 'string' },
  },
  required: ['intent'],
};

/** Asks for an answer that follows `schema`; resolves to it parsed. */
function structured(client, model, question, { schema = INTENT_SCHEMA, timeoutMs = 30000 } = {}) {
  const request = {
    model,
    prompt: question,
    responseFormat: { jsonSchema: { name: 'intent', schemaJson: JSON.stringify(schema), strict: true } },
  };
  return new Promise((resolve, reject) => {
    client.Generate(request, { deadline: deadlineIn(timeoutMs) }, (error, reply) =>
      error ? reject(error) : resolve(JSON.parse(reply.text)),
    );
  });
}

async function main() {
  const args = process.argv.slice(2);
  const flag = (name, fallback) => {
    const i = args.indexOf(name);
    return i >= 0 ? args.splice(i, 2)[1] : fallback;
  };
  const address = flag('--address', 'localhost:50051');
  const model = flag('--model', '');
  const structuredModel = flag('--structured-model', model);
  const question = args.join(' ');
  if (!question) {
    console.error('usage: node tools.js [--address HOST:PORT] [--model M] [--structured-model M] QUESTION');
    process.exit(2);
  }
  const client = connect(address);
  try {
    const { answer, calls } = await runToolLoop(client, model, question);
    for (const call of calls) console.log(`tool call: ${call.name}(${call.argumentsJson}) [${call.id}]`);
    console.log(`answer: ${answer}`);
    console.log(`structured: ${JSON.stringify(await structured(client, structuredModel, question))}`);
  } catch (error) {
    console.error(`${grpc.status[error.code]} (${errorReason(error)}): ${error.details || error.message}`);
    process.exitCode = 1;
  } finally {
    client.close();
  }
}

module.exports = { runToolLoop, structured };

if (require.main === module) {
  main();
}

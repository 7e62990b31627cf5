"""Tool calling and structured output with Copilot: a tool loop, and an answer that follows a JSON Schema.

    python tools.py [--address localhost:50051] [--model ollama/qwen3:4b] "What is the weather in Paris?"

`run_tool_loop` is what an agent keeps: offer tools, stream the answer, run each call the model
makes, send the results back, and repeat until the model answers in text. `structured` asks for JSON
that follows a schema. main() shows both.
"""

import argparse
import json
import sys

import grpc

from client import connect, error_reason
from copilot_stubs import pb

WEATHER_TOOL = pb.Tool(
    name="get_weather",
    description="The current weather in a city.",
    parameters_json_schema=json.dumps({
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    }),
)


def get_weather(city):
    """The tool itself: a real agent would call a weather service here."""
    return {"city": city, "temperature_c": 18, "sky": "clear"}


TOOLS = {"get_weather": get_weather}


def stream_turn(stub, request, timeout):
    """Streams one answer and puts it back together as the API says: text, and each tool call
    assembled by `index` (its first piece carries id and name; the argument pieces, concatenated,
    are the arguments exactly). Returns (text, calls, the last ChatResponse)."""
    text, calls, last = [], {}, None
    for chunk in stub.Chat(request, timeout=timeout):
        text.append(chunk.content)
        for piece in chunk.tool_calls:
            call = calls.setdefault(piece.index, pb.ToolCall(id=piece.id, name=piece.name))
            call.arguments_json += piece.arguments_json
            if piece.signature:
                call.signature = piece.signature
        if chunk.finish_reason:
            last = chunk
    return "".join(text), [calls[i] for i in sorted(calls)], last


def run_tool_loop(stub, model, question, tools=TOOLS, max_turns=5, timeout=60.0):
    """Asks `question` with `tools` offered; runs the calls the model makes until it answers in
    text. Returns (answer, the tool calls made, in order)."""
    messages = [pb.Message(role=pb.ROLE_USER, content=question)]
    made = []
    for _ in range(max_turns):
        request = pb.ChatRequest(model=model, messages=messages, tools=[WEATHER_TOOL])
        text, calls, last = stream_turn(stub, request, timeout)
        if last.finish_reason != pb.FINISH_REASON_TOOL_CALLS:
            return text, made
        # The assistant's turn goes back as it came (text and calls), then one ROLE_TOOL message
        # per call, tied to it by id.
        parts = [pb.Part(text=text)] if text else []
        parts += [pb.Part(tool_call=call) for call in calls]
        messages.append(pb.Message(role=pb.ROLE_ASSISTANT, parts=parts))
        for call in calls:
            result = tools[call.name](**json.loads(call.arguments_json))
            messages.append(pb.Message(role=pb.ROLE_TOOL, tool_call_id=call.id, content=json.dumps(result)))
            made.append(call)
    raise RuntimeError(f"no answer after {max_turns} turns")


INTENT_SCHEMA = {
    "type": "object",
    "properties": {
        "intent": {"type": "string", "enum": ["weather", "tariff", "other"]},
        "city": {"type": "string"},
    },
    "required": ["intent"],
}


def structured(stub, model, question, schema=INTENT_SCHEMA, timeout=30.0):
    """Asks for an answer that follows `schema`; returns it parsed."""
    request = pb.GenerateRequest(
        model=model,
        prompt=question,
        response_format=pb.ResponseFormat(
            json_schema=pb.JsonSchemaFormat(name="intent", schema_json=json.dumps(schema), strict=True)
        ),
    )
    return json.loads(stub.Generate(request, timeout=timeout).text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="localhost:50051")
    parser.add_argument("--model", default="", help="provider/model; empty means the server's default")
    parser.add_argument("--structured-model", default=None, help="model for the JSON answer (default: --model)")
    parser.add_argument("question")
    args = parser.parse_args()
    stub = connect(args.address)
    try:
        answer, calls = run_tool_loop(stub, args.model, args.question)
        for call in calls:
            print(f"tool call: {call.name}({call.arguments_json}) [{call.id}]")
        print(f"answer: {answer}")
        print(f"structured: {json.dumps(structured(stub, args.structured_model or args.model, args.question))}")
    except grpc.RpcError as error:
        print(f"{error.code().name} ({error_reason(error)}): {error.details()}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

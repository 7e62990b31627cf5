"""A small Copilot client: Generate, streaming Chat, gRPC errors and deadlines.

    python client.py [--address localhost:50051] [--model ollama/llama3.2:3b] "Why is the sky blue?"

The functions are what an application would keep; main() shows them in use.
"""

import argparse
import sys

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from copilot_stubs import pb, rpc


def connect(address):
    """A stub on a plaintext channel (use grpc.secure_channel for TLS)."""
    return rpc.CopilotStub(grpc.insecure_channel(address))


def generate(stub, model, prompt, timeout=30.0, **options):
    """One completion. `timeout` becomes the call's deadline: Copilot passes it to the upstream and
    answers DEADLINE_EXCEEDED when it runs out."""
    request = pb.GenerateRequest(model=model, prompt=prompt, options=pb.GenerationOptions(**options))
    return stub.Generate(request, timeout=timeout)


def chat(stub, model, messages, timeout=60.0, **options):
    """Streams a reply to `messages` ([(role, text)], role "user", "assistant" or "system").
    Yields each ChatResponse: `content` pieces, and a last one with finish_reason, usage, timing."""
    roles = {"user": pb.ROLE_USER, "assistant": pb.ROLE_ASSISTANT, "system": pb.ROLE_SYSTEM}
    request = pb.ChatRequest(
        model=model,
        messages=[pb.Message(role=roles[role], content=text) for role, text in messages],
        options=pb.GenerationOptions(**options),
    )
    yield from stub.Chat(request, timeout=timeout)


def error_reason(error):
    """The machine-readable reason of a failed call (`ErrorInfo.reason`, e.g. MODEL_NOT_FOUND), from
    the google.rpc.Status details Copilot attaches to every error; None if there is none."""
    status = rpc_status.from_call(error)
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="localhost:50051")
    parser.add_argument("--model", default="", help="provider/model; empty means the server's default")
    parser.add_argument("prompt")
    args = parser.parse_args()
    stub = connect(args.address)
    try:
        reply = generate(stub, args.model, args.prompt, max_tokens=256)
        print(f"Generate: {reply.text}\n")
        print("Chat: ", end="", flush=True)
        for chunk in chat(stub, args.model, [("user", args.prompt)], max_tokens=256):
            print(chunk.content, end="", flush=True)
            if chunk.finish_reason:
                seconds = chunk.timing.time_to_first_token.ToTimedelta().total_seconds()
                print(f"\n[{chunk.model}: {chunk.usage.output_tokens} tokens, first after {seconds:.3f}s]")
    except grpc.RpcError as error:
        # Status codes and reasons: README "What a client can rely on".
        print(f"\n{error.code().name} ({error_reason(error)}): {error.details()}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

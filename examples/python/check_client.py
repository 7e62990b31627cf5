"""Checks client.py against a running Copilot whose upstream echoes (the test suite's fake Ollama).

    python check_client.py ADDRESS MODEL SLOW_MODEL

MODEL replies "You said: <prompt>"; SLOW_MODEL streams without end. Exits non-zero with a message
on the first mismatch; run by tests/it/polyglot.rs.
"""

import sys

import grpc

from client import chat, connect, error_reason, generate
from copilot_stubs import pb


def check(condition, message):
    if not condition:
        sys.exit(f"FAILED: {message}")


def expect_error(call, code, reason):
    try:
        call()
    except grpc.RpcError as error:
        check(error.code() == code, f"expected {code}, got {error.code()}: {error.details()}")
        if reason is not None:
            check(error_reason(error) == reason, f"expected reason {reason}, got {error_reason(error)}")
        return error
    sys.exit(f"FAILED: expected {code}, but the call succeeded")


def main():
    address, model, slow_model = sys.argv[1:4]
    stub = connect(address)

    reply = generate(stub, model, "hello from python", timeout=20)
    check(reply.text == "You said: hello from python", f"Generate text was {reply.text!r}")
    check(reply.finish_reason == pb.FINISH_REASON_STOP, f"finish_reason {reply.finish_reason}")
    check(reply.usage.output_tokens == 5, f"usage {reply.usage}")
    check(reply.timing.total_duration.ToTimedelta().total_seconds() > 0, "timing.total_duration")

    chunks = list(chat(stub, model, [("user", "stream this please")], timeout=20, temperature=0.0, max_tokens=100))
    text = "".join(c.content for c in chunks)
    check(text == "You said: stream this please", f"Chat text was {text!r}")
    check(len(chunks) > 2, f"expected several chunks, got {len(chunks)}")
    check(chunks[-1].finish_reason == pb.FINISH_REASON_STOP, "the last chunk carries finish_reason")
    check(chunks[-1].model == model, f"last chunk model {chunks[-1].model!r}")

    error = expect_error(lambda: generate(stub, model, "", timeout=20), grpc.StatusCode.INVALID_ARGUMENT,
                         "INVALID_ARGUMENT")
    check("prompt" in error.details(), f"message {error.details()!r}")
    expect_error(lambda: generate(stub, "ollama/missing", "hi", timeout=20), grpc.StatusCode.NOT_FOUND,
                 "MODEL_NOT_FOUND")
    # The client's own deadline fires as the server's does: whichever status arrives first wins, and
    # only the server's carries an ErrorInfo, so the reason is not checked here.
    expect_error(lambda: list(chat(stub, slow_model, [("user", "go on")], timeout=0.3)),
                 grpc.StatusCode.DEADLINE_EXCEEDED, None)

    models = stub.ListModels(pb.ListModelsRequest(), timeout=20).models
    check(model in [m.name for m in models], f"{model} not in ListModels")
    print("python client: all checks passed")


if __name__ == "__main__":
    main()

"""A Python client generated from proto/ with grpcio-tools, calling a running Copilot.

Usage: copilot_client_check.py ADDRESS MODEL ENDLESS_MODEL

Generates the stubs into a temporary directory (as a user's build would), then calls Generate,
streams Chat, and checks the error and deadline behaviour a Python caller depends on.
Exits non-zero with a message on the first mismatch.
"""

import importlib
import os
import sys
import tempfile

import grpc
from grpc_tools import protoc

try:
    from importlib.resources import files as resource_files
except ImportError:  # pragma: no cover
    resource_files = None

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROTO_DIR = os.path.join(ROOT, "proto")


def generate_stubs(out_dir):
    well_known = str(resource_files("grpc_tools") / "_proto")
    status = protoc.main([
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        "copilot/v1/copilot.proto",
    ])
    if status != 0:
        sys.exit(f"protoc failed with {status}")
    sys.path.insert(0, out_dir)
    pb = importlib.import_module("copilot.v1.copilot_pb2")
    rpc = importlib.import_module("copilot.v1.copilot_pb2_grpc")
    return pb, rpc


def check(condition, message):
    if not condition:
        sys.exit(f"FAILED: {message}")


def main():
    address, model, endless_model = sys.argv[1], sys.argv[2], sys.argv[3]
    with tempfile.TemporaryDirectory() as out_dir:
        pb, rpc = generate_stubs(out_dir)
        with grpc.insecure_channel(address) as channel:
            stub = rpc.CopilotStub(channel)

            reply = stub.Generate(pb.GenerateRequest(model=model, prompt="hello from python"), timeout=20)
            check(reply.text == "You said: hello from python", f"Generate text was {reply.text!r}")
            check(reply.finish_reason == pb.FINISH_REASON_STOP, f"finish_reason {reply.finish_reason}")
            check(reply.usage.output_tokens == 5, f"usage {reply.usage}")
            check(reply.timing.total_duration.ToTimedelta().total_seconds() > 0, "timing.total_duration")

            request = pb.ChatRequest(
                model=model,
                messages=[pb.Message(role=pb.ROLE_USER, content="stream this please")],
                options=pb.GenerationOptions(temperature=0.0, max_tokens=100),
            )
            chunks = list(stub.Chat(request, timeout=20))
            text = "".join(c.content for c in chunks)
            check(text == "You said: stream this please", f"Chat text was {text!r}")
            check(len(chunks) > 2, f"expected several chunks, got {len(chunks)}")
            check(chunks[-1].finish_reason == pb.FINISH_REASON_STOP, "last chunk carries finish_reason")
            check(chunks[-1].model == model, f"last chunk model {chunks[-1].model!r}")

            try:
                stub.Generate(pb.GenerateRequest(model=model, prompt=""), timeout=20)
                check(False, "an empty prompt must fail")
            except grpc.RpcError as error:
                check(error.code() == grpc.StatusCode.INVALID_ARGUMENT, f"empty prompt gave {error.code()}")
                check("prompt" in error.details(), f"message {error.details()!r}")

            try:
                stub.Generate(pb.GenerateRequest(model="ollama/missing", prompt="hi"), timeout=20)
                check(False, "an unknown model must fail")
            except grpc.RpcError as error:
                check(error.code() == grpc.StatusCode.NOT_FOUND, f"unknown model gave {error.code()}")

            try:
                list(stub.Chat(pb.ChatRequest(
                    model=endless_model, messages=[pb.Message(role=pb.ROLE_USER, content="go on")]), timeout=0.3))
                check(False, "an endless stream must hit the deadline")
            except grpc.RpcError as error:
                check(error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, f"deadline gave {error.code()}")

            models = stub.ListModels(pb.ListModelsRequest(), timeout=20).models
            check(model in [m.name for m in models], f"{model} not in ListModels")
    print("python client: all checks passed")


if __name__ == "__main__":
    main()

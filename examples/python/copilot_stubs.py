"""The Python stubs of proto/copilot/v1/copilot.proto, generated with grpcio-tools on first import.

An application would generate them in its build and package them:

    python -m grpc_tools.protoc -I proto --python_out=. --grpc_python_out=. copilot/v1/copilot.proto

Generating them here, from the repository's proto/, keeps this example in step with the API.
Use: `from copilot_stubs import pb, rpc` (messages and enums; the CopilotStub).
"""

import atexit
import importlib
import shutil
import sys
import tempfile
from importlib.resources import files
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parents[2] / "proto"


def _generate():
    out_dir = tempfile.mkdtemp(prefix="copilot-stubs-")
    atexit.register(shutil.rmtree, out_dir, True)
    status = protoc.main([
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        # google/protobuf/duration.proto and the other well-known types ship with grpcio-tools.
        f"-I{files('grpc_tools') / '_proto'}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        "copilot/v1/copilot.proto",
    ])
    if status != 0:
        raise RuntimeError(f"protoc failed ({status}) on {PROTO_ROOT}/copilot/v1/copilot.proto")
    sys.path.insert(0, out_dir)
    return importlib.import_module("copilot.v1.copilot_pb2"), importlib.import_module("copilot.v1.copilot_pb2_grpc")


pb, rpc = _generate()

"""The committed generated code matches network/protos/node.proto (run `make protos`)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_in_sync(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT}",
                    f"--python_out={tmp_path}", f"--grpc_python_out={tmp_path}",
                    str(ROOT / "network/protos/node.proto")], check=True, timeout=60)
    for name in ("node_pb2.py", "node_pb2_grpc.py"):
        fresh = (tmp_path / "network/protos" / name).read_text()
        assert fresh == (ROOT / "network/protos" / name).read_text(), f"{name} is stale"

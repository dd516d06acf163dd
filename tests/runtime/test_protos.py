"""The committed generated code matches runtime/protos/miner.proto (run `make protos`)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_in_sync(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT}",
                    f"--python_out={tmp_path}", f"--grpc_python_out={tmp_path}",
                    str(ROOT / "runtime/protos/miner.proto")], check=True, timeout=60)
    for name in ("miner_pb2.py", "miner_pb2_grpc.py"):
        fresh = (tmp_path / "runtime/protos" / name).read_text()
        assert fresh == (ROOT / "runtime/protos" / name).read_text(), f"{name} is stale"

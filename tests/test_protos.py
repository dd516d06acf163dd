"""The committed generated gRPC code matches each .proto (regenerate with `make protos`)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("proto", ["runtime/protos/miner.proto", "network/protos/node.proto"])
def test_generated_code_is_in_sync(proto: str, tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT}",
                    f"--python_out={tmp_path}", f"--grpc_python_out={tmp_path}",
                    str(ROOT / proto)], check=True, timeout=60)
    stem = Path(proto)
    for name in (f"{stem.stem}_pb2.py", f"{stem.stem}_pb2_grpc.py"):
        fresh = (tmp_path / stem.parent / name).read_text()
        assert fresh == (ROOT / stem.parent / name).read_text(), f"{name} is stale"

"""A run that failed says so in its exit status, even after FHE circuits ran in it.

concrete-python 2.11 ends a process that ran a circuit with status 0 at exit; before
this plugin a test session with failures exited 0 once any test had run a circuit, so
`make test` and `.ci/run` could pass on failing tests (found in issue #12's fresh-clone
run: "1 failed, 609 passed" and status 0).
"""

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
RUN_A_CIRCUIT = """
import numpy as np
from concrete import fhe

@fhe.compiler({"x": "encrypted"})
def f(x):
    return x + 1

c = f.compile([np.int64(i) for i in range(4)])
c.keygen()
assert c.decrypt(c.run(c.encrypt(2))) == 3
"""


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), str(TESTS.parent)]))


def test_exit_now_keeps_its_status_after_a_circuit_ran() -> None:
    code = RUN_A_CIRCUIT + "\nfrom cerberus.fhe.exit import exit_now\nexit_now(3)\n"
    result = subprocess.run([sys.executable, "-c", code], env=_env(), timeout=300,
                            capture_output=True, text=True)
    assert result.returncode == 3, result.stderr


def test_a_failing_session_that_ran_a_circuit_exits_non_zero(tmp_path: Path) -> None:
    (tmp_path / "test_x.py").write_text(
        "def test_runs_a_circuit():\n" + "".join(f"    {line}\n" for line in
                                                RUN_A_CIRCUIT.strip().splitlines())
        + "\n\ndef test_fails():\n    assert False\n")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "exit_status", "-p", "no:cacheprovider",
         str(tmp_path / "test_x.py")],
        env=_env(), cwd=tmp_path, timeout=300, capture_output=True, text=True)
    assert "1 failed, 1 passed" in result.stdout, result.stdout
    assert result.returncode == 1

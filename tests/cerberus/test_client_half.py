"""The miner's weights stay with the miner (SPEC C6, C8; issue #13).

The client half of a compiled artefact must hold no miner weight matrix in any
orientation or scale, and no integer graph of the miner's. For every miner program the
test collects the shapes its weights take (the integer ``[in, out]`` matrix, its
transpose, and, for the fused q·k·v program, each projection's ``[in, inner]`` and
``[inner, in]``) and looks for them among every array the client half stores.

tiny-gpt has 64 positions of width 64, so its position table is 64×64 like its q, k, v
and o weights: a shape alone cannot tell them apart. There an array of a miner shape must
also be uncorrelated with every miner matrix of that shape (|ρ| < 0.5, scale-free, either
orientation); MiniLM (512 positions, d 384) has no such coincidence, and no client array
may have a miner shape at all.
"""

import numpy as np
import pytest
from safetensors.numpy import load_file

from cerberus.artefact import load_artefact
from cerberus.compile import CompileOptions, compile_model
from cerberus.paths import minilm_path, shipped_model

FAST = dict(calibration_windows=16, significance="gradient")


def miner_shapes(art) -> dict[tuple[int, int], list[np.ndarray]]:
    out: dict[tuple[int, int], list[np.ndarray]] = {}
    for name, graph in art.programs.items():
        if "linear" not in graph.meta:
            continue
        w = graph["linear"].attrs["weight"]
        mats = [w]
        if name.endswith(".qkv"):
            mats += np.split(w, 3, axis=1)
        for m in mats:
            out.setdefault(m.shape, []).append(m)
            out.setdefault(m.T.shape, []).append(m.T)
    return out


def client_arrays(root) -> dict[str, np.ndarray]:
    arrays = dict(load_file(str(root / "client" / "model.safetensors")))
    with np.load(root / "client" / "linears.npz") as z:
        arrays |= {f"linears.{k}": z[k] for k in z.files}
    return arrays


def half_bytes(root, half: str) -> int:
    return sum(p.stat().st_size for p in (root / half).rglob("*") if p.is_file())


def correlated(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    if a.std() == 0 or b.std() == 0:
        return False
    return abs(float(np.corrcoef(a, b)[0, 1])) >= 0.5


@pytest.fixture(scope="module", params=["tiny-gpt", "all-MiniLM-L6-v2"])
def compiled(request, tmp_path_factory):
    source = shipped_model() if request.param == "tiny-gpt" else minilm_path()
    out = tmp_path_factory.mktemp("half") / f"{request.param}.cerb"
    compile_model(source, out, CompileOptions(**FAST))
    return request.param, out, load_artefact(out)


def test_client_half_holds_no_miner_weight(compiled) -> None:
    name, root, art = compiled
    shapes = miner_shapes(art)
    assert shapes, "a hybrid artefact has miner linears"
    arrays = client_arrays(root)
    suspects = {k: v for k, v in arrays.items()
                if v.ndim == 2 and tuple(v.shape) in shapes}
    if name == "tiny-gpt":  # the one coincidence: positions × width = width × width
        assert set(suspects) <= {"pos_emb.weight"}
        for key, arr in suspects.items():
            assert not any(correlated(arr, m) for m in shapes[tuple(arr.shape)]), key
    else:
        assert not suspects
    assert not any(p.name.startswith("graph") for p in (root / "client").rglob("*"))
    client, miner = half_bytes(root, "client"), half_bytes(root, "miner")
    print(f"{name}: client half {client:,} B, miner half {miner:,} B")
    assert client > 0 and miner > 0


def test_the_check_sees_a_leaked_weight(compiled, tmp_path) -> None:
    """The test above can fail: a client half carrying one miner matrix is caught."""
    _, _, art = compiled
    shapes = miner_shapes(art)
    leaked = next(iter(shapes.values()))[0]
    arrays = {"lm_head.weight": leaked * 0.01}  # any scale
    hits = [k for k, v in arrays.items() if v.ndim == 2 and tuple(v.shape) in shapes
            and any(correlated(v, m) for m in shapes[tuple(v.shape)])]
    assert hits == ["lm_head.weight"]

"""The integer graph: op semantics, range checks, serialisation."""

import numpy as np
import pytest

from cerberus.ir import IntGraph, Node, RangeOverflow, apply_op, evaluate, round_lsbs, width


def test_width_signed_and_unsigned() -> None:
    assert width(0, 255) == 8 and width(0, 256) == 9
    assert width(-128, 127) == 8 and width(-129, 127) == 9 and width(-128, 128) == 9
    assert width(0, 0) == 1


def test_round_lsbs_is_round_half_up_for_negatives_too() -> None:
    x = np.array([-6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6])
    expected = np.floor(x / 4 + 0.5).astype(np.int64)
    assert np.array_equal(round_lsbs(x, 2), expected)
    assert np.array_equal(round_lsbs(x, 0), x)


def lut_graph(table: np.ndarray, lsbs: int, offset: int, lo: int, hi: int) -> IntGraph:
    nodes = [
        Node("input", "input", [], lo, hi),
        Node("t", "lut", ["input"], int(table.min()), int(table.max()),
             attrs={"table": table, "lsbs": lsbs, "offset": offset}),
    ]
    return IntGraph(nodes, "input", "t", {"seq_len": 1, "d_model": 3})


def test_lut_indexes_rounded_input() -> None:
    table = np.arange(-4, 4) * 10  # indices -4..3 → offset -4
    g = lut_graph(table, lsbs=2, offset=-4, lo=-16, hi=15)
    x = np.array([[-16, -2, 13]])
    out = evaluate(g, x)["output"]
    assert np.array_equal(out, table[round_lsbs(x, 2) + 4])


def test_values_outside_compiled_range_fail_loudly() -> None:
    g = lut_graph(np.arange(8), lsbs=0, offset=0, lo=0, hi=7)
    with pytest.raises(RangeOverflow, match="input"):
        evaluate(g, np.array([[0, 1, 8]]))
    with pytest.raises(RangeOverflow, match="outside its table"):
        evaluate(g, np.array([[0, 1, 8]]), check_ranges=False)


@pytest.mark.parametrize(
    "op,args,attrs,expected",
    [
        ("linear", [np.array([[1, 2]])], {"weight": np.array([[1, 0], [2, 3]]),
                                          "mult": np.array([2, 1]), "bias": np.array([1, -1])},
         np.array([[11, 5]])),
        ("mul_const", [np.array([[2, -3]])], {"const": np.array([4, 5])}, np.array([[8, -15]])),
        ("add_const", [np.array([[2, -3]])], {"const": np.array([1, 1])}, np.array([[3, -2]])),
        ("add", [np.array([1, 2]), np.array([3, 4])], {}, np.array([4, 6])),
        ("sub", [np.array([1, 2]), np.array([3, 5])], {}, np.array([-2, -3])),
        ("mul", [np.array([2, -2]), np.array([3, 4])], {}, np.array([6, -8])),
        ("matmul", [np.array([[1, 2]]), np.array([[3], [4]])], {}, np.array([[11]])),
        ("sum", [np.array([[1, 2, 3]])], {}, np.array([[6]])),
        ("slice", [np.array([[1, 2, 3]])], {"start": 1, "stop": 3}, np.array([[2, 3]])),
        ("concat", [np.array([[1]]), np.array([[2]])], {}, np.array([[1, 2]])),
        ("transpose", [np.array([[1, 2]])], {}, np.array([[1], [2]])),
    ],
)
def test_op_semantics(op, args, attrs, expected) -> None:
    assert np.array_equal(apply_op(Node("n", op, [], 0, 0, attrs=attrs), args), expected)


def test_unknown_op_is_named() -> None:
    with pytest.raises(ValueError, match="frob"):
        apply_op(Node("n", "frob", [], 0, 0), [np.zeros(1)])


def test_save_load_round_trip_keeps_digest(tmp_path) -> None:
    g = lut_graph(np.arange(8) * 3, lsbs=1, offset=0, lo=0, hi=13)
    g.save(tmp_path / "g")
    back = IntGraph.load(tmp_path / "g")
    assert back.digest() == g.digest()
    x = np.array([[0, 7, 13]])
    assert np.array_equal(evaluate(back, x)["output"], evaluate(g, x)["output"])
    back["t"].attrs["table"][0] += 1
    assert back.digest() != g.digest()

"""Calibration data for the compiler's data-driven passes (SPEC C2 significance, C4 ranges).

Why a built-in default: ``cerberus compile MODEL`` must work offline with no data flag, so
the compiler ships a few paragraphs of plain English prose. Its subject (Python and its
documentation) matches the shipped tiny GPT-2, which was trained on CPython's docs, so its
LM loss on this text is meaningful; any user file passed with ``--calibration`` replaces it.

Batches are int64 token windows ``[B, T]``. Window order is shuffled with a seeded generator
so that the same seed always gives the same batches (significance must be deterministic).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cerberus.errors import CompileError

DEFAULT_CALIBRATION_TEXT = """\
Python is a programming language that lets you work quickly and integrate systems more \
effectively. A program is read far more often than it is written, so the language favours \
code that is easy to read: blocks are marked by indentation rather than by braces, and \
there should be one obvious way to do most things. The interpreter can be used \
interactively, which makes it a convenient calculator and a good place to try out a new \
module before using it in a larger program.

Every value in Python is an object, and every object has an identity, a type and a value. \
The type of an object determines the operations that it supports, such as addition for \
numbers or iteration for lists, and it also defines the possible values for objects of \
that type. Some objects are mutable, which means that their value can change after they \
are created; lists and dictionaries are mutable, while numbers, strings and tuples are \
not. When an object is no longer reachable it may be garbage collected, although the \
language does not promise when this happens.

A function is defined with the def statement, followed by the function name and a list of \
parameters in parentheses. The statements that form the body of the function start on the \
next line and must be indented. The first statement of the body can be a string literal, \
which becomes the documentation string of the function. When the function is called, a \
new local namespace is created for its variables, and the arguments are bound to the \
parameter names in that namespace. The return statement ends the call and passes a value \
back to the caller; a function without a return statement returns None.

Errors detected during execution are called exceptions. An exception that is not handled \
stops the program and prints a traceback, which shows the sequence of calls that led to \
the error. A try statement lets a program handle selected exceptions: the except clause \
names the exception to catch, the else clause runs when no exception was raised, and the \
finally clause runs in every case, which makes it the right place to release resources \
such as open files or network connections.

Modules are files that contain definitions and statements. The import statement finds a \
module, loads it, and binds a name to it in the local namespace. A package is a directory \
of modules, and the import system searches the entries of the module search path in order \
until it finds the requested name. Each module has its own global namespace, so names \
defined in one module do not clash with the same names defined in another.

Classes provide a means of bundling data and functionality together. Creating a new class \
creates a new type of object, allowing new instances of that type to be made. Each class \
instance can have attributes attached to it for maintaining its state, and methods defined \
by its class for modifying that state. When an attribute is looked up on an instance, the \
instance dictionary is searched first, then the class, and then its base classes in the \
method resolution order.
"""


def _encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` without the model's special tokens (windows are cut anyway)."""
    try:
        ids = tokenizer.encode(text, add_special_tokens=False)
    except TypeError:
        ids = tokenizer.encode(text)
    return [int(i) for i in ids]


def _read_text(text: str | None, path: Path | None) -> str:
    if text is not None and path is not None:
        raise CompileError("calibration: give either text or a file, not both")
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise CompileError(f"calibration file {str(path)!r} not found")
        text = path.read_text(encoding="utf-8", errors="replace")
        if not text.strip():
            raise CompileError(f"calibration file {str(path)!r} is empty")
        return text
    if text is None:
        return DEFAULT_CALIBRATION_TEXT
    if not text.strip():
        raise CompileError("calibration text is empty")
    return text


def _windows_to_batches(
    ids: torch.Tensor, seq_len: int, batch_size: int, max_batches: int, seed: int
) -> list[torch.Tensor]:
    """Cut half-overlapping windows, shuffle them with ``seed``, group into batches."""
    stride = max(1, seq_len // 2)
    starts = torch.arange(0, ids.numel() - seq_len + 1, stride)
    gen = torch.Generator().manual_seed(seed)
    starts = starts[torch.randperm(starts.numel(), generator=gen)]
    starts = starts[: batch_size * max_batches]
    windows = torch.stack([ids[s : s + seq_len] for s in starts.tolist()])
    return [windows[i : i + batch_size] for i in range(0, windows.shape[0], batch_size)]


def _check_shape(seq_len: int, batch_size: int, max_batches: int) -> None:
    if seq_len < 2:
        raise CompileError(f"calibration seq_len must be ≥ 2, got {seq_len}")
    if batch_size < 1 or max_batches < 1:
        raise CompileError(
            f"calibration batch_size and max_batches must be ≥ 1, got {batch_size}, {max_batches}"
        )


def calibration_batches(
    tokenizer: Any,
    text: str | None = None,
    path: Path | None = None,
    *,
    seq_len: int,
    batch_size: int = 8,
    max_batches: int = 8,
    seed: int = 0,
) -> list[torch.Tensor]:
    """Token windows ``[B, seq_len]`` (int64) from ``text``, a file, or the built-in prose.

    The last batch may be smaller than ``batch_size``. A missing, empty or too-short source is
    a :class:`CompileError`, because silently calibrating on nothing would give meaningless
    significance scores and quantization ranges.
    """
    _check_shape(seq_len, batch_size, max_batches)
    if tokenizer is None:
        raise CompileError(
            "calibration text needs a tokenizer and this model has none; use random_batches"
        )
    source = _read_text(text, path)
    ids = torch.tensor(_encode(tokenizer, source), dtype=torch.int64)
    if ids.numel() < seq_len:
        where = f"file {str(path)!r}" if path is not None else "text"
        raise CompileError(
            f"calibration {where} is too short: {ids.numel()} tokens, need at least {seq_len}"
        )
    return _windows_to_batches(ids, seq_len, batch_size, max_batches, seed)


def random_batches(
    vocab_size: int,
    seq_len: int,
    *,
    batch_size: int = 8,
    n_batches: int = 4,
    seed: int = 0,
) -> list[torch.Tensor]:
    """Uniform random token windows, for models that ship without a tokenizer.

    Random tokens say nothing about a language, but for the output-distortion loss (no LM
    head) they still exercise every head, which is all significance needs to rank them.
    """
    _check_shape(seq_len, batch_size, n_batches)
    if vocab_size < 1:
        raise CompileError(f"vocab_size must be ≥ 1, got {vocab_size}")
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.randint(0, vocab_size, (batch_size, seq_len), generator=gen, dtype=torch.int64)
        for _ in range(n_batches)
    ]

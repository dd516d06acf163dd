"""Errors the compiler raises for bad input; the CLI prints them as one line."""


class CompileError(Exception):
    """The model or options cannot be compiled; the message says what and where."""

"""Errors for bad input; the CLI prints any ``CerberusError`` as one line."""


class CerberusError(Exception):
    """An error the user can act on; its message says what is wrong and where."""


class CompileError(CerberusError):
    """The model or options cannot be compiled; the message says what and where."""

"""Errors for bad input; the CLI prints any ``CerberusError`` as one line."""


class CerberusError(Exception):
    """An error the user can act on; its message says what is wrong and where."""


class CompileError(CerberusError):
    """The model or options cannot be compiled; the message says what and where."""


class CLIError(CerberusError):
    """A command-line error the user can act on: printed as one line, exit code ``code``.

    It lives here, not in the shell, so the command modules below the shell can raise it
    without importing the shell back (issue #12: no cycles through the CLI).
    """

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code

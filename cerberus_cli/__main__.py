"""``python -m cerberus_cli`` is the same as the ``cerberus`` console script."""

from cerberus_cli.main import entry

entry()

"""One module per ``cerberus`` command: ``add_arguments(parser)`` and ``run(args) -> int``."""

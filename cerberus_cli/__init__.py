"""The application shell: the ``cerberus`` command line and ``make demo``.

It sits above the four packages (compiler ``cerberus``, ``runtime``, ``ledger``,
``network``) and may import any of them; none of them imports it (tests/test_imports.py).
Each command is one module in ``cerberus_cli.commands`` with ``add_arguments(parser)`` and
``run(args)``; heavy dependencies are imported inside ``run`` so ``cerberus --help`` is fast.
"""

import sys

# ``cerberus`` as a child process of this interpreter (the demo's miner, a local network's
# participants). The shell hands JOIN_CMD to ``network.local``, which must not name it.
CLI = (sys.executable, "-m", "cerberus_cli")
JOIN_CMD = (*CLI, "join")

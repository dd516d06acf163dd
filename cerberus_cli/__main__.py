"""``python -m cerberus`` is the same as the ``cerberus`` console script."""

from cerberus.cli import main

raise SystemExit(main())

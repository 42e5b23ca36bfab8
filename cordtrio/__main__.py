"""``python -m cordtrio``: the same as the ``cordtrio`` command."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())

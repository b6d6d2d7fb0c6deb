"""``python -m sparseforge``: the same as the ``sparseforge`` command."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())

"""sparseforge benchmarks: ``python -m bench.<name>`` from the repository root, or
``python bench/<name>.py``. The shared method lives in :mod:`bench.harness`."""

from __future__ import annotations

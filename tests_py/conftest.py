"""Shared fixtures: seeded rng, dtype and SIMD-level parametrisation.

The test modules import ``reference`` (numpy oracles) from this directory; pytest runs
with ``--import-mode=importlib``, which does not put test directories on ``sys.path``, so
this conftest does.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import sparseforge as sf

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import reference  # noqa: E402  (needs the path above)

ALL_SIMD_LEVELS = ("scalar", "avx2", "avx512")


def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> None:
    """When a test fails, Hypothesis' pytest plugin imports hypothesis.extra._patching
    (libcst) to write an @example patch; that import raises a DeprecationWarning from
    mypy_extensions, which ``filterwarnings = error`` turns into an INTERNALERROR hiding
    the real failure. Import it here first, with that warning silenced."""
    if call.excinfo is not None and "hypothesis" in sys.modules:
        with warnings.catch_warnings(), contextlib.suppress(ImportError):
            warnings.simplefilter("ignore", DeprecationWarning)
            import hypothesis.extra._patching  # noqa: F401


def simd_levels() -> list[str]:
    """Every level from "scalar" up to the detected one."""
    detected = sf.detected_simd_level()
    return list(ALL_SIMD_LEVELS[: ALL_SIMD_LEVELS.index(detected) + 1])


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> np.random.Generator:
    """A generator seeded from the test's id: reproducible, different per test."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(params=reference.DTYPES, ids=lambda d: d.name)
def dtype(request: pytest.FixtureRequest) -> np.dtype:
    """float32, float16 and ml_dtypes.bfloat16."""
    return request.param


@pytest.fixture
def restore_simd() -> Iterator[None]:
    """Restores sf.simd_level() after a test that changes it."""
    level = sf.simd_level()
    yield
    sf.set_simd_level(level)


@pytest.fixture
def all_simd_levels() -> list[str]:
    """Every SIMD level this CPU supports, lowest first."""
    return simd_levels()


@pytest.fixture(params=simd_levels())
def simd_level(request: pytest.FixtureRequest, restore_simd: None) -> str:
    """Runs the test at each SIMD level this CPU supports (restored afterwards)."""
    sf.set_simd_level(request.param)
    assert sf.simd_level() == request.param
    return str(request.param)


@pytest.fixture(scope="session")
def arch_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, object]]:
    """Each family of tests_py/archmodels.py as a random transformers model saved to a
    directory: family -> (directory, transformers model). Skips without torch/transformers."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import archmodels

    return {
        fam: (d, archmodels.make_hf(fam, d))
        for fam in archmodels.FAMILIES
        for d in [tmp_path_factory.mktemp(fam)]
    }

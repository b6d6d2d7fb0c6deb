"""Every C++ exception kind reaches Python as the documented exception (docs/conventions.md)."""

from __future__ import annotations

import pytest

import sparseforge as sf
from sparseforge import _core


@pytest.mark.parametrize(
    ("kind", "exc", "message"),
    [
        ("invalid_argument", ValueError, r"^x: bad value 1 \[in "),
        ("dtype", sf.DTypeError, r"^x: expected float32, got int8 \[in "),
        ("numerical", sf.NumericalError, r"^H: not positive definite \(0.5\) \[in "),
        ("internal", RuntimeError, r"internal error in sparseforge: 'kind == \"never\"' failed"),
        ("bad_alloc", MemoryError, None),
    ],
)
def test_cpp_exceptions_map_to_python(
    kind: str, exc: type[BaseException], message: str | None
) -> None:
    with pytest.raises(exc, match=message):
        _core.core._raise_for_test(kind)


def test_exception_hierarchy() -> None:
    assert issubclass(sf.DTypeError, TypeError)
    assert issubclass(sf.DTypeError, ValueError)
    assert issubclass(sf.NumericalError, ArithmeticError)
    assert not issubclass(sf.NumericalError, ValueError)
    with pytest.raises(ValueError, match="kind: unknown 'nope'"):
        _core.core._raise_for_test("nope")

"""_core.pyi against the compiled module, parameter by parameter.

mypy.stubtest (run by .ci/run) finds missing and extra names, but pybind11 functions carry
no __text_signature__, so it cannot compare parameters. pybind11 writes each signature on
the first line of the docstring; this test compares those names, order and defaults with
the hand-written stub.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import sparseforge
from sparseforge import _core

STUB = Path(sparseforge.__file__).with_name("_core.pyi")


def stub_functions() -> dict[str, list[tuple[str, str | None]]]:
    tree = ast.parse(STUB.read_text())
    out = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            args = node.args.args
            defaults = [None] * (len(args) - len(node.args.defaults)) + [
                ast.unparse(d) for d in node.args.defaults
            ]
            out[node.name] = [(a.arg, d) for a, d in zip(args, defaults, strict=True)]
    return out


def runtime_params(fn: object) -> list[tuple[str, str | None]]:
    first = (fn.__doc__ or "").splitlines()[0]
    m = re.match(r"^\w+\((.*)\) ->", first)
    assert m, f"no pybind11 signature line in {first!r}"
    params = []
    depth, cur = 0, ""
    for ch in m.group(1) + ",":  # split on top-level commas only
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == "," and depth == 0:
            if cur.strip():
                name, _, rest = cur.strip().partition(":")
                default = rest.split("=", 1)[1].strip() if "=" in rest else None
                params.append((name.strip(), default))
            cur = ""
        else:
            cur += ch
    return params


STUBBED = stub_functions()


def test_every_public_function_is_stubbed() -> None:
    runtime = {n for n in dir(_core) if callable(getattr(_core, n)) and not n.startswith("__")}
    runtime -= {n for n in runtime if isinstance(getattr(_core, n), type)}  # classes
    runtime -= {"DTypeError", "NumericalError"}
    assert runtime == set(STUBBED)


@pytest.mark.parametrize("name", sorted(STUBBED))
def test_parameters_match(name: str) -> None:
    assert runtime_params(getattr(_core, name)) == STUBBED[name]

"""The _core stubs (_core/<area>.pyi) against the compiled submodules, parameter by parameter.

mypy.stubtest (run by .ci/run) finds missing and extra names, but pybind11 functions carry
no __text_signature__, so it cannot compare parameters. pybind11 writes each signature on
the first line of the docstring; this test compares those names, order and defaults with
the hand-written stub.
"""

from __future__ import annotations

import ast
import re
import types
from pathlib import Path

import pytest

import sparseforge
from sparseforge import _core

STUBS = Path(sparseforge.__file__).with_name("_core")
AREAS = sorted(p.stem for p in STUBS.glob("*.pyi") if p.stem != "__init__")


def stub_functions() -> dict[str, list[tuple[str, str | None]]]:
    """{"<area>.<function>": [(parameter, default), ...]} for every stubbed function."""
    out = {}
    for area in AREAS:
        tree = ast.parse((STUBS / f"{area}.pyi").read_text())
        for node in tree.body:
            if isinstance(node, ast.FunctionDef):
                args = node.args.args
                defaults = [None] * (len(args) - len(node.args.defaults)) + [
                    ast.unparse(d) for d in node.args.defaults
                ]
                out[f"{area}.{node.name}"] = [
                    (a.arg, d) for a, d in zip(args, defaults, strict=True)
                ]
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


def test_every_submodule_has_a_stub() -> None:
    submodules = {n for n in dir(_core) if isinstance(getattr(_core, n), types.ModuleType)}
    assert submodules == set(AREAS)


def test_every_public_function_is_stubbed() -> None:
    runtime = set()
    for area in AREAS:
        sub = getattr(_core, area)
        for n in dir(sub):
            obj = getattr(sub, n)
            if callable(obj) and not n.startswith("__") and not isinstance(obj, type):
                runtime.add(f"{area}.{n}")
    assert runtime == set(STUBBED)


@pytest.mark.parametrize("name", sorted(STUBBED))
def test_parameters_match(name: str) -> None:
    area, fn = name.split(".")
    assert runtime_params(getattr(getattr(_core, area), fn)) == STUBBED[name]

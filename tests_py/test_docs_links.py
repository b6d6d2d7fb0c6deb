"""The markdown in the repository has no dangling references: every relative link names a
file or folder inside the checkout, every ``#anchor`` names a heading of its target (GitHub's
slugs), and backticked ``docs/*.md`` paths exist."""

from __future__ import annotations

import re
import subprocess
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"(?<!\!)\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~)")


def markdown_files() -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "*.md"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / p for p in out]


def prose(path: Path) -> str:
    """The file without fenced code blocks (links there are examples, not references)."""
    keep, fenced = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            keep.append(line)
    return "\n".join(keep)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: inline markup dropped, lower case, punctuation other
    than ``-`` and ``_`` removed, spaces to ``-``."""
    text = re.sub(r"`([^`]*)`", r"\1", heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = text.strip().lower()
    out = []
    for ch in text:
        cat = unicodedata.category(ch)
        if ch in "-_" or ch.isalnum():
            out.append(ch)
        elif ch == " ":
            out.append("-")
        elif cat.startswith(("P", "S")):
            continue
    return "".join(out)


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for line in prose(path).splitlines():
        m = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def test_slug_matches_github() -> None:
    assert slug("Hugging Face directory: `export_hf(model, dir, *, dtype=None)`") == (
        "hugging-face-directory-export_hfmodel-dir--dtypenone"
    )
    assert slug("Past one machine: Ray — `prune_ray`") == "past-one-machine-ray--prune_ray"
    assert slug("N:M tensors (2:4)") == "nm-tensors-24"


def test_relative_links_and_anchors_resolve() -> None:
    bad = []
    checked = 0
    files = markdown_files()
    assert any(p.name == "README.md" for p in files)
    for md in files:
        for target in LINK.findall(prose(md)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            checked += 1
            path_part, _, frag = target.partition("#")
            dest = md if not path_part else (md.parent / path_part).resolve()
            where = f"{md.relative_to(ROOT)}: ({target})"
            if ROOT not in dest.parents and dest != ROOT:
                bad.append(f"{where} points outside the repository")
                continue
            if not dest.exists():
                bad.append(f"{where} does not exist")
                continue
            if frag and dest.suffix == ".md" and frag not in anchors(dest):
                bad.append(f"{where}: no heading with anchor #{frag}")
    assert not bad, "\n".join(bad)
    assert checked >= 20  # the docs do link to each other: the scan found them


def test_anchor_scan_flags_a_missing_heading(tmp_path: Path) -> None:
    md = tmp_path / "a.md"
    md.write_text("# Top\n\n## The block step\n\n```\n# not a heading\n```\n## Top\n")
    assert anchors(md) == {"top", "the-block-step", "top-1"}


def test_backticked_doc_paths_exist() -> None:
    """A backticked ``docs/``, ``examples/`` or ``bench/results/`` path exists; a result
    table not produced yet passes only if a ``bench/*.py`` script names it (it is what a
    benchmark run writes)."""
    scripts = " ".join(p.read_text(encoding="utf-8") for p in (ROOT / "bench").glob("*.py"))
    pattern = r"`((?:docs|bench/results|examples)/[\w./-]+\.(?:md|py|ipynb))`"
    bad = []
    for md in markdown_files():
        for ref in re.findall(pattern, prose(md)):
            if (ROOT / ref).exists():
                continue
            if ref.startswith("bench/results/") and f'"{Path(ref).name}"' in scripts:
                continue
            bad.append(f"{md.relative_to(ROOT)}: `{ref}` does not exist")
    assert not bad, "\n".join(bad)

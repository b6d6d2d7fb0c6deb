"""The benchmark method in Python; the same method as ``bench/cpp/harness.h``.

bench/README.md, "Method":

* candidates and baselines run **interleaved** (round-robin) in one process, and each
  reports its **best of N** (N >= 21) — machine bandwidth drifts 2-3x within minutes, so
  only times taken side by side are compared, and only as **ratios**;
* every call reads an input copy that is **not in cache**: inputs are rotated through a
  working set of at least 4x the last-level cache (:func:`copies_for`);
* sparseforge runs at 1 and 2 threads;
* the result is a markdown table in ``bench/results/`` with ``sparseforge.build_info()``,
  the date, the command line, N, the working set and the LLC size (:func:`write_report`).

Benchmarks are never timed assertions in the test suite.

Usage from a benchmark script (importable as ``bench.harness`` from the repository root,
or as ``harness`` when the script is run as ``python bench/<name>.py``)::

    args = harness.parse_args(__doc__, default_out="masks.md")
    copies = harness.copies_for(W.nbytes)
    Ws = [make_input(seed) for seed in range(copies)]
    timings = harness.run_interleaved(
        {"numpy": lambda c: baseline(Ws[c]), "sf 1T": lambda c: candidate(Ws[c], 1)},
        copies, args.reps)
    harness.write_report(args.out, "Title", [table], reps=args.reps, ...)
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import glob
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MIN_REPS = 21  # the method's N
QUICK_REPS = 5  # --quick: a smoke run, not a measurement
RESULTS_DIR = Path(__file__).resolve().parent / "results"
_FALLBACK_LLC = 32 << 20  # as harness.h, when sysfs says nothing
_ENV_KEYS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "SPARSEFORGE_SIMD")


# ---------------------------------------------------------------------------------------
# Working set


def _parse_size(text: str) -> int:
    """``"266240K"`` -> bytes (sysfs cache sizes: a number with an optional K/M/G)."""
    text = text.strip()
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if text and text[-1].upper() in units:
        return int(text[:-1]) * units[text[-1].upper()]
    return int(text)


def llc_bytes() -> int:
    """Last-level cache size in bytes: the largest ``cpu0/cache/index*/size`` in sysfs.

    32 MiB if sysfs has no cache information (as ``sfbench::llc_bytes``).
    """
    best = 0
    for path in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        try:
            with open(path, encoding="ascii") as f:
                best = max(best, _parse_size(f.read()))
        except (OSError, ValueError):
            continue
    return best or _FALLBACK_LLC


def copies_for(nbytes: int, *, factor: int = 4) -> int:
    """Independent input copies of ``nbytes`` each that make a working set >= ``factor`` x LLC.

    At least 2, so consecutive calls never read the same copy.
    """
    if nbytes <= 0:
        raise ValueError(f"nbytes: expected > 0, got {nbytes}")
    return max(2, math.ceil(factor * llc_bytes() / nbytes))


def fmt_bytes(n: float) -> str:
    """``1088421888`` -> ``"1.01 GiB"``."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


# ---------------------------------------------------------------------------------------
# Allocator

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc mallopt parameters (malloc.h)
_heap_kept = False


def keep_heap() -> bool:
    """Make glibc serve every allocation from the heap and never give memory back.

    By default each large array is a fresh ``mmap``: every call page-faults its outputs and
    temporaries in again, and with transparent huge pages (numpy madvises them) a fault
    can stall on compaction; on VMs this varies 10x between calls. With the heap kept,
    repeated calls reuse pages faulted in during the warm-up, which isolates compute and
    DRAM traffic (as the C++ benchmarks, whose outputs are preallocated). Returns False if
    not on glibc.
    """
    global _heap_kept
    try:
        libc = ctypes.CDLL(None)
        ok = bool(
            libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
        )
    except (OSError, AttributeError):
        ok = False
    _heap_kept = _heap_kept or ok
    return ok


def allocator_note() -> str:
    if _heap_kept:
        return "glibc heap kept (--keep-heap): no page faults after the warm-up"
    return (
        "process default (glibc: each large array a fresh mmap, page faults counted in "
        "every call; --keep-heap to exclude them)"
    )


# ---------------------------------------------------------------------------------------
# Timing


@dataclass
class Timing:
    """Times of one case over the timed rounds, in seconds (warm-up excluded)."""

    name: str
    times: list[float] = field(default_factory=list)

    @property
    def best(self) -> float:
        """The method's number: best of N."""
        return min(self.times)

    @property
    def median(self) -> float:
        """For reading the spread only; ratios use :attr:`best`."""
        return statistics.median(self.times)

    @property
    def best_ms(self) -> float:
        return self.best * 1e3


def run_interleaved(
    cases: Mapping[str, Callable[[int], Any]],
    copies: int,
    reps: int,
    *,
    warmup: int = 1,
    progress: bool = True,
) -> dict[str, Timing]:
    """Time named callables round-robin for ``reps`` rounds; best-of-N per case.

    Parameters
    ----------
    cases : mapping of name -> callable(copy_index)
        Each callable makes one call on input copy ``copy_index`` (``0 <= copy_index <
        copies``). Its return value is dropped after the clock stops, so freeing a result
        is not timed (as a caller-owned output in C++).
    copies : int
        Input copies to rotate through (:func:`copies_for`). The index advances on every
        call across all cases, as in ``harness.h``, so a copy is read again only after
        ``copies`` other calls.
    reps : int
        Timed rounds (N). Every case runs ``warmup`` untimed times first.
    progress : bool
        Print one line per round to stderr (long runs show they are alive).

    Returns
    -------
    dict of name -> Timing, in the order of ``cases``.
    """
    if copies < 1 or reps < 1:
        raise ValueError(f"copies and reps must be >= 1, got copies={copies} reps={reps}")
    timings = {name: Timing(name) for name in cases}
    clock = time.perf_counter
    copy = 0
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(warmup):
            for fn in cases.values():
                fn(copy % copies)
                copy += 1
        start = clock()
        for r in range(reps):
            for name, fn in cases.items():
                t0 = clock()
                out = fn(copy % copies)
                dt = clock() - t0
                del out
                timings[name].times.append(dt)
                copy += 1
            if progress:
                print(f"  round {r + 1}/{reps}  {clock() - start:7.1f} s", file=sys.stderr)
    finally:
        if gc_was_enabled:
            gc.enable()
    return timings


# ---------------------------------------------------------------------------------------
# Markdown


def fmt_ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}"


def fmt_ratio(ratio: float) -> str:
    return f"{ratio:.2f}x" if ratio < 10 else f"{ratio:.1f}x"


def md_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub markdown table; cells are ``str()``-ed, ``|`` escaped."""

    def cell(x: object) -> str:
        return str(x).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |"]
    lines.append("|" + "|".join("---" for _ in headers) + "|")
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def timings_table(timings: Mapping[str, Timing]) -> str:
    """Every case's best and median (ms) and N: the raw numbers behind a report's ratios."""
    rows = [
        (name, fmt_ms(t.best), fmt_ms(t.median), f"{t.median / t.best:.2f}", len(t.times))
        for name, t in timings.items()
    ]
    return md_table(("case", "best ms", "median ms", "median/best", "N"), rows)


def command_line() -> str:
    """The exact command that started this process (interpreter included)."""
    argv = getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv]
    return shlex.join(argv)


_source: str | None = None


def source_note() -> str:
    """The repository's commit, whether tracked files differ from it, and the installed
    ``sparseforge`` that is timed (its path and when its ``_core`` was built), with a
    warning if ``_core`` is older than the commit. Taken once, at the first call
    (:func:`parse_args` makes it at start-up), so a commit during the run does not change it.
    """
    global _source
    if _source is not None:
        return _source
    import sparseforge as sf
    from sparseforge import _core

    repo = Path(__file__).resolve().parent.parent
    built = os.path.getmtime(_core.__file__)
    stamp = datetime.datetime.fromtimestamp(built).astimezone()
    where = f"sparseforge from `{Path(sf.__file__).parent}`, _core built {stamp:%Y-%m-%d %H:%M %Z}"
    try:

        def git(*args: str) -> str:
            return subprocess.run(
                ["git", *args], cwd=repo, capture_output=True, text=True, timeout=10, check=True
            ).stdout

        head = git("log", "-1", "--format=%h %ct").split()
        n = len(git("status", "--porcelain", "--untracked-files=no").splitlines())
        state = "clean" if n == 0 else f"{n} tracked files modified"
        commit = f"git {head[0]} ({state})"
        if built < int(head[1]):
            where += " — **older than the commit: rebuild (`pip install .`) if the C++ changed**"
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):
        commit = "git commit unknown"
    _source = f"{commit}; {where}"
    return _source


def build_info_table() -> str:
    """Every key of ``sparseforge.build_info()`` plus the LLC size, as a markdown table."""
    import sparseforge as sf

    rows = [(k, f"`{v}`" if v else "") for k, v in sf.build_info().items()]
    rows.append(("llc_bytes", f"{llc_bytes()} ({fmt_bytes(llc_bytes())})"))
    return md_table(("key", "value"), rows)


def write_report(
    out: str | os.PathLike[str],
    title: str,
    sections: Sequence[str],
    *,
    reps: int,
    working_set: str,
    quick: bool = False,
    meta: Mapping[str, str] | None = None,
    started: datetime.datetime | None = None,
    load_start: tuple[float, float, float] | None = None,
) -> Path:
    """Write ``title``, the run's facts, ``sections`` and the build table to ``out``.

    Parameters
    ----------
    out : path
        Markdown file; parent directories are created.
    sections : sequence of str
        Markdown blocks (tables, notes), written in order.
    reps : int
        N of best-of-N.
    working_set : str
        How the working set was built, e.g. ``"17 x 64.00 MiB = 1.06 GiB"`` per shape.
    meta : mapping, optional
        Further ``key: value`` lines for the header (threads, data, baselines...).
    started, load_start : optional
        Start time and ``os.getloadavg()`` at the start; the end values are taken now.

    Returns
    -------
    Path written.
    """
    now = datetime.datetime.now().astimezone()
    started = started or now
    llc = llc_bytes()
    facts: dict[str, str] = {
        "Date": f"{started:%Y-%m-%d %H:%M %Z} (run took {(now - started).total_seconds():.0f} s)",
        "Command": f"`{command_line()}` (cwd `{os.getcwd()}`)",
        "N": f"best of {reps}, all cases interleaved round-robin in one process"
        + ("" if reps >= MIN_REPS else f" — **below the method's N >= {MIN_REPS}**"),
        "Working set": working_set,
        "Source": source_note(),
        "LLC": f"{fmt_bytes(llc)} ({llc} bytes, largest cpu0/cache/index*/size)",
        "Environment": ", ".join(f"{k}={os.environ.get(k, 'unset')}" for k in _ENV_KEYS),
        "Allocator": allocator_note(),
    }
    if hasattr(os, "getloadavg"):
        end = os.getloadavg()
        begin = f"{load_start[0]:.2f}" if load_start else "?"
        facts["Load average (1 min)"] = f"{begin} at start, {end[0]:.2f} at end"
    facts.update(meta or {})
    parts = [f"# {title}\n"]
    if quick:
        parts.append(
            "> **--quick smoke run**: small shapes, few reps, cached inputs. Not a measurement.\n"
        )
    parts.append("\n".join(f"- **{k}:** {v}" for k, v in facts.items()) + "\n")
    parts += [s.rstrip("\n") + "\n" for s in sections]
    parts.append("## Build\n\n" + build_info_table())
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------
# Command line


def parse_args(
    description: str | None,
    default_out: str,
    argv: Sequence[str] | None = None,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.Namespace:
    """``--reps N``, ``--quick``, ``--out PATH``, ``--keep-heap`` (+ ``add_arguments``'s).

    ``reps`` defaults to 21 (5 with ``--quick``); ``out`` defaults to
    ``bench/results/<default_out>`` wherever the script is run from.
    """
    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--reps",
        type=int,
        default=None,
        help=f"timed rounds, best-of-N (default {MIN_REPS}; {QUICK_REPS} with --quick)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: small shapes, few reps, inputs not rotated out of cache",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=RESULTS_DIR / default_out,
        help="markdown report (default: %(default)s)",
    )
    p.add_argument(
        "--keep-heap",
        action="store_true",
        help="glibc keeps freed memory: no page faults in timed calls (see keep_heap())",
    )
    if add_arguments is not None:
        add_arguments(p)
    args = p.parse_args(argv)
    source_note()  # the source as it is at start-up
    if args.keep_heap and not keep_heap():
        p.error("--keep-heap: mallopt failed (not glibc?)")
    if args.reps is None:
        args.reps = QUICK_REPS if args.quick else MIN_REPS
    if args.reps < 1:
        p.error(f"--reps: expected >= 1, got {args.reps}")
    if args.reps < MIN_REPS and not args.quick:
        print(f"warning: --reps {args.reps} is below the method's N >= {MIN_REPS}", file=sys.stderr)
    return args

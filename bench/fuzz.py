"""The long mode of the fuzz suite (docs/robustness.md): every API case, N mutations of
every file format, the shared-object stress; counts per area to bench/results/fuzz.md.

    python bench/fuzz.py                      # all API cases, 1250 mutations per format
    python bench/fuzz.py --files 200          # fewer files
    python bench/fuzz.py --case api:123       # replay one case in this process, with traceback
    python bench/fuzz.py --case file:4017

Each case runs in a worker process with a timeout (20 s) and an address-space cap (3 GiB).
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests_py"))

import fuzzlib  # noqa: E402


def replay(spec: str) -> None:
    kind, _, num = spec.partition(":")
    i = int(num)
    if kind == "api":
        _, ti, _name, (a, vi) = fuzzlib.api_cases()[i]
        print(fuzzlib.describe_api(i))
        _label, value, _ = fuzzlib.hostile_values()[vi]
        fn, args, kwargs = fuzzlib._targets()[ti].make()
        if isinstance(a, int):
            args[a] = value
        else:
            kwargs[a] = value
        try:
            print("returned", repr(fn(*args, **kwargs))[:300])
        except BaseException:
            traceback.print_exc()
    else:
        d = Path(tempfile.mkdtemp())
        fmt = fuzzlib._file_formats_cached(d)
        names = sorted(fmt)
        print(
            names[i // fuzzlib.FILE_MUTATIONS_MAX],
            fuzzlib._run_file_case(
                fmt,
                names[i // fuzzlib.FILE_MUTATIONS_MAX],
                i % fuzzlib.FILE_MUTATIONS_MAX,
                d / "work",
            ),
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=1250, help="mutations per file format")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--case", help="replay one case: api:N or file:N")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "fuzz.md"))
    args = ap.parse_args()
    if args.case:
        replay(args.case)
        return
    t0 = time.time()
    rows = []
    api = fuzzlib.api_cases()
    rep = fuzzlib.run("api", [c[0] for c in api], workers=args.workers)
    per = collections.defaultdict(collections.Counter)
    for i, r in rep.results.items():
        per[api[i][2].split(".")[0]][r["outcome"]] += 1
    defects = [("api", i, fuzzlib.describe_api(i), r) for i, r in rep.defects()]
    for area in sorted(per):
        rows.append((f"api: {area}", per[area]))
    with tempfile.TemporaryDirectory() as d:
        ids, names = fuzzlib.file_case_ids(Path(d), args.files)
        frep = fuzzlib.run("file", ids, seeds_dir=d, workers=args.workers)
    fper = collections.defaultdict(collections.Counter)
    for i, r in frep.results.items():
        fper[names[i // fuzzlib.FILE_MUTATIONS_MAX]][r["outcome"]] += 1
    for name in sorted(fper):
        rows.append((f"file: {name}", fper[name]))
    defects += [("file", i, names[i // fuzzlib.FILE_MUTATIONS_MAX], r) for i, r in frep.defects()]
    # the shared-object stress and the 200,000 zero-size tensors, as in the tests
    import test_concurrency as tc
    from childproc import run_child

    conc = collections.Counter()
    for clear in (False, True):
        out = run_child(
            tc._KV_STRESS.replace("{rounds}", "2000").replace("{clear}", str(clear)), timeout=600
        )
        conc["refused" if out.kind == "ok" else out.kind] += 1
    rows.append(("threads: PagedKVCache stress (2 x 2000 rounds)", conc))
    zt = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-k",
            "zero_size",
            "-p",
            "no:cacheprovider",
            str(ROOT / "tests_py" / "test_hostile_files.py"),
        ],
        env=dict(os.environ, SPARSEFORGE_ZERO_TENSORS="200000"),
        capture_output=True,
        text=True,
        check=False,
    )
    ok = zt.returncode == 0
    rows.append(
        (
            "files: container of 200,000 zero-size tensors",
            collections.Counter({"refused" if ok else "hang": 1}),
        )
    )
    cols = ["refused", "accepted", "wrong-type", "crash", "hang", "memory", "silent"]
    load = os.getloadavg()
    lines = [
        "# Fuzz counts (bench/fuzz.py)",
        "",
        f"`python bench/fuzz.py --files {args.files} --workers {args.workers}`; "
        f"{time.time() - t0:.0f} s on a shared 2-core machine (load {load[0]:.1f}). "
        "`refused` = TypeError/ValueError naming the argument (the contract); `accepted` = "
        "returned normally for a value that can be valid (or a file mutation outside any "
        "checksum that still parses: a changed weight); the last five columns are defects. "
        "Threads row: runs that finished with consistent state are counted as `refused`.",
        "",
        "| area | cases | " + " | ".join(cols) + " |",
        "|---|---:|" + "---:|" * len(cols),
    ]
    for name, c in rows:
        lines.append(
            f"| {name} | {sum(c.values()) - c['skip']} | "
            + " | ".join(str(c[k]) for k in cols)
            + " |"
        )
    lines += ["", f"Defects: {len(defects)}", ""]
    for kind, i, what, r in defects:
        lines.append(f"- `{kind}:{i}` {what}: {r['outcome']} {r.get('exc', '')}")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

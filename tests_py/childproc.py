"""Run Python code in a child process with a timeout and a memory cap, and classify how it
ended: the harness of the concurrency, hang and fuzz tests (a segfault or a hang in the
child is a test failure with a message, never a dead or stuck pytest)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass

#: Address-space cap for a child: far above what any case needs (numpy + the extension take
#: ~300 MiB of address space), far below what an unbounded allocation asks for.
MEMORY_CAP = 2 << 30


@dataclass
class Outcome:
    kind: str  # "ok", "crash", "hang", "error" (a Python exception escaped), "memory"
    returncode: int | None
    output: str

    def __str__(self) -> str:
        return f"{self.kind} (rc={self.returncode}):\n{self.output[-3000:]}"


def _limit(memory: int) -> None:  # pragma: no cover - runs in the child
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run_child(code: str, *, timeout: float = 60.0, memory: int = MEMORY_CAP) -> Outcome:
    """Run ``code`` (dedented) in ``python -c``; ``ok`` means exit status 0."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "2")
    env["PYTHONFAULTHANDLER"] = "1"
    try:
        p = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            preexec_fn=(lambda: _limit(memory)) if memory else None,
        )
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"") + (e.stderr or b"")
        text = out.decode(errors="replace") if isinstance(out, bytes) else str(out)
        return Outcome("hang", None, text)
    out = p.stdout + p.stderr
    if p.returncode == 0:
        return Outcome("ok", 0, out)
    if p.returncode < 0:
        sig = -p.returncode
        kind = "memory" if sig == signal.SIGKILL else "crash"
        return Outcome(kind, p.returncode, out)
    if "MemoryError" in out or "bad_alloc" in out:
        return Outcome("memory", p.returncode, out)
    return Outcome("error", p.returncode, out)

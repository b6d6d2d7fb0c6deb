"""Progress bars for long jobs: ``tqdm`` when it is installed, plain lines on stderr otherwise.

Every long job of the library (the model demo, calibration, block-by-block pruning in one
process, streamed or on Ray, perplexity, TEAL's greedy search, Minitron importance and
SliceGPT, the exports and ``sf.models.save``) takes ``progress: bool | None = None``:

* ``None`` (default): show progress when stderr is a terminal; the environment variable
  ``SPARSEFORGE_PROGRESS=1`` forces it on elsewhere (a log file, CI), ``=0`` turns it off;
* ``True``: always show it (also when stderr is not a terminal);
* ``False``: quiet.

``pip install tqdm`` (or the ``progress`` extra) gives tqdm's bars; without it a bar is one
line rewritten in place on a terminal (``\\r``), or one line per step elsewhere (at most one
a second, the first and last always), e.g.::

    sparseforge prune [wanda]: 12/30 blocks [8.1 s, ~12.2 s left] sparsity 0.500

Nothing here is printed on stdout, so piping a command's results stays clean.
"""

from __future__ import annotations

import os
import sys
import time
import weakref
from types import TracebackType
from typing import Any, TextIO

__all__ = ["ENV", "Bar", "bar", "check_progress", "enabled", "write"]

ENV = "SPARSEFORGE_PROGRESS"
_ON = ("1", "true", "yes", "on", "always")
_OFF = ("0", "false", "no", "off", "never")
# Set to False by tests (or a user) to force the plain fallback even when tqdm is installed.
USE_TQDM = True

# Open bars (for write() and nesting); weak, so a bar left open by an exception goes away
# with the frame that held it.
_active: weakref.WeakSet[Bar] = weakref.WeakSet()


def check_progress(value: Any, name: str = "progress") -> bool | None:
    """``value`` if it is True, False or None; TypeError naming ``name`` otherwise."""
    if value is None or isinstance(value, bool):
        return value
    raise TypeError(f"{name}: expected True, False or None, got {type(value).__name__}")


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def enabled(progress: bool | None, stream: TextIO | None = None) -> bool:
    """Whether progress is shown for ``progress`` (see the module notes) on ``stream``
    (default ``sys.stderr``)."""
    progress = check_progress(progress)
    if progress is not None:
        return progress
    env = os.environ.get(ENV, "").strip().lower()
    if env in _ON:
        return True
    if env in _OFF:
        return False
    return _isatty(sys.stderr if stream is None else stream)


def _tqdm() -> Any:
    if not USE_TQDM:
        return None
    try:
        import tqdm  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        return None
    return tqdm.tqdm


def _clock(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(round(seconds), 60)
    if m < 60:
        return f"{m}:{s:02d}"
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


class Bar:
    """One progress bar (use :func:`bar`). ``update(n)`` advances it, ``note(text)`` sets
    the text after the counts, ``close()`` (or leaving the ``with`` block) ends it. A
    disabled bar does nothing at all."""

    def __init__(
        self,
        total: int | None,
        desc: str,
        *,
        unit: str = "it",
        show: bool = True,
        stream: TextIO | None = None,
        leave: bool | None = None,
        mininterval: float = 1.0,
    ) -> None:
        self.total = None if total is None else int(total)
        self._closed: bool = False
        # leave=None: keep the finished bar unless it is nested in another open bar.
        if leave is None:
            leave = not any(not b._closed for b in _active)
        self.desc, self.unit, self.show, self.leave = desc, unit, show, leave
        self.stream = sys.stderr if stream is None else stream
        self.n = 0
        self._note = ""
        self._start = time.perf_counter()
        self._last_print = -1e300
        self._mininterval = float(mininterval)
        self._tty = _isatty(self.stream)
        self._width = 0
        self._last_line = -1
        self._tq: Any = None
        if not show:
            return
        tq = _tqdm()
        if tq is not None:
            self._tq = tq(
                total=self.total,
                desc=desc,
                unit=unit,
                file=self.stream,
                leave=leave,
                dynamic_ncols=True,
                mininterval=0.2 if self._tty else self._mininterval,
            )
        _active.add(self)

    # -- the counts --------------------------------------------------------------------
    def update(self, n: int = 1) -> None:
        if not self.show or self._closed:
            return
        self.n += int(n)
        if self._tq is not None:
            self._tq.update(int(n))
        else:
            self._plain(final=False)

    def note(self, text: str) -> None:
        """The text shown after the counts (tqdm's postfix)."""
        if not self.show or self._closed:
            return
        self._note = text
        if self._tq is not None:
            self._tq.set_postfix_str(text, refresh=False)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self.show:
            return
        _active.discard(self)
        if self._tq is not None:
            self._tq.close()
            return
        if self._tty:
            if self.leave:
                self._plain(final=True)
                self.stream.write("\n")
            else:
                self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
        elif self.n and self._last_line != self.n:
            self._plain(final=True)

    def __enter__(self) -> Bar:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the plain fallback ------------------------------------------------------------
    def line(self) -> str:
        """The plain-text status: ``desc: n/total unit [elapsed, ~left] note``."""
        elapsed = time.perf_counter() - self._start
        count = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
        timing = _clock(elapsed)
        if self.total and 0 < self.n < self.total:
            timing += f", ~{_clock(elapsed / self.n * (self.total - self.n))} left"
        text = f"{self.desc}: {count} {self.unit} [{timing}]"
        return f"{text} {self._note}" if self._note else text

    def _plain(self, *, final: bool) -> None:
        now = time.perf_counter()
        last = self.total is not None and self.n >= self.total
        if self._tty:
            if not (final or last or now - self._last_print >= 0.1):
                return
            text = self.line()
            pad = max(self._width - len(text), 0)
            self.stream.write("\r" + text + " " * pad)
            self._width = len(text)
        else:
            first = self._last_line < 0
            if not (final or last or first or now - self._last_print >= self._mininterval):
                return
            self.stream.write(self.line() + "\n")
            self._last_line = self.n
        self.stream.flush()
        self._last_print = now


def bar(
    total: int | None,
    desc: str,
    *,
    unit: str = "it",
    progress: bool | None = None,
    stream: TextIO | None = None,
    leave: bool | None = None,
) -> Bar:
    """A progress bar over ``total`` steps, shown or not as ``progress`` says (see the
    module notes). ``leave=False`` erases it when it closes; ``None`` (default) erases it
    only when it was opened inside another open bar."""
    out = sys.stderr if stream is None else stream
    return Bar(total, desc, unit=unit, show=enabled(progress, out), stream=out, leave=leave)


def write(message: str, stream: TextIO | None = None) -> None:
    """Print ``message`` on ``stream`` (default stderr) without breaking open bars."""
    out = sys.stderr if stream is None else stream
    tq = _tqdm() if any(b._tq is not None for b in _active) else None
    if tq is not None:
        tq.write(message, file=out)
        return
    tty_bars = [b for b in _active if b._tty and b.stream is out and b._width]
    for b in tty_bars:
        out.write("\r" + " " * b._width + "\r")
    out.write(message + "\n")
    for b in tty_bars:
        b._last_print = -1e300
        b._plain(final=False)
    out.flush()

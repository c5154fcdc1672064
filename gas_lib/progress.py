"""Progress output that suits where it goes: live bars for people, a few lines for log files.

``progress(iterable, desc)`` is what every loop of the method layer wraps itself in. It picks
one of three modes:

- ``bars``: a live ``tqdm`` bar. Used when stderr is a terminal, and inside a Jupyter kernel
  with ipywidgets (JupyterLab, Notebook, VS Code), where the bar is a widget.
- ``lines``: no bar and no carriage returns; ``desc: started (N items)`` and
  ``desc: done N items in X s`` on stderr, plus, for loops given ``every``, one line every
  ``every`` items with the values of ``set_postfix`` and the seconds per item. Used when
  stderr is not a terminal (``python -m gas_lib train ... > log 2>&1``, CI) and in a kernel
  without ipywidgets, where tqdm's text bars would redraw into the saved outputs.
- ``off``: nothing.

The environment variable ``GAS_PROGRESS=bars|lines|off`` (or ``auto``, the default) overrides
the choice; ``enabled=False`` (a caller's ``progress=False``) silences a loop in every mode.

Papermill runs a notebook in a real kernel, which the kernel side cannot tell apart from
JupyterLab, so it gets ``bars`` too. That is harmless: a widget bar's updates travel as widget
messages, not as text, so nothing is redrawn into the executed notebook or its stderr. Measured
with papermill 2.7 / ipywidgets 8: each bar leaves one display output (its first text line,
about 0.3 KB) plus its final widget state in the notebook metadata (about 9 KB). The study's
headless runs pass ``interactive=False`` (``progress=False``), so their loops print nothing
here and the study prints its own epoch lines; ``GAS_PROGRESS=lines`` gives the plain lines in
a kernel instead (about 0.1 KB per loop, readable in the HTML report).

``log(message)`` writes one line to stderr the same way (through ``tqdm.write`` when bars are
on, so that a live bar is not torn); it prints whatever the mode, for messages that must
always reach the user (e.g. that a fit resumes from a checkpoint). Lines go to stderr with
``print``, not ``logging``: they show without any logging setup (the CLI and notebooks make
none), stay out of stdout (where the CLI prints its results), and ``2>&1`` interleaves them.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

ENV = "GAS_PROGRESS"
MODES = ("bars", "lines", "off")
T = TypeVar("T")


def _in_jupyter_kernel() -> bool:
    """True inside an IPython kernel (JupyterLab, Notebook, VS Code, papermill), not a
    terminal IPython or a Qt console."""
    if "ipykernel.zmqshell" not in sys.modules:
        return False
    shell = sys.modules["IPython"].get_ipython()
    return type(shell).__name__ == "ZMQInteractiveShell"


def _has_ipywidgets() -> bool:
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


def mode() -> str:
    """``bars``, ``lines`` or ``off``: ``GAS_PROGRESS`` if set, else what the output suits."""
    forced = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if forced in MODES:
        return forced
    if forced != "auto":
        raise ValueError(f"{ENV}={forced!r}: expected one of {MODES + ('auto',)}")
    if _in_jupyter_kernel():
        return "bars" if _has_ipywidgets() else "lines"
    stream = sys.stderr
    return "bars" if stream is not None and stream.isatty() else "lines"


def log(message: str) -> None:
    """One line on stderr, whatever the mode (a live bar is not torn)."""
    if mode() == "bars":
        _tqdm_class().write(message, file=sys.stderr)
    else:
        print(message, file=sys.stderr, flush=True)


def _tqdm_class() -> Any:
    if _in_jupyter_kernel() and _has_ipywidgets():
        from tqdm.notebook import tqdm
    else:
        from tqdm.std import tqdm
    return tqdm


class LineProgress:
    """The ``lines`` mode: iterate, and say when the loop starts, every ``every`` items (if
    given) and when it ends. Offers the part of tqdm's interface the loops use."""

    def __init__(self, iterable: Iterable[T], desc: str, total: int | None, unit: str,
                 every: int | None, initial: int) -> None:
        self.iterable, self.desc, self.unit = iterable, desc, unit
        self.total = total
        self.every = every
        self.n = initial
        self.initial = initial
        self.postfix: dict[str, Any] = {}

    def __iter__(self) -> Iterator[T]:
        total = "" if self.total is None else f"{self.total} "
        left = f" from {self.unit} {self.initial + 1}" if self.initial else ""
        log(f"{self.desc}: started ({total}{_plural(self.unit)}{left})")
        started = last_time = time.perf_counter()
        last_n = self.n
        for item in self.iterable:
            yield item
            self.n += 1
            if self.every and (self.n % self.every == 0 or self.n == self.total):
                now = time.perf_counter()
                per_item = (now - last_time) / max(1, self.n - last_n)
                of = "" if self.total is None else f"/{self.total}"
                values = " ".join(f"{k}={v}" for k, v in self.postfix.items())
                log(f"{self.unit} {self.n}{of}  {values}  {per_item:.2f} s/{self.unit}")
                last_time, last_n = now, self.n
        log(f"{self.desc}: done {self.n - self.initial} {_plural(self.unit)} in "
            f"{time.perf_counter() - started:.1f} s")

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values

    def close(self) -> None:
        pass


def _plural(unit: str) -> str:
    return unit + ("es" if unit.endswith(("s", "x", "sh", "tch")) else "s")  # batches, epochs


class _Silent(LineProgress):
    def __iter__(self) -> Iterator[T]:
        yield from self.iterable


def progress(iterable: Iterable[T], desc: str, *, total: int | None = None,
             enabled: bool = True, unit: str = "item", every: int | None = None,
             initial: int = 0, leave: bool = False) -> Any:
    """``iterable`` wrapped for progress output (see the module docstring for the modes).

    ``every``: in ``lines`` mode, a line every that many items with ``set_postfix``'s values
    (None: only the start and end lines). ``initial``: items already done before this loop
    (a resumed fit), counted towards ``total``. ``leave``: keep the bar once done.
    The result iterates like ``iterable`` and has ``set_postfix(**values)`` and ``close()``.
    """
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable) + initial  # type: ignore[arg-type]
    chosen = mode() if enabled else "off"
    if chosen == "bars":
        return _tqdm_class()(iterable, desc=desc, total=total, initial=initial, unit=unit,
                             leave=leave)
    if chosen == "lines":
        return LineProgress(iterable, desc, total, unit, every, initial)
    return _Silent(iterable, desc, total, unit, every, initial)

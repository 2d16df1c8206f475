"""Progress on long work: a bar in JupyterLab, lines of text in a terminal and in CI.

Built on tqdm (``tqdm.auto``: a widget in a notebook, text elsewhere). A loop that runs inside
``jit`` cannot report from inside: report after each compiled chunk instead, from the Python
loop that calls it (:func:`otdiff.train.fit` calls its ``callback(step, loss)`` so; pass a
:class:`Progress` as that callback). Every bar states the expected duration when it starts, from
an earlier measurement where there is one.

Taught in: book/diffusion/01_score_based.ipynb.
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm

__all__ = ["Progress", "describe_seconds"]


def describe_seconds(seconds: float) -> str:
    """``seconds`` in words a reader scans: "40 s", "3.5 min", "1.2 h".

    Taught in: book/diffusion/01_score_based.ipynb.
    """
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    """A progress bar over ``total`` units that first says what it does and how long it should take.

    Call it as ``progress(done, loss=None)`` with the number of units done so far (the signature
    of :func:`otdiff.train.fit`'s callback), or ``progress.advance(k)``; close it with
    :meth:`close` or use it as a context manager.

    Args:
        total: the number of units, an int >= 1.
        description: what is running, e.g. ``"training 'ring8'"``.
        unit: the unit's name (``"step"``, ``"iteration"``, ``"repeat"``).
        expected_seconds: the expected duration, stated at the start (``None``: unknown; the
            bar's own estimate follows after the first update).
        basis: where the expectation comes from (e.g. ``"the shipped build, 2 CPU cores"``).
        file: the stream of the bar (default ``sys.stderr``, tqdm's); the opening line goes to
            standard output.

    Taught in: book/diffusion/01_score_based.ipynb.
    """

    def __init__(
        self,
        total: int,
        description: str,
        *,
        unit: str = "step",
        expected_seconds: float | None = None,
        basis: str | None = None,
        file: Any = None,
    ) -> None:
        if isinstance(total, bool) or not isinstance(total, int) or total < 1:
            raise ValueError(f"total must be an int >= 1, got {total!r}.")
        self.total = total
        stream = sys.stderr if file is None else file
        opening = sys.stdout if file is None else file
        if expected_seconds is None:
            expected = "duration not known yet (estimated after the first update)"
        else:
            expected = f"expected about {describe_seconds(expected_seconds)}"
            expected += f" ({basis})" if basis else ""
        units = unit if self.total == 1 else f"{unit}s"
        print(f"{description}: {self.total} {units}, {expected}.", file=opening, flush=True)
        self._bar = tqdm(total=self.total, desc=description, unit=unit, file=stream, leave=True)

    def __call__(self, done: int, loss: float | None = None) -> None:
        self._bar.update(max(0, min(int(done), self.total) - self._bar.n))
        if loss is not None:
            self._bar.set_postfix(loss=f"{float(loss):.4g}", refresh=False)

    def advance(self, k: int = 1) -> None:
        """Count ``k`` more units done."""
        self(self._bar.n + k)

    @property
    def done(self) -> int:
        """The number of units done so far."""
        return int(self._bar.n)

    def close(self) -> None:
        """End the bar (it stays on screen)."""
        self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""Explorers: one pure function of the hyperparameters, two ways to play with it.

A chapter writes ``compute(**hyperparameters) -> pytree of arrays`` (pure, jit-able) and
``plot(ax, result, **hyperparameters)`` (matplotlib only), then::

    ex = Explorer(compute, plot, [slider("epsilon", 1e-3, 1.0, value=0.05, log=True)])
    ex.widget()                      # live ipywidgets in a running kernel
    ex.sweep("epsilon", n_frames=12) # a player that stays interactive in the static HTML

*Live.* ``compute`` is jitted once. Float sliders are passed as dynamic scalars, so moving one
re-runs the compiled program without compiling again (``Explorer.compilations()`` counts the
programs compiled so far; a test checks it stays at one). Parameters marked ``static`` (a
method name, a shape-setting integer) compile once per distinct value and are then cached.
Every value is range-checked before the call, so ``compute`` traces without the library's
run-time guards (:func:`otdiff.config.unguarded`): its programs hold no host callback and JAX's
persistent compilation cache keeps them from one session to the next.

*Sweep.* :meth:`Explorer.sweep` evaluates ``compute`` on a grid of one parameter in one compiled
program, with ``jax.vmap`` or ``jax.lax.map`` in batches (a loop for static parameters), draws every frame with ``plot`` and renders them
with matplotlib's ``FuncAnimation.to_jshtml``: an HTML/JavaScript player with the frames
embedded, which needs neither a kernel nor a network.

Callbacks are plain functions: :meth:`Explorer.callback` is what a slider move calls, and tests
call it with each slider's extreme values.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from otdiff import _checks

__all__ = ["Param", "slider", "choice", "Explorer", "Player"]


@dataclass(frozen=True)
class Param:
    """A hyperparameter a reader can move.

    Attributes:
        name: the keyword argument of ``compute`` and ``plot`` it feeds.
        value: its default value.
        low, high: the range of a slider (``None`` for a choice).
        log: a logarithmic slider and sweep grid (``low`` must then be positive).
        options: the values of a drop-down choice (empty for a slider).
        integer: an integer slider.
        static: passed to ``jax.jit`` as a static argument (one compilation per distinct
            value). Choices and integer sliders are static by default; float sliders never are.
        label: the text beside the control (defaults to ``name``).

    Taught in: book/diffusion/04_projective_composition.ipynb.
    """

    name: str
    value: Any
    low: float | None = None
    high: float | None = None
    log: bool = False
    options: tuple = ()
    integer: bool = False
    static: bool = False
    label: str | None = None

    @property
    def is_choice(self) -> bool:
        return bool(self.options)

    def check(self, value: Any) -> Any:
        """Return ``value`` converted to the parameter's type, or raise a clear ``ValueError``."""
        if self.is_choice:
            if value not in self.options:
                raise ValueError(f"{self.name} must be one of {list(self.options)}, got {value!r}.")
            return value
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"{self.name} must be a number, got {value!r}.") from None
        if not (math.isfinite(number) and self.low <= number <= self.high):
            raise ValueError(
                f"{self.name} must lie in [{self.low:g}, {self.high:g}], got {value!r}."
            )
        return int(round(number)) if self.integer else number

    def grid(self, n: int) -> np.ndarray | tuple:
        """``n`` values spanning the range (geometric if ``log``), or all options of a choice."""
        if self.is_choice:
            return self.options
        if self.log:
            values = np.geomspace(self.low, self.high, n)
        else:
            values = np.linspace(self.low, self.high, n)
        return np.unique(np.round(values).astype(int)) if self.integer else values


def slider(
    name: str,
    low: float,
    high: float,
    value: float | None = None,
    *,
    log: bool = False,
    integer: bool = False,
    label: str | None = None,
) -> Param:
    """A slider over ``[low, high]``; integer sliders are static (they usually set shapes).

    Raises:
        ValueError: if ``low >= high``, if ``log`` with ``low <= 0``, or ``value`` out of range.

    Taught in: book/ot/01_sinkhorn.ipynb, book/ot/02_sinkhorn_init.ipynb, book/ot/03_progot.ipynb,
    book/ot/05_m3g.ipynb, book/diffusion/01_score_based.ipynb, book/diffusion/02_energy_smc.ipynb,
    book/diffusion/04_projective_composition.ipynb, book/diffusion/03_spell.ipynb,
    book/diffusion/06_rdsb.ipynb, book/optim/01_bloop.ipynb.
    """
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"slider {name!r}: need finite low < high, got low={low}, high={high}.")
    if log and low <= 0:
        raise ValueError(f"slider {name!r}: a log slider needs low > 0, got low={low}.")
    if value is None:
        value = math.sqrt(low * high) if log else (low + high) / 2
    param = Param(name, value, low, high, log=log, integer=integer, static=integer, label=label)
    return Param(**{**param.__dict__, "value": param.check(value)})


def choice(name: str, options: Sequence, value: Any = None, *, label: str | None = None) -> Param:
    """A drop-down over ``options`` (static: each option compiles once, then is cached).

    Taught in: book/ot/02_sinkhorn_init.ipynb, book/ot/03_progot.ipynb,
    book/diffusion/01_score_based.ipynb, book/diffusion/04_projective_composition.ipynb,
    book/diffusion/03_spell.ipynb, book/diffusion/06_rdsb.ipynb, book/optim/01_bloop.ipynb.
    """
    options = tuple(options)
    if not options:
        raise ValueError(f"choice {name!r}: options must not be empty.")
    value = options[0] if value is None else value
    param = Param(name, value, options=options, static=True, label=label)
    param.check(value)
    return param


class Explorer:
    """Live widgets and a static sweep player from one pure function of the hyperparameters.

    Args:
        compute: ``compute(**params) -> pytree of arrays``; pure and jit-able in the float
            parameters.
        plot: ``plot(ax, result, **params)``; draws one frame on ``ax`` (an array of axes when
            ``ncols > 1``).
        params: the :class:`Param` objects (see :func:`slider`, :func:`choice`).
        fixed: keyword arguments passed unchanged to ``compute`` and ``plot`` (static).
        ncols: number of side-by-side axes handed to ``plot``.
        figsize: the figure size in inches.

    Taught in: book/ot/01_sinkhorn.ipynb, book/ot/02_sinkhorn_init.ipynb, book/ot/03_progot.ipynb,
    book/ot/05_m3g.ipynb, book/diffusion/01_score_based.ipynb, book/diffusion/02_energy_smc.ipynb,
    book/diffusion/04_projective_composition.ipynb, book/diffusion/03_spell.ipynb,
    book/diffusion/06_rdsb.ipynb, book/optim/01_bloop.ipynb.
    """

    def __init__(
        self,
        compute: Callable[..., Any],
        plot: Callable[..., None],
        params: Sequence[Param],
        *,
        fixed: dict | None = None,
        ncols: int = 1,
        figsize: tuple[float, float] | None = None,
    ):
        if not callable(compute) or not callable(plot):
            raise TypeError("compute and plot must be callables.")
        params = list(params)
        if not params or not all(isinstance(p, Param) for p in params):
            raise TypeError("params must be a non-empty sequence of Param (use slider/choice).")
        names = [p.name for p in params]
        if len(set(names)) != len(names):
            raise ValueError(f"params must have distinct names, got {names}.")
        if not isinstance(ncols, int) or ncols < 1:
            raise ValueError(f"ncols must be a positive integer, got {ncols!r}.")
        self.params = {p.name: p for p in params}
        self.fixed = dict(fixed or {})
        self.plot = plot
        self.ncols = ncols
        self.figsize = figsize or (4.2 * ncols + 0.8, 3.8)
        static = [p.name for p in params if p.static] + list(self.fixed)
        # The sliders are range-checked (Param.check) before every call, and evaluate() checks
        # the result for NaN: compute traces without the library's run-time guards, so that its
        # program holds no host callback and stays in JAX's persistent compilation cache.
        self._raw_compute = _checks.unguarded()(compute)
        self._traces = 0

        def counted(**values):
            self._traces += 1  # Python runs here once per trace, i.e. once per compiled program
            return self._raw_compute(**values)

        self.compute = jax.jit(counted, static_argnames=tuple(static))

    # -- values -----------------------------------------------------------------------------
    def defaults(self) -> dict[str, Any]:
        """The default value of every parameter."""
        return {name: p.value for name, p in self.params.items()}

    def extremes(self) -> list[dict[str, Any]]:
        """Parameter settings at each slider's ends (others at defaults), and every option."""
        settings = []
        for name, p in self.params.items():
            ends = p.options if p.is_choice else (p.low, p.high)
            settings += [{**self.defaults(), name: v} for v in ends]
        return settings

    def _resolve(self, values: dict[str, Any]) -> dict[str, Any]:
        unknown = set(values) - set(self.params)
        if unknown:
            raise ValueError(f"unknown parameters {sorted(unknown)}; known: {list(self.params)}.")
        merged = {**self.defaults(), **values}
        return {name: self.params[name].check(v) for name, v in merged.items()}

    def compilations(self) -> int:
        """How many programs ``compute`` has compiled so far (one per static setting): the
        times it was traced, counted as it traces (JAX's dispatch-cache size can miss some)."""
        return self._traces

    # -- live -------------------------------------------------------------------------------
    def evaluate(self, **values) -> Any:
        """``compute`` at ``values`` (defaults for the rest), checked for NaNs."""
        values = self._resolve(values)
        result = self.compute(**values, **self.fixed)
        leaves = [
            x for x in jax.tree_util.tree_leaves(result) if jnp.issubdtype(x.dtype, jnp.inexact)
        ]
        if any(bool(jnp.isnan(x).any()) for x in leaves):
            raise FloatingPointError(f"compute returned NaN at {values}.")
        return result

    def new_figure(self):
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, self.ncols, figsize=self.figsize, squeeze=False)
        return fig, (axes[0, 0] if self.ncols == 1 else axes[0])

    def callback(self, **values):
        """What a control move runs: evaluate and draw a new figure, which it returns."""
        values = self._resolve(values)
        result = self.evaluate(**values)
        fig, ax = self.new_figure()
        self.plot(ax, result, **values, **self.fixed)
        fig.tight_layout()
        return fig

    def widget(self):
        """Live ipywidgets: one control per parameter, the figure redrawn on release."""
        import ipywidgets as widgets
        import matplotlib.pyplot as plt

        controls = {name: _control(p) for name, p in self.params.items()}

        def show(**values):
            self.callback(**{k: _clamp(self.params[k], v) for k, v in values.items()})
            plt.show()

        output = widgets.interactive_output(show, controls)
        box = widgets.VBox(
            [widgets.HBox(list(controls.values()), layout={"flex_flow": "row wrap"}), output]
        )
        box.add_class("otdiff-explorer")
        return box

    # -- sweep ------------------------------------------------------------------------------
    def sweep(
        self,
        name: str,
        values: Sequence | None = None,
        *,
        n_frames: int = 12,
        fps: float = 3.0,
        batch_size: int | None = None,
        **others,
    ) -> Player:
        """Evaluate over a grid of ``name`` and return a :class:`Player` of the frames.

        Args:
            name: the parameter to sweep.
            values: the grid (default: ``n_frames`` values spanning the slider, log-spaced for
                log sliders; every option for a choice).
            n_frames: the grid size when ``values`` is not given; 2 to 60.
            fps: frames per second of the player.
            batch_size: ``None`` evaluates every frame at once with ``jax.vmap``; an integer
                ``k`` maps over the grid ``k`` frames at a time (``jax.lax.map``), still in one
                compiled program. Use ``1`` for a ``compute`` with a data-dependent loop (a
                solver run to a tolerance): under ``vmap`` every frame runs until the slowest
                has converged, which on a CPU costs more than it saves.
            **others: values of the other parameters (defaults otherwise).
        """
        if name not in self.params:
            raise ValueError(f"name must be one of {list(self.params)}, got {name!r}.")
        if not isinstance(n_frames, int) or not 2 <= n_frames <= 60:
            raise ValueError(f"n_frames must be an integer in [2, 60], got {n_frames!r}.")
        param = self.params[name]
        grid = list(param.grid(n_frames) if values is None else values)
        grid = [param.check(v) for v in grid]
        base = self._resolve(others)
        if param.static:
            frames = [self.evaluate(**{**base, name: v}) for v in grid]
        else:
            if batch_size is not None:
                _checks.check_int(batch_size, "batch_size", low=1)
            frames = _batched_frames(
                self._raw_compute, name, grid, base, self.params, self.fixed, batch_size
            )
        return Player(self, name, grid, frames, base, fps)


def _batched_frames(compute, name, grid, base, params, fixed, batch_size) -> list:
    static = {k: v for k, v in base.items() if params[k].static} | fixed
    dynamic = {k: v for k, v in base.items() if not params[k].static and k != name}

    def one(value, dyn):
        return compute(**{name: value}, **dyn, **static)

    values = jnp.asarray(grid, dtype=jnp.float32)
    if batch_size is None:
        batched = jax.jit(jax.vmap(one, in_axes=(0, None)))(values, dynamic)
    else:
        mapped = jax.jit(lambda v, d: jax.lax.map(lambda x: one(x, d), v, batch_size=batch_size))
        batched = mapped(values, dynamic)
    frames = [jax.tree_util.tree_map(lambda x, i=i: x[i], batched) for i in range(len(grid))]
    for value, frame in zip(grid, frames, strict=True):
        leaves = [
            x for x in jax.tree_util.tree_leaves(frame) if jnp.issubdtype(x.dtype, jnp.inexact)
        ]
        if any(bool(jnp.isnan(x).any()) for x in leaves):
            raise FloatingPointError(f"compute returned NaN at {name}={value}.")
    return frames


class Player:
    """Precomputed frames of a sweep; displays as an HTML/JavaScript player (no kernel needed).

    Attributes:
        name: the swept parameter; ``values``: its grid; ``frames``: ``compute``'s results.

    Taught in: book/ot/01_sinkhorn.ipynb, book/ot/02_sinkhorn_init.ipynb, book/ot/03_progot.ipynb,
    book/ot/05_m3g.ipynb, book/diffusion/01_score_based.ipynb, book/diffusion/02_energy_smc.ipynb,
    book/diffusion/04_projective_composition.ipynb, book/diffusion/03_spell.ipynb,
    book/diffusion/06_rdsb.ipynb, book/optim/01_bloop.ipynb.
    """

    def __init__(
        self, explorer: Explorer, name: str, values: list, frames: list, base: dict, fps: float
    ):
        self.explorer, self.name, self.values, self.frames = explorer, name, values, frames
        self.base, self.fps = base, fps
        self._html: str | None = None

    def __len__(self) -> int:
        return len(self.values)

    def to_html(self) -> str:
        """The player: matplotlib's ``to_jshtml`` with every frame embedded as a PNG."""
        if self._html is None:
            import matplotlib.pyplot as plt
            from matplotlib import animation

            fig, ax = self.explorer.new_figure()
            fixed = self.explorer.fixed

            def draw(i):
                for a in np.atleast_1d(ax):
                    a.clear()
                values = {**self.base, self.name: self.values[i]}
                self.explorer.plot(ax, self.frames[i], **values, **fixed)
                fig.tight_layout()
                return []

            anim = animation.FuncAnimation(
                fig, draw, frames=len(self.values), interval=1000 / self.fps
            )
            body = _offline(anim.to_jshtml(fps=self.fps, default_mode="once"))
            plt.close(fig)
            self._html = f'<div class="otdiff-player" data-parameter="{self.name}">{body}</div>'
        return self._html

    def _repr_html_(self) -> str:
        return self.to_html()


_REMOTE_STYLESHEET = re.compile(r'<link rel="stylesheet"\s+href="https?://[^"]*"\s*/?>\s*')


def _offline(html: str) -> str:
    """Drop matplotlib's link to a CDN stylesheet (Font Awesome, for the player's icons).

    The book's theme and JupyterLab both ship the icon font, and the static book must not
    request anything from the network.
    """
    return _REMOTE_STYLESHEET.sub("", html)


def _clamp(p: Param, value: Any) -> Any:
    # A log slider's 10**max can overshoot ``high`` by a rounding error.
    if p.is_choice:
        return value
    return min(max(value, p.low), p.high)


def _control(p: Param):
    import ipywidgets as widgets

    label = p.label or p.name
    style = {"description_width": "initial"}
    if p.is_choice:
        return widgets.Dropdown(
            options=list(p.options), value=p.value, description=label, style=style
        )
    if p.integer:
        return widgets.IntSlider(
            value=p.value,
            min=int(p.low),
            max=int(p.high),
            description=label,
            continuous_update=False,
            style=style,
        )
    if p.log:
        return widgets.FloatLogSlider(
            value=p.value,
            base=10,
            min=math.log10(p.low),
            max=math.log10(p.high),
            step=(math.log10(p.high) - math.log10(p.low)) / 100,
            description=label,
            continuous_update=False,
            readout_format=".3g",
            style=style,
        )
    return widgets.FloatSlider(
        value=p.value,
        min=p.low,
        max=p.high,
        step=(p.high - p.low) / 100,
        description=label,
        continuous_update=False,
        readout_format=".3g",
        style=style,
    )

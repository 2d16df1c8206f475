"""Bad input, everywhere: every public callable of every public module, fed the bad-input classes.

The callables are found, not listed: the test walks ``otdiff`` and its subpackages and takes each
public module's ``__all__`` (a public module without one fails), so a function added later is
covered automatically. Each parameter is given a kind by its name (a PRNG key, points, a size, a
probability, a positive scalar, ...; :data:`KINDS`), and each kind has its bad values
(:data:`BAD`): NaN and empty arrays, wrong ranks, mismatched dimensions, out-of-range scalars,
zero or negative sizes, strings where numbers go, ``None`` where arrays go. Every other argument
takes a small valid value, by parameter name (:data:`VALID`) or from the short per-callable table
:data:`BASES`. Points on the sphere are declared per callable in :data:`SPHERE_POINTS` (a cloud
``(n, 3)`` or a batch ``(..., 3)``), which sets both their valid value and their bad values. A
callable with a parameter that has no valid value is one visible skip naming that parameter.

Every case must end in a ``ValueError`` or ``TypeError`` whose message names the argument (both
arguments, for a dimension mismatch), or be listed in :data:`DELIBERATE` with the reason. A call
that returns is a failure (silently accepted nonsense, or NaN from a valid-looking call), and so is
any other exception (a crash from inside NumPy, JAX or XLA).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
import pkgutil
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import pytest
from ott.geometry import costs

import otdiff
from otdiff import flows
from otdiff.data import exact_score, gaussian_mixture
from otdiff.diffusion import LinearVP
from otdiff.diffusion.energy import MixtureEnergy

# -- the public callables ---------------------------------------------------------------------------


def public_modules() -> list[str]:
    names = ["otdiff"] + [m.name for m in pkgutil.walk_packages(otdiff.__path__, "otdiff.")]
    return [n for n in names if not any(part.startswith("_") for part in n.split("."))]


@functools.cache
def public_callables() -> dict[str, Callable]:
    """``{qualified name: callable}`` over every public module's ``__all__``, each object once
    (under the module that defines it, else the first that exports it). NamedTuple classes are
    containers and take any field value, as every NamedTuple does: they are left out."""
    found: dict[int, tuple[str, Callable]] = {}
    for module_name in public_modules():
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            if not callable(obj) or (inspect.isclass(obj) and issubclass(obj, tuple | Exception)):
                continue
            qualified = f"{module_name}.{name}"
            home = getattr(obj, "__module__", None) == module_name
            if id(obj) not in found or home:
                found[id(obj)] = (qualified, obj)
    return dict(sorted(found.values()))


def test_every_public_module_declares_its_public_names():
    missing = [
        name for name in public_modules() if not hasattr(importlib.import_module(name), "__all__")
    ]
    assert not missing, f"public modules without __all__: {missing}"


# -- valid values, by parameter name ------------------------------------------------------------------

MIX = gaussian_mixture([[-2.0, 0.0], [2.0, 0.0]], 0.5)
PROCESS = LinearVP()
SCORE = exact_score(MIX, PROCESS)
ENERGY = MixtureEnergy(MIX, PROCESS)
PTS = jnp.stack([jnp.linspace(-2.0, 2.0, 6), jnp.linspace(-1.0, 1.0, 6)], axis=1)


def _key():
    return jax.random.key(0)


def FIELD(x, t):
    """A per-point velocity field ``velocity(x, t)`` (the flows' convention)."""
    return x - 0.5 * t


def _flow_config():
    return flows.FlowConfig(hidden=(8,), embed_dim=4, n_steps=2, batch_size=3)


def _flow_pairs():
    return flows.Pairs(PTS, PTS + 0.5)


#: A valid value for each parameter name (a function: a fresh value per call).
VALID: dict[str, Callable[[], Any]] = {
    "key": _key,
    "process": lambda: PROCESS,
    "score": lambda: SCORE,
    "teacher": lambda: SCORE,
    "reference": lambda: SCORE,
    "energy": lambda: ENERGY,
    "mixture": lambda: MIX,
    "x": lambda: PTS,
    "y": lambda: PTS + 1.0,
    "z": lambda: PTS,
    "x0": lambda: PTS,
    "x1": lambda: PTS + 0.5,
    "x_init": lambda: PTS,
    "x0_hat": lambda: PTS,
    "data": lambda: PTS,
    "protected": lambda: PTS[:3] + 0.1,
    "y_eval": lambda: PTS[:4] + 1.0,
    "pred": lambda: PTS,
    "truth": lambda: PTS + 0.1,
    "centres": lambda: PTS[:2],
    "log_weights": lambda: jnp.zeros(6),
    "n": lambda: 6,
    "d": lambda: 2,
    "dim": lambda: 2,
    "n_steps": lambda: 2,
    "n_samples": lambda: 4,
    "n_particles": lambda: 6,
    "n_batches": lambda: 2,
    "batch_size": lambda: 3,
    "epsilon": lambda: 0.5,
    "radius": lambda: 0.5,
    "beta": lambda: 2.0,
    "inverse_temperature": lambda: 2.0,
    "t": lambda: 0.5,
    "t_next": lambda: 0.25,
    "velocity": lambda: FIELD,
    "denoised": lambda: PTS * 0.5,
    "name": lambda: "x",
    "kind": lambda: "lin",
}

#: Per-callable valid arguments where the names above do not say enough (kept short).
BASES: dict[str, dict[str, Callable[[], Any]]] = {
    "otdiff.smc.multinomial": {"weights": lambda: jnp.full(6, 1 / 6)},
    "otdiff.smc.stratified": {"weights": lambda: jnp.full(6, 1 / 6)},
    "otdiff.smc.systematic": {"weights": lambda: jnp.full(6, 1 / 6)},
    "otdiff.smc.resample": {"particles": lambda: PTS},
    "otdiff.smc.maybe_resample": {"particles": lambda: PTS},
    "otdiff.data.mixtures.gaussian_mixture": {"means": lambda: PTS[:2]},
    "otdiff.nn.TimeEmbedding": {"embed_dim": lambda: 8},
    "otdiff.nn.TimeMLP": {"in_size": lambda: 2, "out_size": lambda: 2},
    "otdiff.nn.SphereMLP": {"in_size": lambda: 3, "out_size": lambda: 3},
    "otdiff.train.make_optimizer": {"learning_rate": lambda: 1e-3},
    "otdiff.metrics.memorised_fraction": {
        "train": lambda: PTS + 0.1,
        "held_out": lambda: PTS - 0.1,
    },
    "otdiff.ot.sinkhorn.relative_epsilon": {"fraction": lambda: 0.1},
    "otdiff.ot.sinkhorn.entropic_map": {"g": lambda: jnp.zeros(6)},
    "otdiff.ot.progot.displace": {"g": lambda: jnp.zeros(6), "alpha": lambda: 0.5},
    "otdiff.ot.monge.monge_map": {"g": lambda: jnp.zeros(6), "cost_fn": costs.SqEuclidean},
    "otdiff.ot.m3g.matching_gap": {"embeddings": lambda: jnp.stack([PTS, PTS + 0.1])},
    "otdiff.ot.m3g.m3g_loss": {"embeddings": lambda: jnp.stack([PTS, PTS + 0.1])},
    "otdiff.ot.m3g.cross_view_retrieval": {"embeddings": lambda: jnp.stack([PTS, PTS + 0.1])},
    "otdiff.ot.sinkhorn.sweep_epsilon": {"epsilons": lambda: jnp.array([0.5, 1.0])},
    "otdiff.manifolds.walk.time_grid": {"horizon": lambda: 1.0},
    "otdiff.manifolds.heat.n_terms_for": {"t_min": lambda: 0.1},
    "otdiff.diffusion.energy.product_smc": {"energies": lambda: [ENERGY, ENERGY]},
    "otdiff.diffusion.spell.sample": {"protected": lambda: PTS[:3] + 0.1},
    "otdiff.diffusion.samplers.reverse_kernel": {"score": lambda: PTS * 0.1},
    "otdiff.flows.interpolant.denoiser_from_velocity": {"velocity": lambda: PTS * 0.5},
    "otdiff.flows.interpolant.high_pass": {
        "x": lambda: jnp.linspace(-1.0, 1.0, 24).reshape(6, 4),
        "side": lambda: 2,
    },
    "otdiff.flows.interpolant.sample_times": {"shape": lambda: (4,)},
    "otdiff.flows.reflow.make_flow": {"cfg": _flow_config},
    "otdiff.flows.reflow.train_flow": {
        "model": lambda: flows.make_flow(_key(), 2, _flow_config()),
        "cfg": _flow_config,
    },
    "otdiff.flows.reflow.training_pairs": {
        "pairs": lambda: flows.ReflowPairs(_flow_pairs(), _flow_pairs(), 1, 1),
        "cfg": _flow_config,
    },
    "otdiff.flows.reflow.project_pairs": {"pairs": _flow_pairs},
    "otdiff.flows.reflow.mix_pairs": {
        "forward": _flow_pairs,
        "backward": _flow_pairs,
        "forward_fraction": lambda: 0.5,
    },
    "otdiff.flows.reflow.cached_flow": {
        "seed": lambda: 0,
        "cfg": _flow_config,
        "data_inputs": lambda: "PTS",
        "make_data": lambda: lambda: PTS,
    },
    "otdiff.flows.reflow.cached_pairs": {
        "seed": lambda: 0,
        "teacher_inputs": lambda: "FIELD",
        "n_pairs": lambda: 4,
    },
    "otdiff.metrics.total_variation": {
        "p": lambda: jnp.array([0.5, 0.5]),
        "q": lambda: jnp.array([0.25, 0.75]),
    },
}

# -- bad values, by kind ----------------------------------------------------------------------------

POINTS = {
    "x", "y", "z", "x0", "x1", "x_init", "x0_hat", "data", "protected", "y_eval", "pred",
    "truth", "centres", "means", "denoised",
}  # fmt: skip
SIZES = {"n", "d", "dim", "n_steps", "n_samples", "n_particles", "n_batches", "batch_size"}
UNIT_OPEN = {"t_min"}  # in (0, 1)
THRESHOLDS = {"ess_threshold"}  # in (0, 1]
POSITIVE = {"epsilon", "beta", "inverse_temperature", "learning_rate", "std", "fraction"}
NONNEGATIVE = {"radius", "strength", "eta", "t_stop"}

NAN_POINTS = PTS.at[1, 0].set(jnp.nan)
PTS_3D = jnp.ones((6, 3))  # the right number of points in the wrong dimension

#: Points of the unit sphere S^2 (6, 3) and of the circle S^1 (6, 2) (a sphere of another dimension).
_LON = jnp.linspace(0.0, 3.0, 6)
SPHERE = jnp.stack([jnp.cos(_LON), jnp.sin(_LON), jnp.full(6, 0.5)], axis=1) / jnp.sqrt(1.25)
CIRCLE = jnp.stack([jnp.cos(_LON), jnp.sin(_LON)], axis=1)

#: Point parameters that lie on the sphere S^2, per callable, by the shape they take: ``"cloud"``
#: (``(n, 3)``, n >= 1) or ``"batch"`` (``(..., 3)``: a single point, a stack of batches and an
#: empty batch are all valid, as for any pure map on points). Their valid value is :data:`SPHERE`
#: and their dimension mismatch is :data:`CIRCLE`.
SPHERE_POINTS: dict[str, dict[str, str]] = {
    "otdiff.manifolds.heat.heat_kernel": {"x": "batch", "x0": "batch"},
    "otdiff.manifolds.heat.log_heat_kernel": {"x": "batch", "x0": "batch"},
    "otdiff.manifolds.heat.heat_kernel_score": {"x": "batch", "x0": "batch"},
    "otdiff.manifolds.heat.sample_heat_kernel": {"x0": "cloud"},
    "otdiff.manifolds.viz.orthographic_project": {"x": "cloud"},
    "otdiff.data.earth.xyz_to_lonlat": {"x": "batch"},
    "otdiff.data.earth.is_land": {"x": "batch"},
    "otdiff.metrics.spherical_mmd2": {"x": "cloud", "y": "cloud"},
}


def sphere_kind(qualified: str, name: str) -> str | None:
    return SPHERE_POINTS.get(qualified, {}).get(name)


_FLOW_TIMES = {"t": "time", "t_next": "time"}
_TOLERANCES = {"rtol": "positive", "atol": "positive"}

#: Kinds given per callable where a parameter's name does not say it (or says it for other
#: callables only): ``"points"`` (as :data:`POINTS`), ``"size"``, ``"positive"``, ``"unit"`` (in
#: [0, 1]), ``"positive_vector"`` (a 1-D array of numbers > 0), ``"potential"`` (a dual potential, one value
#: per point of ``y``), ``"time"`` (a time of the flows, in [0, 1]; a scalar or one per point), ``"field"`` (a
#: per-point function ``f(x, t)``), ``"pairs"`` (a :class:`otdiff.flows.Pairs`), ``"reflow_pairs"``
#: (a :class:`otdiff.flows.ReflowPairs`) and ``"flow_config"`` (a :class:`otdiff.flows.FlowConfig`).
KINDS: dict[str, dict[str, str]] = {
    "otdiff.nn.TimeEmbedding": {"embed_dim": "size"},
    "otdiff.nn.TimeMLP": {"in_size": "size", "embed_dim": "size"},
    "otdiff.nn.SphereMLP": {"in_size": "size", "out_size": "size"},
    "otdiff.metrics.memorised_fraction": {"train": "points", "held_out": "points"},
    "otdiff.ot.sinkhorn.sweep_epsilon": {"epsilons": "positive_vector"},
    "otdiff.manifolds.walk.time_grid": {"horizon": "positive"},
    "otdiff.ot.sinkhorn.entropic_map": {"g": "potential"},
    "otdiff.ot.progot.displace": {"g": "potential", "alpha": "unit"},
    "otdiff.ot.monge.monge_map": {"g": "potential"},
    "otdiff.manifolds.heat.n_terms_for": {"t_min": "positive"},  # heat times: any t > 0
    "otdiff.diffusion.samplers.reverse_kernel": {"score": "points"},
    "otdiff.flows.interpolant.interpolate": {"t": "time"},
    "otdiff.flows.interpolant.velocity_from_denoiser": {"t": "positive_time"},
    "otdiff.flows.interpolant.denoiser_from_velocity": {"velocity": "points", "t": "time"},
    "otdiff.flows.interpolant.sample_times": {"cosh_scale": "positive"},
    "otdiff.flows.interpolant.time_density": {"cosh_scale": "positive", "t": "time"},
    "otdiff.flows.interpolant.FlowLoss": {"cosh_scale": "positive"},
    "otdiff.flows.interpolant.high_pass": {"side": "size"},
    "otdiff.flows.samplers.euler_step": {**_FLOW_TIMES, "velocity": "field"},
    "otdiff.flows.samplers.heun_step": {**_FLOW_TIMES, "velocity": "field"},
    "otdiff.flows.samplers.flow_time_grid": {"rho": "positive"},
    "otdiff.flows.samplers.sample_flow": {"rho": "positive", "velocity": "field"},
    "otdiff.flows.samplers.path_straightness": {"velocity": "field"},
    "otdiff.flows.samplers.solve_flow": {
        **_TOLERANCES, "t_start": "time", "t_end": "time", "velocity": "field",
    },
    "otdiff.flows.reflow.backward_pairs": {**_TOLERANCES, "velocity": "field"},
    "otdiff.flows.reflow.forward_pairs": {**_TOLERANCES, "velocity": "field"},
    "otdiff.flows.reflow.cached_pairs": {**_TOLERANCES, "n_pairs": "size", "velocity": "field"},
    "otdiff.flows.reflow.mix_pairs": {
        "forward": "pairs", "backward": "pairs", "forward_fraction": "unit",
    },
    "otdiff.flows.reflow.project_pairs": {"pairs": "pairs"},
    "otdiff.flows.reflow.training_pairs": {"pairs": "reflow_pairs", "cfg": "flow_config"},
    "otdiff.flows.reflow.make_flow": {"cfg": "flow_config"},
    "otdiff.flows.reflow.train_flow": {"cfg": "flow_config"},
    "otdiff.flows.reflow.cached_flow": {"cfg": "flow_config"},
}  # fmt: skip


def kind_of(qualified: str, name: str) -> str | None:
    """The kind :data:`KINDS` gives ``name`` in ``qualified`` (``None``: its name decides)."""
    return KINDS.get(qualified, {}).get(name)


def is_points(qualified: str, name: str) -> bool:
    return name in POINTS or kind_of(qualified, name) == "points"


def bad_values(
    name: str, sphere: str | None = None, kind: str | None = None
) -> list[tuple[str, Any]]:
    """``(label, value)`` pairs of bad values for the parameter ``name`` (none if not fuzzed),
    for sphere points of the kind ``sphere`` (:data:`SPHERE_POINTS`), or for the kind ``kind``
    (:data:`KINDS`)."""
    if kind == "time":
        return [("negative", -0.5), ("above", 1.5), ("NaN", math.nan), ("str", "0.5")]
    if kind == "positive_time":
        return [("zero", 0.0), ("above", 1.5), ("NaN", math.nan), ("str", "0.5")]
    if kind == "unit":
        return [("negative", -0.5), ("above", 1.5), ("NaN", math.nan), ("str", "0.5")]
    if kind == "positive_vector":
        return [
            ("empty", jnp.zeros(0)),
            ("negative", jnp.array([0.5, -1.0])),
            ("NaN", jnp.array([0.5, math.nan])),
            ("rank-2", jnp.ones((2, 2))),
            ("None", None),
        ]
    if kind == "potential":  # one value per point of y (6)
        return [
            ("NaN", jnp.zeros(6).at[2].set(jnp.nan)),
            ("wrong-length", jnp.zeros(5)),
            ("rank-2", jnp.zeros((6, 1))),
            ("None", None),
        ]
    if kind == "field":
        return [("None", None), ("array", PTS)]
    if kind in ("pairs", "reflow_pairs", "flow_config"):
        return [("None", None), ("array", PTS)]
    name = {"points": "x", "size": "n", "positive": "epsilon"}.get(kind, name)
    if sphere is not None:
        cases = [
            ("NaN", SPHERE.at[1, 0].set(jnp.nan)),
            ("wrong-dim", CIRCLE),
            ("None", None),
            ("str", "points"),
        ]
        if sphere == "cloud":
            cases += [("empty", jnp.zeros((0, 3))), ("rank-1", SPHERE[0]), ("rank-3", SPHERE[None])]
        return cases
    if name == "key":
        return [("None", None), ("str", "key"), ("int", 3)]
    if name in POINTS:
        return [
            ("NaN", NAN_POINTS),
            ("empty", jnp.zeros((0, 2))),
            ("rank-1", PTS[:, 0]),
            ("rank-3", PTS[None]),
            ("None", None),
            ("str", "points"),
        ]
    if name == "particles":  # one row per log-weight (6)
        return [("wrong-length", PTS[:5]), ("None", None)]
    if name == "log_weights":
        return [
            ("NaN", jnp.zeros(6).at[2].set(jnp.nan)),
            ("empty", jnp.zeros(0)),
            ("rank-2", jnp.zeros((6, 1))),
            ("None", None),
        ]
    if name in SIZES:
        return [("zero", 0), ("negative", -1), ("float", 2.5), ("str", "3")]
    if name in UNIT_OPEN:
        return [("zero", 0.0), ("one", 1.0), ("above", 1.5), ("NaN", math.nan), ("str", "0.1")]
    if name in THRESHOLDS:
        return [("zero", 0.0), ("above", 2.0), ("NaN", math.nan), ("str", "0.5")]
    if name in POSITIVE:
        return [
            ("zero", 0.0),
            ("negative", -1.0),
            ("NaN", math.nan),
            ("inf", math.inf),
            ("str", "1"),
        ]
    if name in NONNEGATIVE:
        return [("negative", -1.0), ("NaN", math.nan), ("str", "1")]
    return []


# -- deliberate results -------------------------------------------------------------------------------

#: Callables, ``callable:parameter`` pairs or ``callable:parameter=case`` whose bad inputs are
#: not refused, and why.
DELIBERATE: dict[str, str] = {
    **{
        f"otdiff.data.transport.known_map:x={label}": "a pure map on points of shape (..., d): "
        "a single point, a stack of batches and an empty batch are all valid"
        for label in ("rank-1", "rank-3", "empty")
    },
    "otdiff.ot.m3g.m3g_loss:epsilon": "the unchecked training loss, traced inside a jitted "
    "training step (as its docstring says); matching_gap is the checked version",
    "otdiff.ot.m3g.circular_variance:z=rank-3": "groups of k vectors in any batch shape "
    "(..., k, d): a stack of batches is valid",
}

# -- the cases -----------------------------------------------------------------------------------------


def _valid(qualified: str, param: inspect.Parameter) -> Any:
    if sphere_kind(qualified, param.name):
        return SPHERE
    table = BASES.get(qualified, {})
    if param.name in table:
        return table[param.name]()
    if param.name in VALID:
        return VALID[param.name]()
    return param.default


def _base(qualified: str, sig: inspect.Signature) -> dict[str, Any] | None:
    """Valid arguments for every parameter, or ``None`` if one has no known valid value."""
    args = {}
    for p in sig.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        value = _valid(qualified, p)
        if value is inspect.Parameter.empty:
            return None
        args[p.name] = value
    return args


def _cases() -> list:
    cases = []
    for qualified, fn in public_callables().items():
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):
            continue
        mine: list = []
        points = [p.name for p in sig.parameters.values() if is_points(qualified, p.name)]
        clouds = [n for n in points if sphere_kind(qualified, n) in (None, "cloud")]
        for other in clouds[1:]:  # a dimension mismatch must name both arguments
            label = f"dim-vs-{clouds[0]}"
            value = CIRCLE if sphere_kind(qualified, other) else PTS_3D
            mine.append(
                pytest.param(qualified, other, label, value, id=f"{qualified}:{other}={label}")
            )
        for p in sig.parameters.values():
            kind = kind_of(qualified, p.name)
            for label, value in bad_values(p.name, sphere_kind(qualified, p.name), kind):
                if value is None and p.default is None:
                    continue  # None is the documented default
                case_id = f"{qualified}:{p.name}={label}"
                mine.append(pytest.param(qualified, p.name, label, value, id=case_id))
        missing = [
            p.name
            for p in sig.parameters.values()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
            and _valid(qualified, p) is inspect.Parameter.empty
        ]
        if mine and missing:  # one visible skip per callable, not one per case
            reason = f"no valid base value for {', '.join(missing)}"
            mine = [
                pytest.param(
                    qualified,
                    "",
                    "",
                    None,
                    id=f"{qualified}",
                    marks=pytest.mark.skip(reason=reason),
                )
            ]
        cases += mine
    return cases


def _call(qualified: str, param: str, value: Any):
    fn = public_callables()[qualified]
    sig = inspect.signature(fn)
    base = _base(qualified, sig)
    if base is None:
        pytest.skip("no valid base arguments")
    base[param] = value
    bound = sig.bind(**base)
    return fn(*bound.args, **bound.kwargs)


def _has_nan(result: Any) -> bool:
    leaves = jax.tree_util.tree_leaves(result)
    return any(
        isinstance(leaf, jax.Array | np.ndarray)
        and jnp.issubdtype(leaf.dtype, jnp.inexact)
        and bool(np.any(np.isnan(np.asarray(leaf))))
        for leaf in leaves
    )


@pytest.mark.parametrize(("qualified", "param", "label", "value"), _cases())
def test_bad_input_is_refused_with_a_message_naming_the_argument(
    qualified, param, label, value, tmp_path, monkeypatch
):
    # a callable that caches what it builds (a refused value builds nothing) writes here
    monkeypatch.setenv("OTDIFF_CACHE_DIR", str(tmp_path))
    reason = (
        DELIBERATE.get(f"{qualified}:{param}={label}")
        or DELIBERATE.get(f"{qualified}:{param}")
        or DELIBERATE.get(qualified)
    )
    if reason:
        pytest.skip(reason)
    try:
        result = _call(qualified, param, value)
    except (ValueError, TypeError) as err:
        message = str(err)
        names = [param] + ([label.removeprefix("dim-vs-")] if label.startswith("dim-vs-") else [])
        for name in names:
            assert re.search(rf"\b{re.escape(name)}\b", message), (
                f"{qualified}({param}={label}) raised {type(err).__name__} without naming "
                f"{name!r}: {message[:300]}"
            )
        return
    except Exception as err:  # a crash from inside NumPy, JAX or XLA
        pytest.fail(f"{qualified}({param}={label}) crashed: {type(err).__name__}: {str(err)[:300]}")
    finally:
        plt.close("all")
    nan = " (with NaN in the result)" if _has_nan(result) else ""
    pytest.fail(f"{qualified}({param}={label}) returned{nan} instead of refusing the value")

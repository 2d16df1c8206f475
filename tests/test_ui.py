"""Explorers: callbacks at the sliders' extremes, no recompilation, sweeps equal to pointwise runs."""

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import pytest

from otdiff import ui


def compute(scale, shift, kind):
    x = jnp.linspace(0.0, 1.0, 32)
    y = jnp.sin(scale * x) if kind == "sin" else jnp.cos(scale * x)
    return {"x": x, "y": y + shift}


def plot(ax, result, scale, shift, kind):
    ax.plot(result["x"], result["y"])
    ax.set_title(f"{kind} {scale:.3g} {shift:.3g}")


def make():
    return ui.Explorer(
        compute,
        plot,
        [
            ui.slider("scale", 0.1, 10.0, value=1.0, log=True),
            ui.slider("shift", -1.0, 1.0),
            ui.choice("kind", ["sin", "cos"]),
        ],
    )


def test_callback_at_every_extreme_compiles_once_per_static_value():
    ex = make()
    for values in ex.extremes():
        fig = ex.callback(**values)
        assert fig.axes and fig.axes[0].lines
        plt.close(fig)
    # Float sliders are dynamic: one program per option of the static choice, no more.
    assert ex.compilations() == 2
    for scale in np.geomspace(0.1, 10.0, 7):
        plt.close(ex.callback(scale=scale, shift=-scale / 10))
    assert ex.compilations() == 2


def test_sweep_matches_pointwise_evaluation_and_renders_a_player():
    ex = make()
    player = ex.sweep("scale", n_frames=4, shift=0.5)
    assert len(player) == 4
    np.testing.assert_allclose(player.values, np.geomspace(0.1, 10.0, 4))
    for value, frame in zip(player.values, player.frames, strict=True):
        expected = ex.evaluate(scale=value, shift=0.5)
        np.testing.assert_allclose(frame["y"], expected["y"], rtol=1e-6, atol=1e-6)
    html = player._repr_html_()
    assert 'class="otdiff-player"' in html and "data:image/png;base64" in html
    assert html.count("data:image/png;base64") >= 4


def test_sweep_over_a_static_choice():
    player = make().sweep("kind")
    assert player.values == ["sin", "cos"]


def test_widget_has_one_control_per_parameter():
    import ipywidgets as widgets

    box = make().widget()
    controls = box.children[0].children
    assert [c.description for c in controls] == ["scale", "shift", "kind"]
    assert isinstance(controls[0], widgets.FloatLogSlider)
    assert isinstance(controls[2], widgets.Dropdown)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"scale": 20.0}, ValueError, r"scale must lie in \[0.1, 10\]"),
        ({"shift": float("nan")}, ValueError, "shift must lie in"),
        ({"kind": "tan"}, ValueError, r"kind must be one of \['sin', 'cos'\]"),
        ({"scale": "big"}, TypeError, "scale must be a number"),
        ({"speed": 1.0}, ValueError, "unknown parameters"),
    ],
)
def test_bad_values_are_named(kwargs, error, message):
    with pytest.raises(error, match=message):
        make().callback(**kwargs)


def test_bad_construction():
    with pytest.raises(ValueError, match="need finite low < high"):
        ui.slider("eps", 1.0, 0.1)
    with pytest.raises(ValueError, match="log slider needs low > 0"):
        ui.slider("eps", 0.0, 1.0, log=True)
    with pytest.raises(ValueError, match="options must not be empty"):
        ui.choice("kind", [])
    with pytest.raises(TypeError, match="params must be a non-empty sequence"):
        ui.Explorer(compute, plot, [])
    with pytest.raises(ValueError, match="n_frames must be an integer in"):
        make().sweep("scale", n_frames=1)
    with pytest.raises(ValueError, match="name must be one of"):
        make().sweep("speed")


def test_nan_results_are_reported():
    ex = ui.Explorer(
        lambda eps: jnp.log(eps - 1.0), lambda ax, r, eps: None, [ui.slider("eps", 0.1, 2.0)]
    )
    with pytest.raises(FloatingPointError, match="NaN at"):
        ex.evaluate(eps=0.5)
    with pytest.raises(FloatingPointError, match="NaN at eps="):
        ex.sweep("eps", n_frames=3)


def test_player_requests_nothing_from_the_network():
    html = make().sweep("shift", n_frames=2).to_html()
    assert "http://" not in html and "https://" not in html


def test_sweep_in_batches_equals_the_vmapped_sweep():
    ex = make()
    full = ex.sweep("scale", n_frames=5)
    for batch_size in (1, 2):
        batched = ex.sweep("scale", n_frames=5, batch_size=batch_size)
        for f, g in zip(full.frames, batched.frames, strict=True):
            np.testing.assert_allclose(f["y"], g["y"], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"batch_size must be an integer in \[1, inf\]"):
        ex.sweep("scale", batch_size=0)

"""otdiff.diffusion.conditional: the conditional noise predictors and their DSM loss.

The local network's output for a slot depends on that slot alone (checked with its Jacobian),
and the cell-local canvas network's output on a cell on that cell's pixels and condition alone;
the loss is the DSM loss of the unconditional model when the condition is ignored; a short
training run on the slots family lowers the loss; bad input raises clear errors.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from otdiff import config, train
from otdiff.data import canvas, slots
from otdiff.diffusion import LinearVP, dsm_loss
from otdiff.diffusion.composition import compose
from otdiff.diffusion.conditional import (
    ConditionalConvNet,
    ConditionalMLP,
    ConditionalScore,
    LocalCellNet,
    LocalSlotNet,
    compose_conditions,
    conditional_dsm_loss,
)

PROCESS = LinearVP()


def test_local_net_is_local_and_weight_shared():
    net = LocalSlotNet(4, hidden=(16,), embed_dim=8, key=jax.random.key(config.seed(0)))
    x, c = jnp.array([0.3, -1.0, 2.0, 0.1]), jnp.array([0.0, 1.0, 0.0, 1.0])
    jac = jax.jacfwd(net)(x, 0.4, c)
    np.testing.assert_allclose(jac[~np.eye(4, dtype=bool)], 0.0, atol=1e-7)
    # the same function in every slot: swapping two slots (and their conditions) swaps the outputs
    perm = jnp.array([1, 0, 2, 3])
    np.testing.assert_allclose(net(x[perm], 0.4, c[perm]), net(x, 0.4, c)[perm], rtol=1e-6)
    mlp = ConditionalMLP(4, hidden=(16,), embed_dim=8, key=jax.random.key(config.seed(1)))
    assert np.abs(np.asarray(jax.jacfwd(mlp)(x, 0.4, c))[~np.eye(4, dtype=bool)]).max() > 1e-4


def test_loss_is_dsm_with_the_condition_passed_through():
    mlp = ConditionalMLP(3, hidden=(16,), embed_dim=8, key=jax.random.key(config.seed(2)))
    x = jax.random.normal(jax.random.key(config.seed(3)), (64, 3))
    c = jnp.zeros((64, 3))
    key = jax.random.key(config.seed(4))
    ref = dsm_loss(lambda x, t: mlp(x, t, jnp.zeros(3)), key, x, PROCESS)
    np.testing.assert_allclose(conditional_dsm_loss(mlp, key, (x, c), PROCESS), ref, rtol=1e-5)


def test_short_training_lowers_the_loss_and_scores_have_the_right_shape():
    fam = slots(3)
    data = fam.training_data(jax.random.key(config.seed(5)), 2048)
    net = LocalSlotNet(3, hidden=(32,), embed_dim=8, key=jax.random.key(config.seed(6)))
    loss = jax.tree_util.Partial(conditional_dsm_loss, process=PROCESS)
    res = train.fit(jax.random.key(config.seed(7)), net, data, loss, n_steps=300,
                    batch_size=128, chunk_size=300)  # fmt: skip
    assert float(np.mean(res.losses[-50:])) < 0.8 * float(np.mean(res.losses[:20]))
    score = ConditionalScore(res.ema_model, PROCESS, jnp.array([1.0, 0.0, 0.0]))
    assert score(jnp.ones(3), 0.5).shape == (3,)


def test_conv_net_shapes():
    cv = canvas(6, 2)
    net = ConditionalConvNet(side=6, channels=8, n_blocks=1, groups=4, embed_dim=8,
                             key=jax.random.key(config.seed(8)))  # fmt: skip
    out = net(jnp.zeros(36), 0.3, cv.condition((1,)))
    assert out.shape == (36,)


def test_cell_net_is_local_to_each_cell_and_weight_shared():
    cv = canvas(6, 3)  # 2x2 cells
    net = LocalCellNet(side=6, cell=2, hidden=(16,), embed_dim=8, data_std=0.12,
                       process=PROCESS, key=jax.random.key(config.seed(9)))  # fmt: skip
    x = jax.random.normal(jax.random.key(config.seed(10)), (36,))
    c = cv.condition((1, 5))
    same_cell = np.asarray(cv.cell_masks().T @ cv.cell_masks()) > 0  # (pixel, pixel)
    for jac in (jax.jacfwd(net, argnums=0)(x, 0.4, c), jax.jacfwd(net, argnums=2)(x, 0.4, c)):
        jac = np.asarray(jac)
        np.testing.assert_allclose(jac[~same_cell], 0.0, atol=1e-7)
        assert np.abs(jac[same_cell]).max() > 1e-3
    # one function for every cell, read off the canvas through the cell masks
    masks = np.asarray(cv.cell_masks(), bool)
    scaled = x * net.scaling(0.4)
    for m in range(cv.n_cells):
        own = net.net(jnp.concatenate([scaled[masks[m]], c[masks[m]]]), 0.4)
        np.testing.assert_allclose(net(x, 0.4, c)[masks[m]], own, rtol=1e-5, atol=1e-6)
    # the whole-canvas convolutional network reads across cells
    conv = ConditionalConvNet(side=6, channels=8, n_blocks=1, groups=4, embed_dim=8,
                              key=jax.random.key(config.seed(8)))  # fmt: skip
    assert np.abs(np.asarray(jax.jacfwd(conv)(x, 0.4, c))[~same_cell]).max() > 1e-4
    with pytest.raises(ValueError, match="cell must divide"):
        LocalCellNet(side=6, cell=4, key=jax.random.key(0))
    with pytest.raises(ValueError, match="vmap over a batch"):
        net(jnp.zeros((2, 36)), 0.4, c)


def test_compose_conditions_is_the_background_operator_on_conditional_scores():
    cv = canvas(6, 2)
    net = ConditionalConvNet(side=6, channels=8, n_blocks=1, groups=4, embed_dim=8,
                             key=jax.random.key(config.seed(10)))  # fmt: skip
    x = jax.random.normal(jax.random.key(config.seed(11)), (36,))
    cells = [cv.condition((i,)) for i in (0, 3)]
    empty, null = cv.condition(()), cv.null_condition()
    w = jnp.array([0.7, 1.3])
    for t in (0.05, 0.5, 1.0):
        s = [-net(x, t, c) / PROCESS.sigma(t) for c in cells]
        for bg in (empty, null):
            b = -net(x, t, bg) / PROCESS.sigma(t)
            ref = b + w[0] * (s[0] - b) + w[1] * (s[1] - b)
            got = compose_conditions(net, PROCESS, cells, background=bg, weights=w)(x, t)
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
        product = compose_conditions(net, PROCESS, cells, background=None)(x, t)
        np.testing.assert_allclose(product, s[0] + s[1], rtol=1e-5, atol=1e-5)
    # the same object as composing the ConditionalScores by hand
    by_hand = compose([ConditionalScore(net, PROCESS, c) for c in cells],
                      background=ConditionalScore(net, PROCESS, empty))  # fmt: skip
    np.testing.assert_allclose(
        compose_conditions(net, PROCESS, jnp.stack(cells), background=empty)(x, 0.3),
        by_hand(x, 0.3), rtol=1e-6,
    )  # fmt: skip


def test_compose_conditions_bad_input():
    cv = canvas(6, 2)
    net = ConditionalConvNet(side=6, channels=8, n_blocks=1, groups=4, embed_dim=8,
                             key=jax.random.key(0))  # fmt: skip
    cells = [cv.condition((0,)), cv.condition((1,))]
    with pytest.raises(TypeError, match="model must be a callable"):
        compose_conditions("net", PROCESS, cells, background=None)
    with pytest.raises(ValueError, match="at least one condition"):
        compose_conditions(net, PROCESS, [], background=None)
    with pytest.raises(ValueError, match="one shape"):
        compose_conditions(net, PROCESS, cells, background=jnp.zeros(4))
    with pytest.raises(ValueError, match="one shape"):
        compose_conditions(net, PROCESS, [cells[0], jnp.zeros(5)], background=None)
    with pytest.raises(ValueError, match="weights"):
        compose_conditions(net, PROCESS, cells, background=None, weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="weights"):
        compose_conditions(net, PROCESS, cells, background=None, weights=[1.0])


def test_bad_input():
    net = LocalSlotNet(3, hidden=(8,), embed_dim=4, key=jax.random.key(0))
    with pytest.raises(ValueError, match="vmap over a batch"):
        net(jnp.zeros((2, 3)), 0.1, jnp.zeros(3))
    with pytest.raises(ValueError, match="condition of shape"):
        net(jnp.zeros(3), 0.1, jnp.zeros(4))
    with pytest.raises(ValueError, match="process is required"):
        ConditionalMLP(3, key=jax.random.key(0), data_std=1.0)
    with pytest.raises(ValueError, match="batch must be"):
        conditional_dsm_loss(net, jax.random.key(0), (jnp.zeros((4, 3)), jnp.zeros((5, 3))),
                             PROCESS)  # fmt: skip
    with pytest.raises(ValueError, match="weighting"):
        conditional_dsm_loss(net, jax.random.key(0), (jnp.zeros((4, 3)), jnp.zeros((4, 3))),
                             PROCESS, weighting="bogus")  # fmt: skip

"""otdiff.diffusion.conditional: the conditional noise predictors and their DSM loss.

The local network's output for a slot depends on that slot alone (checked with its Jacobian);
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
from otdiff.diffusion.conditional import (
    ConditionalConvNet,
    ConditionalMLP,
    ConditionalScore,
    LocalSlotNet,
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

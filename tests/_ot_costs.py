"""A user-defined translation-invariant cost for the optimal transport tests."""

import equinox as eqx
import jax
import jax.numpy as jnp
from ott.geometry import costs


@jax.tree_util.register_pytree_node_class
class Mahalanobis(costs.TICost):
    """h(z) = z^T M z / 2 with a symmetric positive definite M: a parameter (a pytree leaf)."""

    def __init__(self, matrix):
        super().__init__()
        self.matrix = matrix

    def h(self, z):
        return 0.5 * z @ self.matrix @ z

    def h_legendre(self, z):
        return 0.5 * z @ jnp.linalg.solve(self.matrix, z)

    def tree_flatten(self):
        return (self.matrix,), None


@jax.tree_util.register_pytree_node_class
class NetworkCost(costs.TICost):
    """h(z) = |z|^2 + net(z)^2 for an Equinox network: a cost whose parameters are a module.

    Its children are the network's arrays; the rest of the network (the activation function,
    the sizes) is aux data, because ott-jax traces every child.
    """

    def __init__(self, net):
        super().__init__()
        self.net = net

    def h(self, z):
        return jnp.sum(z**2) + jnp.sum(self.net(z)) ** 2

    def tree_flatten(self):
        arrays, rest = eqx.partition(self.net, eqx.is_array)
        return (arrays,), rest

    @classmethod
    def tree_unflatten(cls, rest, children):
        return cls(eqx.combine(children[0], rest))

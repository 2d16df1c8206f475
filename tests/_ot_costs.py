"""A user-defined translation-invariant cost for the optimal transport tests."""

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

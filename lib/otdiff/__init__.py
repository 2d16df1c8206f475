"""otdiff: the library of the interactive textbook on optimal transport and diffusion models.

Modules, by layer (a layer imports only the layers above it in this list):

1. foundation: ``otdiff._checks`` (input checks and jit guards), :mod:`otdiff.config` (scale
   presets, the device report, notebook set-up);
2. shared machinery: :mod:`otdiff.nn` (time-conditioned networks), :mod:`otdiff.train` (train
   state, pure step from any loss, chunked ``fit`` with EMA and resume),
   :mod:`otdiff.checkpoint` (atomic, pickle-free files), :mod:`otdiff.data` (densities with exact
   noised log-densities, the digits, world cities and land on the globe), :mod:`otdiff.metrics`,
   :mod:`otdiff.smc` (weights, resamplers, Feynman-Kac kernels);
3. the cores: :mod:`otdiff.ot` (entropic optimal transport on ott-jax) and
   :mod:`otdiff.diffusion` (forward processes, losses, the sampler driver and its step kernels,
   likelihoods, networks);
4. the papers, beside their core: :mod:`otdiff.diffusion.composition`,
   :mod:`otdiff.diffusion.energy`, :mod:`otdiff.diffusion.spell`, the ProgOT and initializer
   modules of :mod:`otdiff.ot`; in their own subpackages, :mod:`otdiff.optim` (Bloop) and
   :mod:`otdiff.manifolds` (diffusion on manifolds, Riemannian diffusion Schrödinger bridges);
5. the reader's tools: :mod:`otdiff.zoo` (trained models shared between chapters),
   :mod:`otdiff.ui` (explorers), :mod:`otdiff.viz` (plots).

House style (after optax, blackjax, ott-jax and equinox): pure functions over NamedTuple states,
the random key first, safe under ``jit``/``vmap``; inputs checked outside jitted code with errors
that name the argument and the accepted range.
"""

__all__ = ["__version__"]  # the API lives in the submodules, each with its own ``__all__``

__version__ = "0.1.0"

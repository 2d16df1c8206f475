"""otdiff: the library of the interactive textbook on optimal transport and diffusion models.

Subpackages mirror the book's chapters:

- :mod:`otdiff.config`: scale presets (``demo``/``full``), the device report, notebook set-up.
- :mod:`otdiff.ui`: explorers, live widgets and sweep players from one pure function.
- :mod:`otdiff.viz`: the plots chapters share.
- :mod:`otdiff.ot`: entropic optimal transport on top of ott-jax.
- :mod:`otdiff.optim`: gradient surgery (Bloop and its baselines) as optax transformations.
- :mod:`otdiff.diffusion`: the VP SDE, denoising score matching, samplers, likelihoods, networks
  and training.
- :mod:`otdiff.data`: densities with exact (noised) log-densities and scores; the 8x8 digits;
  world cities and land on the globe.
- :mod:`otdiff.metrics`: mode occupancy, energy distance, Sinkhorn divergence, a digit judge.
- :mod:`otdiff.zoo`: trained models shared between chapters, cached on disk.
- :mod:`otdiff.smc`, :mod:`otdiff.energy`: sequential Monte Carlo and energy-based diffusion.
- :mod:`otdiff.spell`: sparse repellency for shielded generation.
- :mod:`otdiff.manifolds`: diffusion on manifolds (the sphere, geodesic random walks, the heat
  kernel) and Riemannian diffusion Schrödinger bridges.

House style (after optax, blackjax, ott-jax and equinox): pure functions over NamedTuple states,
the random key first, safe under ``jit``/``vmap``; inputs checked outside jitted code with errors
that name the argument and the accepted range.
"""

__version__ = "0.1.0"

"""The digits model judged by the digits judge: recognised share, Fréchet distance, memorisation.

For each model (``--models``: the zoo's ``"digits"`` MLP and ``"digits_unet"`` U-Net), each
sampler (``--samplers``: the reverse SDE, the score-based chapter's, and DDIM) and each sampling
seed, ``--n-samples`` digits are drawn from ``otdiff.zoo.load(model)`` in ``--n-steps`` steps and
judged by ``otdiff.metrics.DigitClassifier`` (the shipped judge). The held-out digits of
``otdiff.data.load_digits`` are split in two halves A and B. Rows per seed:

* ``recognised``: the share of the generated digits whose top class has probability above 0.8
  (target: at least 0.85); the same for the real test digits and for uniform and Gaussian noise
  (one row each, ``seed`` null) as references;
* ``frechet``: the Fréchet distance in the judge's features between the first ``len(B)``
  generated digits and half A, and ``frechet_ratio``, that distance over the one between half B
  and half A (two samples of real held-out digits, the same sizes; target: at most 2);
* ``memorised_features`` / ``memorised_pixels``: the share of the generated digits whose nearest
  training digit is closer than the 10th percentile of the test digits' nearest-training
  distances, in the judge's features and in pixels (test digits score 0.1 by construction;
  target: no more than that);
* ``sample_seconds``: the wall time of one batch (after a compiling warm-up).

Results go to ``benchmarks/results/digits.json``.

Usage: ``python benchmarks/bench_digits.py [--models digits digits_unet] [--seeds 0 1 2 3 4]
[--n-samples 500]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import _record
import jax
import numpy as np

from otdiff import diffusion, metrics, zoo
from otdiff.data import load_digits
from otdiff.progress import Progress

RESULTS = Path(__file__).resolve().parent / "results" / "digits.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--n-samples", type=int, default=500)
    parser.add_argument("--n-steps", type=int, default=100)
    parser.add_argument("--samplers", nargs="+", default=["sde", "ddim"])
    parser.add_argument("--models", nargs="+", default=["digits", "digits_unet"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    models = {name: zoo.load(name) for name in args.models}
    judge = metrics.DigitClassifier()
    digits = load_digits()
    test = digits.test_images
    a, b = np.array_split(test, 2)
    real_fd = judge.frechet_distance(b, a)
    rng = np.random.default_rng(0)
    results = [
        {"sample": "real test digits", "recognised": judge.confident_fraction(test)},
        {"sample": "real half B vs A", "frechet": real_fd},
        {
            "sample": "uniform noise",
            "recognised": judge.confident_fraction(rng.uniform(-1, 1, (args.n_samples, 64))),
        },
        {
            "sample": "Gaussian noise",
            "recognised": judge.confident_fraction(rng.normal(size=(args.n_samples, 64))),
        },
    ]
    for name, model in models.items():
        for sampler in args.samplers:
            results += _generated(args, name, model, judge, digits, sampler, real_fd)
    for name in models:
        for sampler in args.samplers:
            gen = [r for r in results if r.get("sampler") == sampler and r.get("model") == name]
            for key in ("recognised", "frechet_ratio", "memorised_features", "memorised_pixels"):
                values = np.array([r[key] for r in gen])
                print(
                    f"{name} {sampler} {key}: median {np.median(values):.3f}, "
                    f"from {values.min():.3f} to {values.max():.3f}"
                )
    print(f"real test digits recognised: {results[0]['recognised']:.3f}; "
          f"noise: {results[2]['recognised']:.3f} (uniform), {results[3]['recognised']:.3f} (Gaussian)")  # fmt: skip
    settings = {
        **vars(args),
        "model": {name: model.info["recipe_hash"] for name, model in models.items()},
        "judge": judge.info["fingerprint"],
    }
    _record.write(args.out, "digits", settings, results)


def _generated(args, name, model, judge, digits, sampler, real_fd) -> list:
    train, test = digits.train_images, digits.test_images
    a, b = np.array_split(test, 2)
    generate = jax.jit(
        lambda key: diffusion.sample(
            key, model.score, model.process, args.n_samples, 64, sampler=sampler,
            n_steps=args.n_steps,
        ).x
    )  # fmt: skip
    start = time.perf_counter()
    jax.block_until_ready(generate(jax.random.key(12345)))
    first = time.perf_counter() - start
    bar = Progress(
        len(args.seeds), f"sampling and judging ({sampler})", unit="seed",
        expected_seconds=first * len(args.seeds),
        basis="at most: the first batch's time, compilation included, judging apart",
    )  # fmt: skip
    results = []
    for seed in args.seeds:
        start = time.perf_counter()
        x = np.asarray(jax.block_until_ready(generate(jax.random.key(seed))))
        seconds = time.perf_counter() - start
        fd = judge.frechet_distance(x[: len(b)], a)
        row = {
            "sample": "generated",
            "model": name,
            "sampler": sampler,
            "seed": seed,
            "recognised": judge.confident_fraction(x),
            "frechet": fd,
            "frechet_ratio": fd / real_fd,
            "memorised_features": judge.memorised_fraction(x, train, test),
            "memorised_pixels": metrics.memorised_fraction(x, train, test),
            "classes": np.bincount(judge.probabilities(x).argmax(1), minlength=10).tolist(),
            "sample_seconds": seconds,
        }
        results.append(row)
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
        bar.advance()
    bar.close()
    return results


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# The GPU runbook: every chapter at the `full` preset and every benchmark at its GPU sizes.
#
# On a machine with one NVIDIA GPU and JAX's CUDA wheels installed
#     make install
#     .venv/bin/uv pip install --python .venv/bin/python "jax[cuda12]==$(.venv/bin/python -c 'import jax; print(jax.__version__)')"
#     make gpu                      # or: benchmarks/gpu.sh
# runs every chapter of _toc.yml under nbval with OTDIFF_SCALE=full, then every benchmark with the
# sizes of the table below, and writes benchmarks/results/gpu/: one <benchmark>.json per benchmark
# (the machine and the device recorded in each, as for the CPU results in benchmarks/results/)
# and chapters.json (each chapter's seconds and outcome). It is sized for about 12 minutes on one
# recent GPU; each chapter and each benchmark is stopped after $OTDIFF_GPU_STEP_TIMEOUT seconds
# (default 600) and reported as timed out, and the script carries on.
#
# Without a GPU (or with OTDIFF_GPU_DRY_RUN=1) it does a dry run of the same code path: one chapter
# at the `demo` preset and one benchmark at tiny sizes, results in a temporary folder that is
# removed afterwards. `make test` runs it (`make gpu-dry`) so that CI checks this script.
#
# Environment: PYTHON (default .venv/bin/python), OTDIFF_GPU_CHAPTERS (chapters to run instead of
# the whole toc, space-separated paths), OTDIFF_GPU_RESULTS (where the results go).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
BIN=$(dirname "$PYTHON")
STEP_TIMEOUT=${OTDIFF_GPU_STEP_TIMEOUT:-600}

# The benchmarks' GPU sizes (a few times the CPU defaults), and the dry run's tiny ones.
declare -A GPU_ARGS=(
  [bloop]="--batch-size 256 --inner 500 --repeats 10"
  [composition]="--slots 2 4 8 --n-samples 10000 --n-steps 100 --repeats 5"
  [diffusion]="--batch 2048 16384 --steps 100 --hidden 256 --repeats 5"
  [digits]="--seeds 0 1 2 3 4 --n-samples 5000 --n-steps 100"
  [m3g]="--views 2 3 4 5 --batch 32 64 128 --repeats 5"
  [monge]="--full --repeats 3"
  [progot]="--full --repeats 2"
  [reflow]="--n-ring 100000 --n-digits 10000 --repeats 5"
  [rdsb]="--walk-points 10000 100000 1000000 --particles 8000 32000 --repeats 5"
  [sinkhorn]="--sizes 1000 4000 16000 --epsilons 0.1 0.01 --repeats 5 --numpy-repeats 1"
  [sinkhorn_init]="--full --repeats 3"
  [sinkhorn_pot]="--problems 800,3,0.01 1200,6,0.02 1500,10,0.05 4000,10,0.02 --repeats 5"
  [scaling]="--large --repeats 3"
  [smc]="--particles 4000 16000 64000 --steps 100 --repeats 5"
  [spell]="--sizes 10000 100000 1000000 --batch 256 --repeats 5"
  [train]="--n-steps 100 --repeats 5"
)
DRY_BENCHMARK=sinkhorn
DRY_ARGS="--sizes 50 --epsilons 0.5 --repeats 1 --numpy-repeats 1"
DRY_CHAPTER=book/appendix/jax_primer.ipynb

platform=$("$PYTHON" -c "import jax; print(jax.devices()[0].platform)" 2>/dev/null)
if [[ "$platform" == "gpu" && -z "${OTDIFF_GPU_DRY_RUN:-}" ]]; then
  mode=gpu
  export OTDIFF_SCALE=full
  results=${OTDIFF_GPU_RESULTS:-benchmarks/results/gpu}
  chapters=${OTDIFF_GPU_CHAPTERS:-$("$PYTHON" - <<'PY'
import yaml
def walk(node):
    if isinstance(node, dict):
        if isinstance(node.get("file"), str):
            yield node["file"]
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)
import pathlib
print(" ".join(f + ".ipynb" for f in walk(yaml.safe_load(open("_toc.yml")))
               if pathlib.Path(f + ".ipynb").is_file()))
PY
)}
  benchmarks=$(ls benchmarks/bench_*.py | sed -E 's#benchmarks/bench_(.*)\.py#\1#')
else
  mode=dry
  export OTDIFF_SCALE=demo
  results=${OTDIFF_GPU_RESULTS:-$(mktemp -d /tmp/otdiff-gpu-dry.XXXXXX)}
  chapters=${OTDIFF_GPU_CHAPTERS:-$DRY_CHAPTER}
  benchmarks=$DRY_BENCHMARK
fi
mkdir -p "$results"
export OTDIFF_BENCH_RESULTS=$results
echo "== GPU runbook ($mode run on $platform, OTDIFF_SCALE=$OTDIFF_SCALE), results in $results"
[[ $mode == gpu ]] && echo "   expected: about 12 minutes on one recent NVIDIA GPU"

start_all=$(date +%s)
status=0
log="$results/chapters.tsv"
: > "$log"
for chapter in $chapters; do
  echo "== chapter $chapter"
  t0=$(date +%s%N)
  outcome=passed
  timeout "$STEP_TIMEOUT" "$BIN/pytest" --nbval-lax "$chapter" -q -p no:cacheprovider || {
    rc=$?; outcome=$([[ $rc == 124 ]] && echo timed-out || echo failed); status=1; }
  printf '%s\t%s\t%s\n' "$chapter" "$(( ($(date +%s%N) - t0) / 1000000 ))" "$outcome" >> "$log"
done
for name in $benchmarks; do
  if [[ $mode == gpu ]]; then
    [[ -v "GPU_ARGS[$name]" ]] || { echo "no GPU sizes for bench_$name.py in $0"; exit 2; }
    args=${GPU_ARGS[$name]}
  else
    args=$DRY_ARGS
  fi
  echo "== benchmark $name $args"
  # shellcheck disable=SC2086  # the arguments are words
  timeout "$STEP_TIMEOUT" "$PYTHON" "benchmarks/bench_$name.py" $args || { status=1; echo "bench_$name.py failed"; }
done
"$PYTHON" - "$log" "$mode" <<'PY'
import sys
from pathlib import Path

sys.path.insert(0, "benchmarks")
import _record

log, mode = Path(sys.argv[1]), sys.argv[2]
rows = [line.split("\t") for line in log.read_text().splitlines() if line]
results = [{"chapter": c, "seconds": round(int(ms) / 1000, 1), "outcome": o} for c, ms, o in rows]
_record.write(log.with_name("chapters.json"), "chapters", {"mode": mode}, results)
log.unlink()
for row in results:
    print(f"{row['seconds']:8.1f} s  {row['outcome']:9}  {row['chapter']}")
PY
echo "== done in $(( $(date +%s) - start_all )) s ($mode run); results in $results"
if [[ $mode == dry && -z "${OTDIFF_GPU_RESULTS:-}" ]]; then
  ls "$results"/chapters.json "$results/$DRY_BENCHMARK.json" > /dev/null
  rm -rf "$results"
fi
exit $status

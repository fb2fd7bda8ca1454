#!/usr/bin/env bash
# Bench: LoRA fine-tuning of all-MiniLM-L6-v2 on real clinical text (UCI drug reviews, the 4
# most frequent conditions), Harambee (burn, release build, one thread) against PyTorch + PEFT
# with 1 and 2 threads, on the same machine, texts and settings, in the same run. Prints one
# JSON line per run: seconds per epoch, samples/s, peak RSS, test accuracy and macro-F1; then
# the throughput ratio Harambee / PyTorch for each PyTorch thread count.
# Uses target/ref-venv (made as in reference.sh; several GB). Not part of CI.
#
#   models/text/bench.sh [EPOCHS]     # default 3
set -euo pipefail
cd "$(dirname "$0")/../.."
epochs="${1:-3}"

venv=target/ref-venv
if ! "$venv/bin/python" -c "import torch, transformers, peft" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet torch sentence-transformers peft safetensors
fi
models/text/fetch-minilm.sh >&2
models/text/fetch-drugreview.sh >&2
model_dir="${HARAMBEE_MINILM_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/harambee/all-MiniLM-L6-v2}"
data_dir="${HARAMBEE_DRUGREVIEW_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/harambee/drugreview}"

# The example alone in release (the workspace's release build is not needed for it).
cargo build --quiet --locked --release -p harambee-models --example minilm_bench
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
data_json=$(mktemp)
results=$(mktemp)
trap 'rm -f "$data_json" "$results"' EXIT
"$target/release/examples/minilm_bench" "$data_dir" "$data_json" "$epochs" | tee -a "$results"
for threads in 1 2; do
    "$venv/bin/python" models/text/bench.py "$model_dir" "$data_json" "$threads" | tee -a "$results"
done
# The ratio of throughputs (Harambee / PyTorch; the goal is at least 0.5, i.e. within 2x).
python3 - "$results" <<'PY'
import json, sys
runs = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
ours = next(r for r in runs if r["impl"] == "harambee")
for r in runs:
    if r["impl"] != "harambee":
        ratio = ours["samples_per_s"] / r["samples_per_s"]
        print(json.dumps({"ratio": "harambee/pytorch", "pytorch_threads": r["threads"],
                          "harambee_samples_per_s": ours["samples_per_s"],
                          "pytorch_samples_per_s": r["samples_per_s"],
                          "throughput_ratio": round(ratio, 3),
                          "within_2x": ratio >= 0.5}))
PY

#!/usr/bin/env bash
# Regenerates the PyTorch reference fixtures of the text-encoder tests (run by hand, once; CI
# only reads the committed fixtures):
#   models/tests/fixtures/minilm_embeddings.json  sentence-transformers embeddings
#   models/tests/fixtures/minilm_lora_peft.json   PEFT's logits with Harambee's exported adapters
# Makes a virtual environment in target/ref-venv (torch, transformers, sentence-transformers,
# peft and safetensors from the Python package index: several GB, because torch's Linux wheels
# pull the CUDA libraries), fetches the weights (fetch-minilm.sh), exports Harambee's adapters
# (the minilm_peft_export example) and runs reference.py. Fails if PEFT's logits and Harambee's
# differ by 1e-4 or more.
set -euo pipefail
cd "$(dirname "$0")/../.."

venv=target/ref-venv
if ! "$venv/bin/python" -c "import torch, sentence_transformers, peft, safetensors" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet torch sentence-transformers peft safetensors
fi
models/text/fetch-minilm.sh
dir="${HARAMBEE_MINILM_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/harambee/all-MiniLM-L6-v2}"
fixtures=models/tests/fixtures
mkdir -p "$fixtures"

"$venv/bin/python" models/text/reference.py embeddings "$dir" "$fixtures/minilm_embeddings.json"

export_dir=$(mktemp -d)
trap 'rm -rf "$export_dir"' EXIT
# Built with the workspace (one package alone resolves features differently).
cargo build --quiet --locked --workspace --examples
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
"$target/debug/examples/minilm_peft_export" "$export_dir"
"$venv/bin/python" models/text/reference.py peft "$dir" "$export_dir" "$fixtures/minilm_lora_peft.json"

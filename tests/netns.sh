#!/bin/sh
# tests/netns.sh BUILD [DOWN UP]: the network model (dg_netsim) against real
# sockets.  The TCP roles of MD-GAN run as processes on emulated hosts: the
# server in one network namespace, each of N = 3 workers in its own, joined
# to the server's by a veth pair whose two directions tbf shapes to DOWN
# (server -> worker) and UP (worker -> server) bit/s; worker-to-worker
# traffic (the swaps) is routed through the server's namespace, so it
# crosses an up link and a down link.  The same run is then simulated in
# process by dg_netsim with the same bandwidths and the compute measured on
# an unshaped run, and the measured time per iteration and per swap must be
# within 15% of the model's.
#
#   tests/netns.sh --check       exit 0 when this machine can run it (root, ip,
#                                tc), else 1 and why not
#   tests/netns.sh build         the test: "N passed, N failed" (make test runs it)
#   tests/netns.sh build 5M 2M   other bandwidths (the table in docs/network.md)
#   KEEP=DIR tests/netns.sh ...  keep the runs' logs in DIR
#
# It makes and removes its own namespaces (named dg<pid>*), uses only
# addresses inside them (10.213.n.0/24) and bounds every process with timeout.
B=${1:-build}
DOWN=${2:-10M}
UP=${3:-5M}
N=3
ITERS=40
SWAP=10
p=dg$$

can() {
    [ "$(id -u)" = 0 ] || { echo "not root"; return 1; }
    command -v ip >/dev/null 2>&1 || { echo "no ip (apt-get install iproute2)"; return 1; }
    command -v tc >/dev/null 2>&1 || { echo "no tc (apt-get install iproute2)"; return 1; }
    ip netns add "${p}probe" 2>/dev/null || { echo "cannot create a network namespace"; return 1; }
    ok=0
    if ip -n "${p}probe" link add "${p}x" type veth peer name "${p}y" 2>/dev/null &&
       ip netns exec "${p}probe" tc qdisc add dev "${p}x" root tbf rate 1mbit burst 8kb latency 1s 2>/dev/null; then
        ok=1
    fi
    ip netns del "${p}probe"
    [ $ok = 1 ] || { echo "no veth or no tbf here"; return 1; }
}

if [ "$B" = --check ]; then can; exit $?; fi
if ! why=$(can); then echo "skip netns test: $why"; exit 0; fi

work=$(mktemp -d)
pids=""
cleanup() {
    for q in $pids; do kill "$q" 2>/dev/null; done
    ip netns del "${p}s" 2>/dev/null
    n=1; while [ $n -le $N ]; do ip netns del "${p}w$n" 2>/dev/null; n=$((n + 1)); done
    if [ -n "$KEEP" ]; then rm -rf "$KEEP"; mv "$work" "$KEEP"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM

in_s() { ip netns exec "${p}s" "$@"; }
in_w() { w=$1; shift; ip netns exec "${p}w$w" "$@"; }

# the hosts: the server's namespace routes between the workers' links
ip netns add "${p}s" || exit 1
in_s ip link set lo up
in_s sysctl -q -w net.ipv4.ip_forward=1
n=1
while [ $n -le $N ]; do
    ip netns add "${p}w$n" || exit 1
    in_w $n ip link set lo up
    ip link add "${p}a$n" netns "${p}s" type veth peer name "${p}b$n" netns "${p}w$n" || exit 1
    in_s ip addr add 10.213.$n.1/24 dev "${p}a$n"
    in_s ip link set "${p}a$n" up
    in_w $n ip addr add 10.213.$n.2/24 dev "${p}b$n"
    in_w $n ip link set "${p}b$n" up
    in_w $n ip route add default via 10.213.$n.1
    n=$((n + 1))
done

# shape (1) or unshape (0) every link: a small burst, so that a message is
# not let through at the veth's line rate, and a queue of 50 ms, a router's.
# With a deep queue (seconds) a host's uplink holds the ACKs of the swap it
# receives behind the data of the swap it sends, and that flow slows down
# (measured: swaps 29% over the model at 5 Mbit/s): TCP's dynamics, which
# the model leaves out (docs/network.md)
shape() {
    n=1
    while [ $n -le $N ]; do
        if [ "$1" = 1 ]; then
            in_s tc qdisc replace dev "${p}a$n" root tbf rate "${DOWN}bit" burst 8kb latency 50ms
            in_w $n tc qdisc replace dev "${p}b$n" root tbf rate "${UP}bit" burst 8kb latency 50ms
        else
            in_s tc qdisc del dev "${p}a$n" root 2>/dev/null
            in_w $n tc qdisc del dev "${p}b$n" root 2>/dev/null
        fi
        n=$((n + 1))
    done
}

head -c 32 /dev/urandom > "$work/key"
RUN="--algo mdgan --workers $N --arch mlp --batch 10 --dataset shapes:600 --no-checkpoint
     --swap-every $SWAP --swap-opt-stays --seed 3"
SERVER="--iters $ITERS --log-every 1000 --no-eval"

# one TCP run of the server and N workers on their hosts; the server's log.csv in $work/$1
tcp_run() {
    port=$((7400 + $(od -An -N1 -tu1 /dev/urandom)))
    timeout 300 ip netns exec "${p}s" "$B/distgan" --transport tcp --role server \
        --listen 0.0.0.0:$port --secret-file "$work/key" $RUN $SERVER \
        --out "$work/$1" > "$work/$1.server.txt" 2>&1 &
    srv=$!
    pids="$srv"
    sleep 0.5
    n=1
    while [ $n -le $N ]; do
        timeout 300 ip netns exec "${p}w$n" "$B/distgan" --transport tcp --role worker \
            --connect 10.213.$n.1:$port --id $n --secret-file "$work/key" $RUN \
            --out "$work/$1-w$n" > "$work/$1.w$n.txt" 2>&1 &
        pids="$pids $!"
        n=$((n + 1))
    done
    ok=1
    for q in $pids; do wait "$q" || ok=0; done
    pids=""
    if [ $ok = 0 ]; then
        echo "---- the TCP run $1 failed:"; for f in "$work/$1".*.txt; do echo "$f:"; tail -n 5 "$f"; done
        return 1
    fi
}

# per-iteration times of a log.csv (column 9 host time, 11 simulated time):
# "plain swap" = the median time of an iteration without a swap and the
# mean extra time of the iterations that carry one out (SWAP+1, 2*SWAP+1, ...)
per_it() {
    awk -F, -v col="$2" -v s=$SWAP 'NR > 2 {
        d = $col - prev; it = $1
        if ((it - 1) % s == 0) { sw += d; ns++ } else { v[++m] = d }
    } NR > 1 { prev = $col }
    END {
        for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
        med = m % 2 ? v[(m + 1) / 2] : (v[m / 2] + v[m / 2 + 1]) / 2
        printf "%.6f %.6f\n", med, ns ? sw / ns - med : 0
    }' "$1"
}

passed=0; failed=0
check() { # name measured model
    r=$(awk -v a="$2" -v b="$3" 'BEGIN { printf "%.3f", a / b }')
    if awk -v r="$r" 'BEGIN { exit !(r >= 0.85 && r <= 1.15) }'; then
        passed=$((passed + 1)); echo "ok   $1: measured $2 s, model $3 s (ratio $r)"
    else
        failed=$((failed + 1)); echo "FAIL $1: measured $2 s, model $3 s (ratio $r, outside 0.85-1.15)"
    fi
}

# 1. compute, measured: the same run on unshaped links, against the model's
#    time at its default 100 GFLOP/s on an ideal network
shape 0
tcp_run plain || { echo "0 passed, 1 failed"; exit 1; }
timeout 300 "$B/distgan" $RUN $SERVER --network ideal --out "$work/ideal" \
    > "$work/ideal.txt" 2>&1 || { cat "$work/ideal.txt"; echo "0 passed, 1 failed"; exit 1; }
set -- $(per_it "$work/plain/log.csv" 9)
host_it=$1
set -- $(per_it "$work/ideal/log.csv" 11)
gflops=$(awk -v s="$1" -v h="$host_it" 'BEGIN { printf "%.4g", 100 * s / h }')

# 2. the shaped run, and the model with the same bandwidths and that speed
shape 1
tcp_run shaped || { echo "$passed passed, $((failed + 1)) failed"; exit 1; }
# tbf counts whole Ethernet frames: a full one (1514 bytes) carries 1448
# bytes of the stream (IPv4, TCP with timestamps), so the model, which counts
# the stream's bytes, gets rate * 1448 / 1514; a swap crosses an up and a
# down link: the slower one
goodput() { awk -v x="$1" 'BEGIN { m = substr(x, length(x)); x += 0
    x *= m == "M" ? 1e6 : m == "k" ? 1e3 : m == "G" ? 1e9 : 1; printf "%.6g", x * 1448 / 1514 }'; }
down=$(goodput "$DOWN"); up=$(goodput "$UP")
peer=$(awk -v a="$down" -v b="$up" 'BEGIN { print a < b ? a : b }')
net="down bw=$down; up bw=$up; peer bw=$peer; server gflops=$gflops; workers gflops=$gflops"
timeout 300 "$B/distgan" $RUN $SERVER --network "$net" --out "$work/model" \
    > "$work/model.txt" 2>&1 || { cat "$work/model.txt"; echo "$passed passed, $((failed + 1)) failed"; exit 1; }
set -- $(per_it "$work/shaped/log.csv" 9)
m_it=$1; m_swap=$2
set -- $(per_it "$work/model/log.csv" 11)
echo "netns: N = $N, down $DOWN up $UP bit/s, compute measured unshaped: $host_it s per iteration (model speed $gflops GFLOP/s)"
check "iteration time" "$m_it" "$1"
check "swap time" "$m_swap" "$2"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]

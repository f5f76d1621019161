#!/bin/sh
# run.sh BUILD "TESTS" "FUZZERS" ["MPI_TESTS"]: runs each test program
# optimised (BUILD/x) and under sanitizers (BUILD/asan/x, when built),
# replays each fuzz corpus, runs the MPI tests under mpirun (when mpicc
# exists), and ends with the one line that counts: "N passed, N failed".
B=$1; TESTS=$2; FUZZERS=$3; MPI_TESTS=$4
passed=0; failed=0
dir=$(mktemp -d)
log=$dir/log
# run: a program's output and exit status into dir (under its name)
run() { # name program [arguments]
    name=$1; shift
    f=$dir/$(echo "$name" | tr '/ ' '__')
    if timeout 900 "$@" >"$f.log" 2>&1; then echo 0 >"$f.rc"; else echo $? >"$f.rc"; fi
}
# tally: adds a program's summary line to the totals and says how it went
tally() { # name
    name=$1
    f=$dir/$(echo "$name" | tr '/ ' '__')
    rc=$(cat "$f.rc")
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$f.log" | tail -1)
    p=$(echo "$line" | sed -n 's/^\([0-9]*\) passed.*/\1/p')
    f2=$(echo "$line" | sed -n 's/.*, \([0-9]*\) failed$/\1/p')
    if [ -z "$line" ]; then p=0; f2=1; fi
    if [ "$rc" != 0 ] && [ "${f2:-0}" = 0 ]; then f2=1; fi
    passed=$((passed + p)); failed=$((failed + f2))
    if [ "$f2" != 0 ]; then echo "---- $name (exit $rc)"; cat "$f.log"; else echo "ok   $name: $p passed"; fi
}
count() { run "$@"; tally "$1"; }
# the test programs in two lanes, one per core (much of test_tcp's and the
# process tests' time is waiting), then their results in order; what
# measures time or needs the machine alone (MPI, netns) runs after, alone
lane() { # tests...
    for t in "$@"; do
        run "$t" "$B/$t"
        if [ -x "$B/asan/$t" ]; then run "asan/$t" "$B/asan/$t"; fi
    done
}
i=0; lane_a=""; lane_b=""
for t in $TESTS; do
    if [ $((i % 2)) = 0 ]; then lane_a="$lane_a $t"; else lane_b="$lane_b $t"; fi
    i=$((i + 1))
done
lane $lane_a &
lane $lane_b
wait
for t in $TESTS; do
    tally "$t"
    if [ -f "$dir/asan_$t.rc" ]; then tally "asan/$t"; fi
done
if [ -n "$MPI_TESTS" ] && command -v "${MPICC:-mpicc}" >/dev/null 2>&1; then
    for t in $MPI_TESTS; do
        n=3
        [ "$t" = mpi_drive ] && n=4 # the server and N = 3 workers
        count "$t" sh tests/mpirun.sh $n "$B/$t"
        # Open MPI's own allocations show up as leaks: LeakSanitizer off
        [ -x "$B/asan/$t" ] && count "asan/$t" env ASAN_OPTIONS=detect_leaks=0 sh tests/mpirun.sh $n "$B/asan/$t"
    done
    # the transport refuses MPI below MPI_THREAD_SERIALIZED
    case " $MPI_TESTS " in *" mpi_transport "*)
        count "mpi_transport funneled" sh tests/mpirun.sh 1 "$B/mpi_transport" funneled ;;
    esac
elif [ -n "$MPI_TESTS" ]; then
    echo "skip MPI tests: no ${MPICC:-mpicc} (apt-get install libopenmpi-dev openmpi-bin)"
fi
for f in $FUZZERS; do
    set -- tests/corpus/$f/*
    if [ -e "$1" ]; then
        if timeout 900 "$B/asan/replay_$f" "$@" >"$log" 2>&1; then
            passed=$((passed + 1)); echo "ok   corpus $f: $(tail -1 "$log")"
        else
            failed=$((failed + 1)); echo "---- corpus $f"; tail -30 "$log"
        fi
    fi
done
# fixed-seed results of the examples against tests/golden.txt (tools/golden.sh),
# when the examples are built here (not in the tsan build)
if [ -x "$B/distgan" ] && [ -x "$B/golden_decode" ] && [ -f tests/golden.txt ]; then
    count golden sh tools/golden.sh compare "$B"
fi
# the network model against TCP roles on emulated hosts (network namespaces,
# tbf): as root with ip and tc, else one line says why not
if [ -x "$B/distgan" ]; then
    if why=$(sh tests/netns.sh --check); then count netns sh tests/netns.sh "$B"
    else echo "skip netns test: $why"; fi
fi
# the headers compile as C (gcc, clang), C++, static and without SIMD
if sh tests/compile_check.sh "${CC:-cc}" "${CLANG:-clang}" >"$log" 2>&1; then
    passed=$((passed + 1)); echo "ok   compile_check"
else
    failed=$((failed + 1)); echo "---- compile_check"; cat "$log"
fi
rm -rf "$dir"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]

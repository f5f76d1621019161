#!/bin/sh
# mpirun.sh N PROGRAM [ARGS...]: mpirun -n N PROGRAM, with what Open MPI
# needs on a small machine (--oversubscribe: more ranks than cores) and as
# root (--allow-run-as-root).  Other MPIs get plain `mpirun -n N`.
n=$1; shift
set -- -n "$n" "$@"
if mpirun --version 2>/dev/null | grep -q "Open MPI"; then
    [ "$(id -u)" = 0 ] && set -- --allow-run-as-root "$@"
    set -- --oversubscribe "$@"
fi
exec mpirun "$@"

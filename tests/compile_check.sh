#!/bin/sh
# compile_check.sh CC CLANG: the headers build warning-free as C11 with gcc
# and clang, as C++ (extern "C", casts), with DISTGAN_STATIC, split over two
# translation units, and with DISTGAN_MPI under mpicc (when there is one).
# Any warning fails the check.
CC=${1:-cc}; CLANG=${2:-clang}
out=build/compile_check.d
mkdir -p $out
W="-Wall -Wextra -pedantic -Werror"
extra=""
[ -f adacomp.h ] && extra="-DWITH_ADACOMP"
run() { echo "  $*"; "$@" || exit 1; }
run $CC -std=c11 $W -O1 $extra -DLINK_SECOND tests/compile_check.c -DSECOND_UNIT -c -o $out/second.o
run $CC -std=c11 $W -O1 $extra -DLINK_SECOND tests/compile_check.c $out/second.o -o $out/c_gcc -lpthread -lm
run $out/c_gcc
if command -v "$CLANG" >/dev/null 2>&1; then
    run $CLANG -std=c11 $W -O1 $extra tests/compile_check.c -o $out/c_clang -lpthread -lm
    run $out/c_clang
fi
if command -v g++ >/dev/null 2>&1; then
    run g++ -x c++ -std=c++11 $W -O1 $extra tests/compile_check.c -o $out/cxx -lpthread -lm
    run $out/cxx
fi
run $CC -std=c11 $W -O1 $extra -DDISTGAN_STATIC -Wno-unused-function tests/compile_check.c -o $out/c_static -lpthread -lm
run $out/c_static
run $CC -std=c11 $W -O1 $extra -DDG_NO_SIMD tests/compile_check.c -o $out/c_nosimd -lpthread -lm
run $out/c_nosimd
# the MPI transport (DISTGAN_MPI) with mpicc, when there is one
if command -v "${MPICC:-mpicc}" >/dev/null 2>&1; then
    run "${MPICC:-mpicc}" -std=c11 $W -O1 $extra -DDISTGAN_MPI tests/compile_check.c -o $out/c_mpi -lpthread -lm
    run $out/c_mpi
fi
echo "compile check ok"

#!/bin/sh
# compile_check.sh CC CLANG: the headers build warning-free as C11 with gcc
# and clang, as C++ (extern "C", casts), with DISTGAN_STATIC, split over two
# translation units, in every include order, without SIMD, without stb,
# with stb elsewhere and without TCP; with DISTGAN_MPI under mpicc (when
# there is one); and
# the sections' order (tools/section_deps.sh).  Any warning fails the check.
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
# every include order of the two headers, with and without a program's own
# system headers first (under strict C11 that program sets the POSIX
# feature macro itself: the C library decides at its first header)
if [ -n "$extra" ]; then
    for std in c11 gnu11; do
        for order in "" -DDISTGAN_FIRST; do
            run $CC -std=$std $W $extra $order -fsyntax-only tests/compile_check.c
            posix=""; [ $std = c11 ] && posix=-D_POSIX_C_SOURCE=200809L
            run $CC -std=$std $W $extra $order -DSYSTEM_FIRST $posix -fsyntax-only tests/compile_check.c
        done
    done
fi
run $CC -std=gnu11 $W -DSYSTEM_FIRST -fsyntax-only tests/compile_check.c
if [ -n "$extra" ] && command -v g++ >/dev/null 2>&1; then
    run g++ -x c++ -std=c++11 $W $extra -DDISTGAN_FIRST -DSYSTEM_FIRST -fsyntax-only tests/compile_check.c
fi
# without stb, and with stb's headers somewhere else than Debian puts them
run $CC -std=c11 $W -O1 $extra -DDG_NO_STB tests/compile_check.c -o $out/c_nostb -lpthread -lm
run $out/c_nostb
if [ -f /usr/include/stb/stb_image.h ]; then
    mkdir -p $out/mystb
    cp /usr/include/stb/stb_image.h /usr/include/stb/stb_image_write.h $out/mystb/
    run $CC -std=c11 $W -O1 $extra -I$out -DDG_STB_IMAGE_PATH='"mystb/stb_image.h"' \
        -DDG_STB_IMAGE_WRITE_PATH='<mystb/stb_image_write.h>' tests/compile_check.c -o $out/c_stbpath -lpthread -lm
    run $out/c_stbpath
fi
# without the TCP section (no sockets): an in-process MD-GAN iteration runs
run $CC -std=c11 $W -O1 $extra -DDG_NO_TCP tests/compile_check.c -o $out/c_notcp -lpthread -lm
run $out/c_notcp
# each section of distgan.h uses only the sections above it
run sh tools/section_deps.sh "$CC"
# the MPI transport (DISTGAN_MPI) with mpicc, when there is one
if command -v "${MPICC:-mpicc}" >/dev/null 2>&1; then
    run "${MPICC:-mpicc}" -std=c11 $W -O1 $extra -DDISTGAN_MPI tests/compile_check.c -o $out/c_mpi -lpthread -lm
    run $out/c_mpi
fi
echo "compile check ok"

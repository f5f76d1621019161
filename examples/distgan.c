/* examples/distgan.c: train a GAN standalone, with MD-GAN or with FL-GAN, and
 * watch quality, traffic and workers come and go.  One program for every
 * transport: the server and N workers in this process (--transport inproc,
 * the default), as processes over TCP, or as the ranks of an MPI job; the
 * same options give the same generator, bit for bit, on each.
 *
 *   cc -O2 examples/distgan.c -lpthread -lm            (mpicc -DDISTGAN_MPI: + mpi)
 *   ./a.out --algo mdgan --workers 4 --dataset fashion --iters 2000
 *   ./a.out --algo mdgan --workers 10 --k 4 --crash 3@500,7@800 --acgan
 *   ./a.out --algo flgan --workers 10 --E 1 --dirichlet 0.5
 *   ./a.out --transport tcp --role server --listen 127.0.0.1:7000 --workers 3 ...
 *   ./a.out --transport tcp --role worker --connect 127.0.0.1:7000 --workers 3 --id 1 ...
 *   mpirun -n 5 ./distgan-mpi --transport mpi --workers 4 ...   (rank 0: the server)
 *   ./a.out --algo mdgan --workers 20 --network edge      (simulated time: sim_s)
 *   ./a.out --help
 *
 * The server (in process: the program) writes into --out: log.csv
 * (iteration, losses, score, FID, bytes per direction, time, N_live, simulated time),
 * samples_<iter>.png, samples_final.png, g.f32 (the final generator's
 * parameters, raw float32) and checkpoints: server.ckpt and worker_<n>.ckpt
 * for MD-GAN (flgan_*.ckpt for FL-GAN, gan.ckpt standalone); --resume
 * continues from them.  Over TCP and MPI every process takes the same run
 * options (the TCP handshake compares a hash of them); the workers write
 * their checkpoints at the end of the run into their --out. */
#define _POSIX_C_SOURCE 200809L
#define DISTGAN_IMPLEMENTATION
#include "../distgan.h"
#include "cli.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define MAX_FAULTS 64
#define MAX_ALSO (DG_NETSIM_MAX_MODELS - 1) /* --also-network */
#define GRID_SEED 0x9717 /* the grids of a run show the same z over time */

typedef enum algo { ALGO_GAN, ALGO_MDGAN, ALGO_FLGAN } algo;
typedef enum transport { T_INPROC, T_TCP, T_MPI } transport;

typedef struct options {
    cli_run run; /* --dataset, --arch, --classifier, --out, ... */
    int algo, transport, role; /* indices into the choices of --algo, --transport,
                                  --role (0 server, 1 worker) */
    const char *k_str, *crash_str, *join_str, *attack_str, *role_str, *id_str, *slow_str;
    int workers, batch, k, L, E, acgan, saturating, no_eval, eval_samples, iid, shards,
        swap_every, swap_opt_stays, real_once, z_dim, local_iters, log_every, ckpt_every, id,
        barrier_ms, version, staleness, tau_max, balanced;
    double alpha, feedback_clip, deadline, fraction;
    const char *quorum_str; int quorum; /* --quorum: 1..N, checked against --workers */
    float lr;
    int64_t iters, eval_every;
    uint64_t seed, data_seed, max_message;
    cli_tcp tcp; /* --listen, --connect, --secret-file, ... */
    dg_fault crash[MAX_FAULTS], join[MAX_FAULTS], slow[MAX_FAULTS]; /* slow: n@ms */
    dg_fault_spec attack[MAX_FAULTS];
    int n_crash, n_join, n_attack, n_slow;
    const char *network; dg_netsim_config net; /* --network, parsed (docs/network.md) */
    const char *also_str; dg_netsim_config also[MAX_ALSO]; int n_also; /* --also-network */
    const char *codec_str; dg_codec_set codec;  /* --codec, parsed */
} options;

static void usage(FILE *f)
{
    fprintf(f, /* three strings: C keeps one literal under 4095 characters */
        "usage: distgan [options]\n"
        "Trains a GAN standalone, with MD-GAN or with FL-GAN (a server and N workers in\n"
        "this process, over TCP or under MPI), with progress, a CSV log, sample grids\n"
        "and checkpoints.\n\n"
        "  --transport inproc|tcp|mpi\n"
        "                      where the workers run (default inproc: threads of this\n"
        "                      process; tcp: one process per role, see --role; mpi:\n"
        "                      rank 0 the server, ranks 1..N the workers, N = --workers)\n"
        "  --algo gan|mdgan|flgan   (default mdgan; gan: inproc only)\n"
        "  --workers N         workers (default 4)\n"
        "  --batch b           batch size (default 64)\n"
        "  --k K               MD-GAN generated batches per iteration: a number or\n"
        "                      'log' for ceil(log2 N) (default 1)\n"
        "  --L L               discriminator steps per iteration (default 1)\n"
        "  --E E               local epochs: MD-GAN swaps D every m*E/b iterations,\n"
        "                      FL-GAN averages every m*E/b (default 1; MD-GAN 0 = no swap)\n"
        "  --swap-every S      MD-GAN: swap every S iterations instead of m*E/b\n"
        "  --local-iters n     FL-GAN: n local iterations per round instead of m*E/b\n"
        "  --swap-opt-stays    MD-GAN: D's Adam state stays with the worker\n"
        "  --real-once         MD-GAN: one real batch per iteration (paper) instead of\n"
        "                      a fresh one per D step\n"
        "  --feedback-clip C   MD-GAN: the server scales each sample's feedback from a\n"
        "                      worker down to L2 norm C before summing (default off)\n");
    fprintf(f,
        "  --quorum Q          MD-GAN, asynchronous (docs/mdgan.md): G is updated once Q\n"
        "                      feedbacks (1..N) have arrived: in simulated time under\n"
        "                      --network, on the wall clock over tcp and mpi (not\n"
        "                      reproducible there); late ones are used later, weighted\n"
        "  --deadline S        with --quorum: update at S seconds (simulated; tcp, mpi:\n"
        "                      wall-clock) after the batches leave if the quorum is not\n"
        "                      in, once one feedback is (default none)\n"
        "  --staleness inverse|constant  with --quorum: a feedback tau updates stale\n"
        "                      weighs 1/max(1, tau) (default) or 1\n"
        "  --tau-max T         with --quorum: drop feedback staler than T (default none)\n"
        "  --fraction C        inproc FL-GAN (FeGAN): each round asks round(C*N) workers,\n"
        "                      drawn from the seed (0 < C <= 1; default 1)\n"
        "  --balanced          with --fraction: workers drawn with probability\n"
        "                      proportional to their shard size\n"
        "  --iid | --shards S | --dirichlet A\n"
        "                      split: i.i.d. (default), S label shards per worker,\n"
        "                      Dirichlet(A) label skew\n"
        "  --acgan             class-conditional G, D with 1 + C outputs\n"
        "  --saturating        G loss log(1 - D(G(z))) (default -log D(G(z)))\n"
        "  --arch dcgan|mlp|tiny  networks (default dcgan; mlp = the MD-GAN paper's, tiny =\n"
        "                      that MLP with 32 units: scale tests)\n"
        "  --lr LR             Adam learning rate of G and D (default 2e-4)\n"
        "  --dataset SPEC      fashion, mnist[:DIR], shapes[:N], idx:DIR, idx:IMAGES[,LABELS],\n"
        "                      cifar:DIR or images:DIR (docs/data.md; default: fashion\n"
        "                      when " DG_FASHION_MNIST_DIR " exists, else shapes)\n"
        "  --data-seed S       the seed of a procedural dataset (default 1)\n"
        "  --iters I           generator updates (default 2000)\n"
        "  --eval-every N      score/FID every N iterations (default 500; 0 = at the end)\n"
        "  --eval-samples S    samples per evaluation (default 500)\n"
        "  --no-eval           no classifier, no score/FID (grids and logs only)\n"
        "  --classifier FILE   classifier cache (default DIR/classifier-<dataset>.bin)\n"
        "  --clf-epochs N      classifier training epochs (default 3)\n"
        "  --log-every N       a progress line every N iterations (default: every 2 s)\n"
        "  --seed S            run seed (default 1)\n"
        "  --threads T         pool threads (default 0: one per core)\n"
        "  --crash n@t[,..]    inproc: worker n stops answering at iteration t (FL-GAN: round t)\n"
        "  --attack n@s[,..]   inproc MD-GAN: worker n's feedback is multiplied by s ('nan':\n"
        "                      NaN) from the first iteration, by a fault transport\n"
        "  --join t[,..]       inproc MD-GAN: a new worker joins at iteration t with a copy\n"
        "                      of a live worker's D (the data is split over N + joins)\n"
        "  --network SPEC      inproc: simulate a network (docs/network.md): a profile\n"
        "                      (datacenter, wan, edge), a spec such as\n"
        "                      'wan; worker 3 gflops=5' or @FILE; sim_s is its time\n"
        "                      (standalone GAN: its compute at the server's speed)\n"
        "  --also-network SPEC[|SPEC..]  with --network, a synchronous run: the same run\n"
        "                      timed on up to 3 more networks, log columns sim_s_2, ..\n"
        "  --codec SPEC        MD-GAN, FL-GAN: compress traffic (docs/network.md), e.g.\n"
        "                      batch=int8,feedback=f16,swap=f16 or upload=topk:0.01,download=topk:0.01\n"
        "                      (codecs: none f16 int8 topk[:C] ibm[:L_T])\n"
        "");
    fprintf(f, /* three strings: C keeps one literal under 4095 characters */
        "  --out DIR           outputs (default out/distgan)\n"
        "  --resume            continue from the checkpoints in DIR\n"
        "  --no-checkpoint     write no checkpoints\n"
        "  --checkpoint-every n  tcp, mpi: the server's checkpoint every n iterations\n"
        "                      (FL-GAN: rounds; default: at the end only)\n"
        "  --barrier-ms T      tcp, mpi: the server drops the workers whose answer takes\n"
        "                      longer than T ms (default: MD-GAN 2 x --dead-ms, FL-GAN 60 s;\n"
        "                      with --quorum slow workers are waited for, dead ones dropped)\n"
        "  --slow n@ms[,..]    tcp, mpi MD-GAN (tests): worker n sleeps ms before each\n"
        "                      feedback it sends (a fault transport)\n"
        " tcp only:\n"
        "  --role server|worker   --listen HOST:PORT (server)   --connect HOST:PORT --id n\n"
        "                      (worker)   --secret-file F (shared secret)   --insecure\n"
        "                      (server: listen beyond loopback without a secret)\n"
        "  --max-message BYTES --dead-ms T --heartbeat-ms T --protocol-version v (tests)\n"
        "  --help\n"
        "An option the chosen transport, role or --algo does not use is an error.\n");
}

/* The value s of option opt, a number of workers 1..workers, into *out
   (s NULL: *out stays): 0, or 1 once the error is said (hint after it). */
static int parse_worker_number(const char *opt, const char *s, int workers, const char *hint,
                               int *out)
{
    long long v;
    if (!s) return 0;
    if (dg_parse_int(s, 1, workers, &v)) {
        fprintf(stderr, "distgan: %s: %s%s\n", opt, dg_last_error(), hint);
        return 1;
    }
    *out = (int)v;
    return 0;
}

/* "n@t,n@t" (with_worker) or "t,t": faults, strictly */
static int parse_faults(const char *name, const char *s, dg_fault *f, int *n, int with_worker)
{
    const char *list = s;
    char item[64];
    for (;; s += strcspn(s, ",") + 1) {
        size_t len = strcspn(s, ",");
        const char *at;
        long long w = 0, t;
        snprintf(item, sizeof item, "%.*s", (int)(len < sizeof item ? len : sizeof item - 1), s);
        at = strchr(item, '@');
        if (with_worker && at) item[at - item] = 0;
        if (*n == MAX_FAULTS || len >= sizeof item || !with_worker != !at ||
            (with_worker && dg_parse_int(item, 1, 100000, &w)) ||
            dg_parse_int(with_worker ? at + 1 : item, 0, 1000000000, &t)) {
            fprintf(stderr, "distgan: %s: '%s' is not %s (at most %d)\n", name, list,
                    !with_worker ? "t[,t...] (iteration t >= 0)"
                    : strcmp(name, "--slow") ? "n@t[,n@t...] (worker n >= 1, iteration t >= 0)"
                                             : "n@ms[,n@ms...] (worker n >= 1, ms >= 0)",
                    MAX_FAULTS);
            return 1;
        }
        f[*n].worker = (int)w;
        f[*n].iteration = t;
        (*n)++;
        if (!s[len]) return 0;
    }
}

/* --attack "n@scale,n@nan": feedback faults of workers 1..N */
static int parse_attacks(options *o)
{
    const char *s = o->attack_str;
    char item[64];
    for (;; s += strcspn(s, ",") + 1) {
        size_t len = strcspn(s, ",");
        char *at;
        long long w;
        double scale = 0.0;
        dg_fault_spec *f = &o->attack[o->n_attack];
        snprintf(item, sizeof item, "%.*s", (int)(len < sizeof item ? len : sizeof item - 1), s);
        at = strchr(item, '@');
        if (at) *at++ = 0;
        if (o->n_attack == MAX_FAULTS || len >= sizeof item || !at ||
            dg_parse_int(item, 1, o->workers, &w) ||
            (strcmp(at, "nan") && dg_parse_float(at, -1e30, 1e30, &scale))) {
            fprintf(stderr, "distgan: --attack: '%s' is not n@scale[,n@scale...] (worker 1 <= n <= "
                    "%d, scale a number or 'nan'; at most %d)\n", o->attack_str, o->workers,
                    MAX_FAULTS);
            return 1;
        }
        f->kind = strcmp(at, "nan") ? DG_FAULT_SCALE : DG_FAULT_NAN;
        f->peer = (int)w;
        f->type = DG_MSG_FEEDBACK;
        f->iteration = 0;
        f->scale = (float)scale;
        o->n_attack++;
        if (!s[len]) return 0;
    }
}

/* The peers a network spec describes: the server and N workers + joiners. */
static int net_peers(const options *o) { return o->algo == ALGO_GAN ? 1 : o->workers + o->n_join + 1; }

/* --also-network: specs separated by '|', each checked as --network's; the
   library refuses what is not the same run on another network. */
static int parse_also(options *o)
{
    const char *s = o->also_str, *why = NULL;
    char spec[4096], most[64];
    snprintf(most, sizeof most, "at most %d networks besides --network", MAX_ALSO);
    if (!o->network) why = "needs --network (the first network)";
    else if (o->algo == ALGO_MDGAN && o->quorum)
        why = "an asynchronous run (--quorum) depends on its network: one network per run";
    while (!why) {
        size_t len = strcspn(s, "|");
        if (o->n_also == MAX_ALSO) why = most;
        else if (len == 0 || len >= sizeof spec) why = len ? "a spec too long" : "an empty spec";
        if (why) break;
        memcpy(spec, s, len);
        spec[len] = 0;
        if (dg_netsim_parse(spec, &o->also[o->n_also]) ||
            dg_netsim_config_check(&o->also[o->n_also], net_peers(o))) {
            fprintf(stderr, "distgan: --also-network '%s': '%s': %s\n", o->also_str, spec, dg_last_error());
            return 1;
        }
        o->n_also++;
        if (!s[len]) return 0;
        s += len + 1;
    }
    fprintf(stderr, "distgan: --also-network '%s': %s\n", o->also_str, why);
    return 1;
}

/* Which runs use an option: algorithms (bits 1 << algo), transports
   (1 << transport) and, over TCP, roles (1 server, 2 worker). */
#define A_ALL 7u
#define A_DIST 6u  /* mdgan, flgan */
#define T_ALL 7u
#define T_PROC 6u  /* tcp, mpi */
typedef struct use { const char *name; unsigned algos, transports, roles; } use;

static const use uses[] = {
    {"--k", 2, T_ALL, 3}, {"--swap-every", 2, T_ALL, 3}, {"--swap-opt-stays", 2, T_ALL, 3},
    {"--real-once", 2, T_ALL, 3}, {"--feedback-clip", 2, T_ALL, 3}, {"--local-iters", 4, T_ALL, 3},
    {"--L", 1 | 2, T_ALL, 3}, {"--workers", A_DIST, T_ALL, 3}, {"--E", A_DIST, T_ALL, 3},
    {"--iid", A_DIST, T_ALL, 3}, {"--shards", A_DIST, T_ALL, 3}, {"--dirichlet", A_DIST, T_ALL, 3},
    {"--crash", A_DIST, 1, 3}, {"--join", 2, 1, 3}, {"--attack", 2, 1, 3},
    {"--network", A_ALL, 1, 3}, {"--also-network", A_ALL, 1, 3}, {"--quorum", 2, T_ALL, 3}, {"--deadline", 2, T_ALL, 3},
    {"--staleness", 2, T_ALL, 3}, {"--tau-max", 2, T_ALL, 3}, {"--fraction", 4, 1, 3},
    {"--slow", 2, T_PROC, 3},
    {"--balanced", 4, 1, 3}, {"--codec", A_DIST, T_ALL, 3},
    {"--eval-every", A_ALL, T_ALL, 1}, {"--eval-samples", A_ALL, T_ALL, 1},
    {"--no-eval", A_ALL, T_ALL, 1}, {"--classifier", A_ALL, T_ALL, 1},
    {"--clf-epochs", A_ALL, T_ALL, 1}, {"--log-every", A_ALL, T_ALL, 1},
    {"--checkpoint-every", A_DIST, T_PROC, 1}, {"--barrier-ms", A_DIST, T_PROC, 3},
    {"--role", A_DIST, 2, 3}, {"--listen", A_DIST, 2, 1}, {"--insecure", A_DIST, 2, 1},
    {"--connect", A_DIST, 2, 2}, {"--id", A_DIST, 2, 2}, {"--secret-file", A_DIST, 2, 3},
    {"--max-message", A_DIST, 2, 3}, {"--dead-ms", A_DIST, 2, 3},
    {"--heartbeat-ms", A_DIST, 2, 3}, {"--protocol-version", A_DIST, 2, 3},
};

static const char *const algo_names[] = {"gan", "mdgan", "flgan"};
static const char *const transport_names[] = {"inproc", "tcp", "mpi"};

static int parse(options *o, int argc, char **argv)
{
    struct stat st;
    const dg_option table[] = {
        {"--transport", DG_OPT_CHOICE, &o->transport, 0, 0, "inproc|tcp|mpi"},
        {"--algo", DG_OPT_CHOICE, &o->algo, 0, 0, "gan|mdgan|flgan"},
        CLI_RUN_OPTIONS(&o->run),
        {"--workers", DG_OPT_INT, &o->workers, 1, 10000, NULL},
        {"--batch", DG_OPT_INT, &o->batch, 1, 65536, NULL},
        {"--k", DG_OPT_STRING, &o->k_str, 0, 0, NULL},
        {"--L", DG_OPT_INT, &o->L, 1, 1000, NULL},
        {"--E", DG_OPT_INT, &o->E, 0, 1000000, NULL},
        {"--swap-every", DG_OPT_INT, &o->swap_every, 0, 1000000000, NULL},
        {"--local-iters", DG_OPT_INT, &o->local_iters, 1, 1000000000, NULL},
        {"--swap-opt-stays", DG_OPT_FLAG, &o->swap_opt_stays, 0, 0, NULL},
        {"--real-once", DG_OPT_FLAG, &o->real_once, 0, 0, NULL},
        {"--iid", DG_OPT_FLAG, &o->iid, 0, 0, NULL},
        {"--shards", DG_OPT_INT, &o->shards, 1, 1000, NULL},
        {"--dirichlet", DG_OPT_DOUBLE, &o->alpha, 1e-6, 1e6, NULL},
        {"--feedback-clip", DG_OPT_DOUBLE, &o->feedback_clip, 0, 1e30, NULL},
        {"--quorum", DG_OPT_STRING, &o->quorum_str, 0, 0, NULL},
        {"--deadline", DG_OPT_DOUBLE, &o->deadline, 1e-9, 1e9, NULL},
        {"--staleness", DG_OPT_CHOICE, &o->staleness, 0, 0, "inverse|constant"},
        {"--tau-max", DG_OPT_INT, &o->tau_max, 0, 1000000000, NULL},
        {"--fraction", DG_OPT_DOUBLE, &o->fraction, 1e-9, 1, NULL},
        {"--balanced", DG_OPT_FLAG, &o->balanced, 0, 0, NULL},
        {"--acgan", DG_OPT_FLAG, &o->acgan, 0, 0, NULL},
        {"--saturating", DG_OPT_FLAG, &o->saturating, 0, 0, NULL},
        {"--lr", DG_OPT_FLOAT, &o->lr, 1e-8, 1, NULL},
        {"--data-seed", DG_OPT_U64, &o->data_seed, 0, 0, NULL},
        {"--iters", DG_OPT_INT64, &o->iters, 1, 1e9, NULL},
        {"--eval-every", DG_OPT_INT64, &o->eval_every, 0, 1e9, NULL},
        {"--eval-samples", DG_OPT_INT, &o->eval_samples, 2, 1000000, NULL},
        {"--no-eval", DG_OPT_FLAG, &o->no_eval, 0, 0, NULL},
        {"--log-every", DG_OPT_INT, &o->log_every, 0, 1000000000, NULL},
        {"--seed", DG_OPT_U64, &o->seed, 0, 0, NULL},
        {"--crash", DG_OPT_STRING, &o->crash_str, 0, 0, NULL},
        {"--join", DG_OPT_STRING, &o->join_str, 0, 0, NULL},
        {"--attack", DG_OPT_STRING, &o->attack_str, 0, 0, NULL},
        {"--slow", DG_OPT_STRING, &o->slow_str, 0, 0, NULL},
        {"--network", DG_OPT_STRING, &o->network, 0, 0, NULL},
        {"--also-network", DG_OPT_STRING, &o->also_str, 0, 0, NULL},
        {"--codec", DG_OPT_STRING, &o->codec_str, 0, 0, NULL},
        {"--checkpoint-every", DG_OPT_INT, &o->ckpt_every, 0, 1000000000, NULL},
        {"--barrier-ms", DG_OPT_INT, &o->barrier_ms, 0, 86400000, NULL},
        {"--role", DG_OPT_STRING, &o->role_str, 0, 0, NULL},
        CLI_TCP_OPTIONS(o->tcp),
        {"--id", DG_OPT_STRING, &o->id_str, 0, 0, NULL},
        {"--max-message", DG_OPT_U64, &o->max_message, 0, 0, NULL},
        {"--protocol-version", DG_OPT_INT, &o->version, 0, 65535, NULL},
    };
    int i;
    memset(o, 0, sizeof *o);
    o->algo = ALGO_MDGAN;
    o->run.dataset = stat(DG_FASHION_MNIST_DIR "/train-images-idx3-ubyte.gz", &st) == 0 ? "fashion"
                                                                                    : "shapes";
    o->run.out = "out/distgan";
    o->workers = 4;
    o->batch = 64;
    o->L = 1;
    o->E = 1;
    o->eval_samples = 500;
    o->run.clf_epochs = 3;
    o->z_dim = 100;
    o->run.arch = DG_ARCH_DCGAN;
    o->lr = 2e-4f;
    o->iters = 2000;
    o->eval_every = 500;
    o->seed = 1;
    o->data_seed = 1;
    o->tau_max = -1;
    if (cli_parse("distgan", table, (int)(sizeof table / sizeof table[0]), argc, argv, 1,
                  &o->run.help, usage))
        return 1;
    if (o->transport == T_TCP) {
        if (!o->role_str || (strcmp(o->role_str, "server") && strcmp(o->role_str, "worker"))) {
            fprintf(stderr, "distgan: --transport tcp needs --role server or --role worker%s%s%s\n",
                    o->role_str ? " (not '" : "", o->role_str ? o->role_str : "",
                    o->role_str ? "')" : "");
            return 1;
        }
        o->role = !strcmp(o->role_str, "worker");
    }
    for (i = 1; i < argc; i++) { /* never ignore an option silently */
        size_t j;
        for (j = 0; j < sizeof uses / sizeof uses[0]; j++) {
            const use *u = &uses[j];
            const char *why = NULL;
            if (strcmp(argv[i], u->name)) continue;
            if (!(u->transports & (1u << o->transport))) why = "--transport";
            else if (!(u->algos & (1u << o->algo))) why = "--algo";
            else if (o->transport == T_TCP && !(u->roles & (1u << o->role))) why = "--role";
            if (why) {
                fprintf(stderr, "distgan: %s is not an option of %s %s\n", argv[i], why,
                        why[2] == 't' ? transport_names[o->transport]
                        : why[2] == 'a' ? algo_names[o->algo] : o->role ? "worker" : "server");
                return 1;
            }
        }
    }
    if (o->transport == T_MPI) {
#ifndef DISTGAN_MPI
        fprintf(stderr, "distgan: --transport 'mpi': built without MPI: use build/distgan-mpi "
                        "(make builds it when mpicc exists)\n");
        return 1;
#endif
    }
    if (o->transport != T_INPROC && o->algo == ALGO_GAN) {
        fprintf(stderr, "distgan: --algo gan runs in process only (not --transport %s)\n",
                transport_names[o->transport]);
        return 1;
    }
    if (o->transport == T_TCP && (o->role ? !o->tcp.connect || !o->id_str : !o->tcp.listen)) {
        fprintf(stderr, "distgan: a tcp %s needs %s\n", o->role ? "worker" : "server",
                o->role ? "--connect HOST:PORT and --id n" : "--listen HOST:PORT");
        return 1;
    }
    if (parse_worker_number("--id", o->id_str, o->workers, "", &o->id)) return 1;
    if (o->iid + (o->shards > 0) + (o->alpha > 0) > 1) {
        fprintf(stderr, "distgan: --iid, --shards and --dirichlet exclude each other\n");
        return 1;
    }
    if (!o->k_str || !strcmp(o->k_str, "log")) o->k = o->k_str ? DG_MDGAN_K_LOG2 : 1;
    else if (parse_worker_number("--k", o->k_str, o->workers, " (or 'log')", &o->k)) return 1;
    if (parse_worker_number("--quorum", o->quorum_str, o->workers, " (1..--workers)", &o->quorum))
        return 1;
    if (o->quorum && o->transport == T_INPROC && !o->network) {
        /* in process, time is the model's: without one every feedback
           arrives at 0 and the run is synchronous MD-GAN, bit for bit */
        fprintf(stderr, "distgan: --quorum in process needs --network (the simulated time the "
                        "quorum is counted in)\n");
        return 1;
    }
    for (i = 1; i < argc; i++) /* the asynchronous settings need --quorum, --balanced --fraction */
        if ((!o->quorum && (!strcmp(argv[i], "--deadline") || !strcmp(argv[i], "--staleness") ||
                            !strcmp(argv[i], "--tau-max"))) ||
            (!o->fraction && !strcmp(argv[i], "--balanced"))) {
            fprintf(stderr, "distgan: %s needs %s\n", argv[i],
                    argv[i][2] == 'b' ? "--fraction C" : "--quorum Q (asynchronous MD-GAN)");
            return 1;
        }
    if ((o->crash_str && parse_faults("--crash", o->crash_str, o->crash, &o->n_crash, 1)) ||
        (o->join_str && parse_faults("--join", o->join_str, o->join, &o->n_join, 0)) ||
        (o->slow_str && parse_faults("--slow", o->slow_str, o->slow, &o->n_slow, 1)))
        return 1;
    for (i = 0; i < o->n_crash; i++)
        if (o->crash[i].worker > o->workers + o->n_join) {
            fprintf(stderr, "distgan: --crash: '%s' names worker %d of %d\n", o->crash_str,
                    o->crash[i].worker, o->workers + o->n_join);
            return 1;
        }
    for (i = 0; i < o->n_slow; i++)
        if (o->slow[i].iteration > 3600000) { /* DG_FAULT_DELAY's bound */
            fprintf(stderr, "distgan: --slow: '%s': at most 3600000 ms\n", o->slow_str);
            return 1;
        }
    for (i = 0; i < o->n_join; i++) o->join[i].worker = o->workers + 1 + i;
    if (o->network && (dg_netsim_parse(o->network, &o->net) ||
                       dg_netsim_config_check(&o->net, net_peers(o)))) {
        fprintf(stderr, "distgan: --network '%s': %s\n", o->network, dg_last_error());
        return 1;
    }
    if (o->also_str && parse_also(o)) return 1;
    if (o->codec_str && (dg_codec_set_parse(o->codec_str, &o->codec) ||
                         (o->algo != ALGO_GAN && dg_codec_set_check(&o->codec, o->algo == ALGO_MDGAN)))) {
        fprintf(stderr, "distgan: --codec '%s': %s\n", o->codec_str, dg_last_error());
        return 1;
    }
    if (o->attack_str && o->codec.feedback.kind != DG_CODEC_NONE) {
        /* the fault transport scales float32 parts: coded feedback is bytes */
        fprintf(stderr, "distgan: --attack '%s': attacks float32 feedback, not with --codec "
                        "feedback=%s\n", o->attack_str, dg_codec_name(o->codec.feedback.kind));
        return 1;
    }
    return o->attack_str ? parse_attacks(o) : 0;
}

static const char *mb(double bytes, char *buf)
{
    if (bytes >= 1e9) sprintf(buf, "%.2f GB", bytes / 1e9);
    else sprintf(buf, "%.1f MB", bytes / 1e6);
    return buf;
}

static int fail(const char *what, dg_result r)
{
    fprintf(stderr, "distgan: %s: %s (%s)\n", what, dg_result_str(r), dg_last_error());
    return 1;
}

static void print_log(void *user, const char *line)
{
    (void)user;
    printf("  [event] %s\n", line);
    fflush(stdout);
}

static dg_result write_file(const char *path, const void *buf, size_t n)
{
    FILE *f = fopen(path, "wb");
    int ok;
    if (!f) return DG_ERR_IO;
    ok = fwrite(buf, 1, n, f) == n;
    ok = fclose(f) == 0 && ok;
    return ok ? DG_OK : DG_ERR_IO;
}

/* ---- what the server shows and writes, on every transport ---- */

typedef struct output {
    const options *o;
    dg_evaluator ev;
    dg_csv csv;
    dg_gan_sampler src;
    dg_eval_result floor_er, untrained_er, last_er; /* the summary's reference points */
    int have_eval, have_floor, have_untrained, slots, per_round, started;
    int64_t it, start_it;
    double t0, t_last_print;
    double before[11 + MAX_ALSO]; /* a resumed run's last logged row: bytes, time
                                     and sim_s go on from it */
    /* in process: checkpoints at every evaluation */
    dg_gan_trainer *trainer;
    double step_flops;        /* standalone under --network: a step's FLOPs */
    int sim_restored;         /* the network model resumed from its checkpoint */
    dg_mdgan_run *md;
    dg_flgan_run *fl;
    dg_result error;          /* a failure met in a driver's callback */
} output;

/* The classifier and the floor (real held-out data). */
static int output_open(output *out, const options *o, dg_pool *pool, const dg_dataset *train,
                       const dg_dataset *test)
{
    char clf_path[1100];
    dg_result r;
    out->o = o;
    if (!o->no_eval && train->n_classes >= 2) {
        dg_evaluator_config ec = dg_evaluator_config_init();
        double c0 = dg_clock_seconds();
        if (o->run.classifier) snprintf(clf_path, sizeof clf_path, "%s", o->run.classifier);
        else snprintf(clf_path, sizeof clf_path, "%s/classifier-%.*s.bin", o->run.out,
                      (int)strcspn(o->run.dataset, ":"), o->run.dataset);
        ec.cache_path = clf_path;
        ec.epochs = o->run.clf_epochs;
        ec.ref_max = 10000;
        printf("classifier: loading or training (%d epochs) ...\n", o->run.clf_epochs);
        fflush(stdout);
        if ((r = dg_evaluator_init(&out->ev, pool, train, test->n ? test : NULL, &ec)))
            return fail("classifier", r);
        printf("classifier %s: test accuracy %.2f%% (%.0f s)\n", out->ev.loaded ? "loaded" : "trained",
               100.0 * out->ev.test_accuracy, dg_clock_seconds() - c0);
        out->have_eval = 1;
        /* the floor: real held-out images scored like generated ones */
        if (test->n >= 2) {
            size_t n = (size_t)o->eval_samples < test->n ? (size_t)o->eval_samples : test->n;
            if ((r = dg_evaluator_dataset(&out->ev, test, n, n >= 10 ? 10 : 1, &out->floor_er)))
                return fail("floor", r);
            printf("real test data, %zu samples: score %.2f FID %.2f (the floor)\n", n,
                   out->floor_er.score_mean, out->floor_er.fid_logits);
            out->have_floor = 1;
        }
    }
    printf("log: %s/log.csv\n", o->run.out);
    return 0;
}

#define LOG_COLUMNS "iteration,d_loss,g_loss,score,fid,bytes_down,bytes_up,bytes_w2w,time_s,n_live,sim_s"

/* The log's header: LOG_COLUMNS, then sim_s_2.. of the --also-network ones. */
static const char *log_header(const options *o, char *buf, size_t size)
{
    int k, len = snprintf(buf, size, "%s", LOG_COLUMNS);
    for (k = 0; k < o->n_also; k++) len += snprintf(buf + len, size - (size_t)len, ",sim_s_%d", k + 2);
    return buf;
}

/* The log, opened at the first step: a resumed run (from iteration
   resumed_at) keeps the rows up to its checkpoint and goes on from the
   last one's cumulative columns. */
static int output_log(output *out, int64_t resumed_at)
{
    char path[1100], header[256];
    dg_result r;
    int i;
    snprintf(path, sizeof path, "%s/log.csv", out->o->run.out);
    log_header(out->o, header, sizeof header);
    r = out->o->run.resume ? dg_csv_reopen(&out->csv, path, header, (double)resumed_at, out->before)
                       : dg_csv_open(&out->csv, path, header, 0);
    for (i = 0; i < 11 + out->o->n_also; i++)
        /* the models' clocks go on by themselves */
        if (!out->o->run.resume || isnan(out->before[i]) || (i >= 10 && out->sim_restored))
            out->before[i] = 0;
    return r ? fail("log", r) : 0;
}

/* G before training: the other end of the scale. */
static int output_untrained(output *out)
{
    dg_result r;
    if (!out->have_eval) return 0;
    if ((r = dg_evaluator_run(&out->ev, dg_gan_sampler_sample, &out->src,
                              (size_t)out->o->eval_samples, 10, &out->untrained_er)))
        return fail("evaluation", r);
    printf("untrained G: score %.2f FID %.2f\n", out->untrained_er.score_mean,
           out->untrained_er.fid_logits);
    out->have_untrained = 1;
    return 0;
}

/* Simulated time on network k (0: --network, then --also-network's) since
   the run (re)started: the model's server clock; standalone, its compute at
   the server's speed; NaN without --network. */
static double sim_time(const output *out, dg_transport *t, int64_t it, int k)
{
    const options *o = out->o;
    const dg_netsim_config *net = k ? &o->also[k - 1] : &o->net;
    if (!o->network) return NAN;
    if (out->trainer) return (double)(it - out->start_it) * out->step_flops / (net->server_gflops * 1e9);
    return dg_netsim_clock_of(t, k, DG_PEER_SERVER);
}

/* After each iteration (FL-GAN: round) that reached generator update it:
   the CSV row, the evaluation, grid and in-process checkpoints when due,
   and the progress line. */
static int output_step(output *out, int64_t it, float dl, float gl, int n_live, dg_transport *t)
{
    const options *o = out->o;
    char path[1100], b1[32], b2[32], b3[32], b4[32];
    double score = NAN, fid = NAN, down = 0, up = 0, w2w = NAN, el, sim;
    int64_t prev;
    int last, evaluate, print;
    dg_result r;
    if (!out->started) { /* a driver's first call tells where a resumed run stood */
        out->started = 1;
        out->t0 = dg_clock_seconds();
    }
    if (!out->csv.file && output_log(out, out->start_it)) return 1;
    prev = out->it; /* an FL-GAN round moves by its workers' mean iterations */
    out->it = it;
    if (t) {
        dg_traffic all = dg_transport_traffic(t, DG_ANY_PEER, DG_ANY_PEER);
        down = (double)dg_transport_traffic(t, 0, DG_ANY_PEER).payload_bytes;
        up = (double)dg_transport_traffic(t, DG_ANY_PEER, 0).payload_bytes;
        /* a server process is not on the workers' swap links: only a
           process holding every role sees their bytes */
        if (o->transport == T_INPROC) w2w = (double)all.payload_bytes - down - up;
    }
    last = it >= o->iters;
    evaluate = last || (o->eval_every && it / o->eval_every != prev / o->eval_every);
    if (evaluate) {
        if (out->have_eval) {
            dg_eval_result er;
            if ((r = dg_evaluator_run(&out->ev, dg_gan_sampler_sample, &out->src,
                                      (size_t)o->eval_samples, 10, &er)))
                return fail("evaluation", r);
            score = er.score_mean;
            fid = er.fid_logits;
            out->last_er = er;
        }
        snprintf(path, sizeof path, "%s/samples_%06lld.png", o->run.out, (long long)it);
        if ((r = dg_gan_write_samples(&out->src, GRID_SEED, 100, 10, path))) return fail("grid", r);
        r = DG_OK;
        if (o->run.no_checkpoint) r = DG_OK;
        else if (out->trainer) {
            snprintf(path, sizeof path, "%s/gan.ckpt", o->run.out);
            r = dg_gan_trainer_save(out->trainer, path);
        } else if (out->md) {
            r = dg_mdgan_run_save(out->md, o->run.out);
        } else if (out->fl) {
            r = dg_flgan_run_save(out->fl, o->run.out);
        }
        if (r) return fail("checkpoint", r);
    }
    el = dg_clock_seconds() - out->t0;
    {
        /* bytes exact (payload bytes of this run, see dg_transport_traffic);
           score, FID and sim_s empty (NaN) when not evaluated or simulated */
        const double *b = out->before;
        double row[11 + MAX_ALSO] = {(double)it, dl, gl, score, fid, b[5] + down, b[6] + up,
                                     b[7] + w2w, b[8] + el, n_live};
        int k;
        for (k = 0; k <= o->n_also; k++) row[10 + k] = b[10 + k] + sim_time(out, t, it, k);
        if ((r = dg_csv_row(&out->csv, row, 11 + o->n_also))) return fail("log", r);
        sim = row[10];
    }
    print = o->log_every > 0 ? it % o->log_every == 0 || last : el - out->t_last_print >= 2.0;
    if (evaluate || print || prev == out->start_it) {
        double eta = (double)(o->iters - it) * el / (double)(it - out->start_it);
        printf("it %6lld/%lld | D %.3f G %.3f", (long long)it, (long long)o->iters, dl, gl);
        if (evaluate && out->have_eval) printf(" | score %.2f FID %.2f", score, fid);
        if (o->algo != ALGO_GAN)
            printf(" | live %d/%d | down %s up %s", n_live, out->slots, mb(down, b1), mb(up, b2));
        if (o->algo != ALGO_GAN && !isnan(w2w)) printf(" w2w %s", mb(w2w, b3));
        if (o->network && sim < 60.0) printf(" | sim %.2f s", sim);
        else if (o->network) printf(" | sim %s", dg_format_hms(sim, b2));
        printf(" | %s, ETA %s\n", dg_format_hms(el, b4), dg_format_hms(eta, b1));
        fflush(stdout);
        out->t_last_print = el;
    }
    return 0;
}

/* The end: the last grid, G's parameters (g.f32) and the summary. */
static int output_finish(output *out, dg_net *g)
{
    const options *o = out->o;
    char path[1100];
    dg_result r;
    dg_csv_close(&out->csv);
    snprintf(path, sizeof path, "%s/g.f32", o->run.out);
    if ((r = write_file(path, dg_net_params(g), dg_net_param_count(g) * sizeof(float))))
        return fail(path, r);
    snprintf(path, sizeof path, "%s/samples_final.png", o->run.out);
    if ((r = dg_gan_write_samples(&out->src, GRID_SEED, 100, 10, path))) return fail("grid", r);
    printf("done: %lld iterations in %.1f s\n", (long long)out->it, dg_clock_seconds() - out->t0);
    if (out->have_eval && out->last_er.n) { /* FID on the classifier's logits, lower is better */
        printf("  quality: FID %.1f (real data: ", out->last_er.fid_logits);
        if (out->have_floor) printf("%.1f", out->floor_er.fid_logits);
        else printf("n/a");
        if (out->have_untrained) printf("; untrained G: %.1f", out->untrained_er.fid_logits);
        printf("), classifier score %.2f (real data: ", out->last_er.score_mean);
        if (out->have_floor) printf("%.2f", out->floor_er.score_mean);
        else printf("n/a");
        if (out->have_untrained) printf("; untrained G: %.2f", out->untrained_er.score_mean);
        printf("; 1 to %d)\n", out->ev.n_classes);
    }
    printf("  samples: %s\n  log:     %s/log.csv\n", path, o->run.out);
    return 0;
}

/* The process drivers' callbacks on the server: the same output. */
static void on_progress(void *user, const dg_drive_status *s)
{
    output *out = (output *)user;
    /* MD-GAN: an iteration is an update; FL-GAN: a round is per_round of them */
    int64_t it = s->iteration * out->per_round;
    if (out->error) return;
    if (!out->started) out->it = out->start_it = it - out->per_round;
    out->src.g = s->generator;
    if (output_step(out, it, s->d_loss, s->g_loss, s->n_live, s->transport)) {
        out->error = DG_ERR_IO;
        dg_request_stop(); /* the server checkpoints and stops */
    }
}

static void on_finish(void *user, const dg_drive_status *s)
{
    output *out = (output *)user;
    out->src.g = s->generator;
    if (out->o->quorum) /* over tcp and mpi: how late the stragglers were */
        printf("asynchronous: %lld stale feedbacks used, %lld dropped (tau_max)\n",
               (long long)s->stale_used, (long long)s->stale_dropped);
    if (!out->error && output_finish(out, s->generator)) out->error = DG_ERR_IO;
}

static int make_dir(const char *dir)
{
    if (mkdir(dir, 0777) && errno != EEXIST) {
        /* one level of parents (out/), enough for the defaults */
        char parent[1024];
        char *slash;
        snprintf(parent, sizeof parent, "%s", dir);
        slash = strrchr(parent, '/');
        if (slash) {
            *slash = 0;
            mkdir(parent, 0777);
        }
        if (mkdir(dir, 0777) && errno != EEXIST) {
            fprintf(stderr, "distgan: cannot create %s\n", dir);
            return 1;
        }
    }
    return 0;
}

/* ---- the configurations (the same in every process of a run) ---- */

static dg_mdgan_config mdgan_config(const options *o, const dg_dataset *train,
                                    const dg_partition *part, int n_classes, int slots)
{
    dg_mdgan_config c = dg_mdgan_config_init();
    c.n_workers = o->workers;
    c.max_workers = slots;
    c.c = train->c;
    c.h = train->h;
    c.w = train->w;
    c.n_classes = n_classes;
    c.arch = (dg_arch)o->run.arch;
    c.lr_g = c.lr_d = o->lr;
    c.z_dim = o->z_dim;
    c.batch = o->batch;
    c.k = o->k;
    c.disc_steps = o->L;
    c.fresh_real = !o->real_once;
    c.saturating = o->saturating;
    c.local_epochs = o->E;
    c.swap_every = o->swap_every;
    c.swap_optimizer = !o->swap_opt_stays;
    c.feedback_clip = (float)o->feedback_clip;
    c.quorum = o->quorum;
    c.deadline = o->deadline;
    c.staleness = o->staleness ? DG_STALENESS_CONSTANT : DG_STALENESS_INVERSE;
    c.tau_max = o->tau_max;
    c.codec = o->codec;
    c.seed = o->seed;
    c.barrier_timeout_ms = o->barrier_ms;
    /* m*E/b with m the mean shard size, as dg_mdgan_run_create resolves it:
       a process of a distributed run knows only its own shard */
    if (o->transport != T_INPROC && c.swap_every == 0 && c.local_epochs > 0) {
        double m = (double)part->n / part->n_workers;
        c.swap_every = (int)floor(m * c.local_epochs / c.batch + 0.5);
        if (c.swap_every < 1) c.swap_every = 1;
    }
    return c;
}

static dg_flgan_config flgan_config(const options *o, const dg_dataset *train, int n_classes)
{
    dg_flgan_config c = dg_flgan_config_init();
    c.n_workers = o->workers;
    c.c = train->c;
    c.h = train->h;
    c.w = train->w;
    c.n_classes = n_classes;
    c.arch = (dg_arch)o->run.arch;
    c.lr = o->lr;
    c.z_dim = o->z_dim;
    c.batch = o->batch;
    c.local_epochs = o->E > 0 ? o->E : 1;
    c.local_iters = o->local_iters;
    c.saturating = o->saturating;
    c.fraction = (float)o->fraction;
    c.balanced = o->balanced;
    c.codec = o->codec;
    c.seed = o->seed;
    c.barrier_timeout_ms = o->barrier_ms;
    c.max_shard = (int64_t)train->n; /* the TCP config hash covers n */
    return c;
}

/* FL-GAN's local iterations per round of worker 1 (dg_flgan_worker's rule):
   the unit of the progress of an FL-GAN run. */
static int flgan_per_round(const dg_flgan_config *c, const dg_partition *part)
{
    size_t count;
    int n;
    dg_partition_worker(part, 0, &count);
    n = c->local_iters > 0 ? c->local_iters
                           : (int)floor((double)count * c->local_epochs / c->batch + 0.5);
    return n < 1 ? 1 : n;
}

/* ---- a server or worker process (TCP, MPI) ---- */

/* self 0: the server, with out; n: worker n.  The transport is made. */
static int run_process(const options *o, int self, dg_transport *t, dg_pool *pool,
                       const dg_dataset *train, const dg_partition *part,
                       const dg_mdgan_config *mc, const dg_flgan_config *fc, output *out,
                       const char *who)
{
    dg_drive d;
    char ckpt[1100];
    dg_result r;
    int md = o->algo == ALGO_MDGAN;
    memset(&d, 0, sizeof d);
    if ((r = dg_checkpoint_path(ckpt, sizeof ckpt, o->run.out, !md, self)))
        return fail("checkpoint", r);
    d.checkpoint = o->run.no_checkpoint ? NULL : ckpt;
    d.resume = o->run.resume;
    d.log = cli_log_line;
    d.log_user = (void *)who;
    d.peer_timeout_ms = o->tcp.dead_ms;
    if (self == 0) {
        d.iterations = md ? o->iters : (o->iters + out->per_round - 1) / out->per_round;
        d.checkpoint_every = o->ckpt_every;
        d.progress = on_progress;
        d.finish = on_finish;
        d.user = out;
        r = md ? dg_mdgan_server_drive(mc, t, pool, &d) : dg_flgan_server_drive(fc, t, pool, &d);
        if (r == DG_OK && out->error) r = out->error;
    } else {
        size_t count;
        const uint32_t *idx = dg_partition_worker(part, self - 1, &count);
        r = md ? dg_mdgan_worker_drive(mc, self, t, pool, train, idx, count, &d)
               : dg_flgan_worker_drive(fc, self, t, pool, train, idx, count, &d);
    }
    if (r != DG_OK) {
        fprintf(stderr, "distgan %s: %s: %s\n", who, dg_result_str(r), dg_last_error());
        return 1;
    }
    fprintf(stderr, "[%s] done\n", who);
    return 0;
}

/* --slow: worker id's feedback leaves ms late, through a fault transport
   over its endpoint *t (a straggler for the tests of asynchronous MD-GAN). */
static int slow_down(dg_transport **t, int id, int64_t ms)
{
    dg_fault_spec f = {DG_FAULT_DELAY, id, DG_MSG_FEEDBACK, 0, (float)ms * 1e-3f};
    dg_transport *w;
    dg_result r = dg_fault_transport_create(&w, *t, &f, 1);
    if (r) return fail("--slow", r);
    *t = w;
    return 0;
}

#ifndef DG_NO_TCP
/* The TCP endpoint of this process (server or worker o->id). */
static int open_tcp(const options *o, const dg_dataset *train, const dg_mdgan_config *mc,
                    const dg_flgan_config *fc, dg_transport **t, const char *who)
{
    char extra[256];
    dg_tcp_config tc = dg_tcp_config_init();
    snprintf(extra, sizeof extra, "data %s n=%zu", o->run.dataset, train->n);
    if (o->algo == ALGO_MDGAN) dg_tcp_mdgan_config_hash(mc, extra, tc.config_hash);
    else dg_tcp_flgan_config_hash(fc, extra, tc.config_hash);
    tc.n_peers = o->workers + 1;
    tc.self = o->role ? o->id : 0;
    tc.max_message = o->max_message;
    tc.protocol_version = (uint16_t)o->version;
    return cli_tcp_open("distgan", &o->tcp, &tc, who, "server", t);
}
#endif

#ifdef DISTGAN_MPI
/* The MPI transport of this rank (collective): rank r is peer r, rank 0
   the server, ranks 1..N the workers. */
static int open_mpi(const options *o, dg_transport **t, const char *who)
{
    dg_mpi_config cfg;
    dg_result r;
    int size;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (size - 1 != o->workers) {
        if (o->id == 0)
            fprintf(stderr, "distgan: --transport mpi: %d ranks are the server and %d workers, "
                            "not --workers %d (mpirun -n %d)\n", size, size - 1, o->workers,
                    o->workers + 1);
        return 2;
    }
    dg_mpi_config_init(&cfg);
    if ((r = dg_mpi_create(t, MPI_COMM_WORLD, &cfg)) != DG_OK) {
        fprintf(stderr, "distgan %s: %s: %s\n", who, dg_result_str(r), dg_last_error());
        return 1;
    }
    return 0;
}
#endif

int main(int argc, char **argv)
{
    options o;
    output out;
    dg_pool *pool;
    dg_dataset train, test;
    dg_partition part;
    dg_gan_trainer trainer;
    dg_mdgan_config mc;
    dg_flgan_config fc;
    dg_mdgan_run *md = NULL;
    dg_flgan_run *fl = NULL;
    dg_transport *t = NULL;
    dg_result r;
    char path[1100], b1[32], who[32];
    int n_classes, i, server, status = 0;
    const char *algo_name;

    cli_t_start = dg_clock_seconds();
    if (parse(&o, argc, argv)) return 2;
#ifdef DISTGAN_MPI
    if (o.transport == T_MPI && (r = dg_mpi_init(&argc, &argv)) != DG_OK) return fail("mpi", r);
    if (o.transport == T_MPI) {
        int rank;
        MPI_Comm_rank(MPI_COMM_WORLD, &rank);
        o.id = rank;
    }
#endif
    /* the server: the program in process, the tcp server, MPI rank 0 */
    server = o.transport == T_INPROC || (o.transport == T_TCP ? !o.role : o.id == 0);
    snprintf(who, sizeof who, server ? "server" : "worker %d", o.id);
    if (o.transport != T_INPROC) dg_install_stop_handlers();
    algo_name = algo_names[o.algo];
    memset(&out, 0, sizeof out);
    memset(&part, 0, sizeof part);
    if ((r = dg_pool_create(&pool, o.run.threads))) return fail("pool", r);
    if ((r = dg_dataset_open(o.run.dataset, o.data_seed, &train, &test))) {
        fprintf(stderr, "distgan: --dataset: %s\n", dg_last_error());
        return r == DG_ERR_ARG ? 2 : 1; /* a malformed spec is a usage error */
    }
    if (make_dir(o.run.out)) return 1;
    n_classes = o.acgan ? train.n_classes : 0;
    out.slots = o.algo == ALGO_GAN ? 1 : o.workers + o.n_join;
    out.per_round = 1;
    if (server)
        printf("distgan %s (%s): %s, %zu training images %dx%dx%d, %s, %d threads\n", algo_name,
               transport_names[o.transport], o.run.dataset, train.n, train.c, train.h, train.w,
               dg_arch_name((dg_arch)o.run.arch), dg_pool_size(pool));

    /* the split and the configuration: the same in every process */
    if (o.algo != ALGO_GAN) {
        if (o.shards) r = dg_partition_by_label(&part, &train, out.slots, o.shards, o.seed);
        else if (o.alpha > 0) r = dg_partition_dirichlet(&part, &train, out.slots, o.alpha, (size_t)o.batch, o.seed);
        else r = dg_partition_iid(&part, train.n, out.slots, o.seed);
        if (r) return fail("partition", r);
    }
    mc = mdgan_config(&o, &train, &part, n_classes, out.slots);
    fc = flgan_config(&o, &train, n_classes);
    mc.log = fc.log = o.transport == T_INPROC ? print_log : cli_log_line;
    mc.log_user = fc.log_user = who;
    if (o.algo == ALGO_FLGAN) out.per_round = flgan_per_round(&fc, &part);

    /* the evaluator and the log of an in-process run */
    if (o.transport == T_INPROC && output_open(&out, &o, pool, &train, &test)) return 1;
    memset(&out.src, 0, sizeof out.src);
    out.src.z_dim = o.z_dim;
    out.src.n_classes = n_classes;
    out.src.seed = o.seed + 0x5eed; /* evaluation samples, as dg_gan_trainer_sample */
    out.src.chunk = o.algo == ALGO_MDGAN ? o.batch * dg_mdgan_k(&mc) : o.batch;
    out.src.g_in = (float *)malloc(sizeof(float) * (size_t)out.src.chunk * (o.z_dim + n_classes));
    if (!out.src.g_in) return fail("memory", DG_ERR_NOMEM);

    if (o.transport != T_INPROC) {
        /* the endpoint first: under MPI the workers then wait in a receive
           (asleep) while the server trains its classifier */
#ifndef DG_NO_TCP
        if (o.transport == T_TCP) status = open_tcp(&o, &train, &mc, &fc, &t, who);
#endif
#ifdef DISTGAN_MPI
        if (o.transport == T_MPI) status = open_mpi(&o, &t, who);
#endif
        if (!status && server) status = output_open(&out, &o, pool, &train, &test);
        if (!status && server && o.algo == ALGO_MDGAN)
            printf("MD-GAN: N = %d, k = %d, L = %d, b = %d, swap every %d iterations\n", o.workers,
                   dg_mdgan_k(&mc), o.L, o.batch, mc.swap_every);
        else if (!status && server)
            printf("FL-GAN: N = %d, %d local iterations (E = %d) per round\n", o.workers,
                   out.per_round, fc.local_epochs);
        for (i = 0; !status && !server && i < o.n_slow; i++)
            if (o.slow[i].worker == o.id) status = slow_down(&t, o.id, o.slow[i].iteration);
        if (!status) status = run_process(&o, o.id, t, pool, &train, &part, &mc, &fc, &out, who);
#ifdef DISTGAN_MPI
        if (status && t && o.transport == T_MPI) MPI_Abort(MPI_COMM_WORLD, status); /* fail-stop */
#endif
        if (t) dg_transport_close(t);
        if (server && out.have_eval) dg_evaluator_free(&out.ev);
    } else {
        if (o.algo == ALGO_GAN) {
            dg_gan_config gc = dg_gan_config_init();
            gc.arch = (dg_arch)o.run.arch;
            gc.lr = o.lr;
            gc.z_dim = o.z_dim;
            gc.batch = o.batch;
            gc.seed = o.seed;
            gc.acgan = o.acgan;
            gc.saturating = o.saturating;
            gc.d_steps = o.L;
            gc.iterations = o.iters;
            if ((r = dg_gan_trainer_init(&trainer, &gc, &train, pool))) return fail("trainer", r);
            snprintf(path, sizeof path, "%s/gan.ckpt", o.run.out);
            if (o.run.resume && (r = dg_gan_trainer_load(&trainer, path))) return fail("resume", r);
            out.src.g = trainer.g;
            out.start_it = trainer.iter;
            out.trainer = &trainer;
            out.step_flops = dg_gan_step_flops(trainer.g, trainer.d, o.batch, o.L);
        } else if (o.algo == ALGO_MDGAN) {
            if ((r = dg_mdgan_run_create(&md, &mc, pool, &train, &part, o.crash, o.n_crash, o.join,
                                         o.n_join)))
                return fail("mdgan", r);
            t = dg_mdgan_run_transport(md);
            for (i = 0; i < o.n_attack; i++)
                if ((r = dg_fault_transport_add(t, &o.attack[i]))) return fail("attack", r);
            /* before load: the clocks of the network model are in the checkpoint */
            if (o.network && (r = dg_mdgan_run_set_network(md, &o.net))) return fail("network", r);
            for (i = 0; i < o.n_also; i++)
                if ((r = dg_mdgan_run_add_network(md, &o.also[i]))) return fail("--also-network", r);
            if (o.run.resume && (r = dg_mdgan_run_load(md, o.run.out))) return fail("resume", r);
            out.src.g = dg_mdgan_server_generator(dg_mdgan_run_server(md));
            out.start_it = dg_mdgan_server_stats(dg_mdgan_run_server(md))->iteration;
            out.md = md;
            if (o.swap_every) snprintf(b1, sizeof b1, "%d", o.swap_every);
            else snprintf(b1, sizeof b1, "%s", o.E ? "m*E/b" : "no");
            printf("MD-GAN: N = %d, k = %d, L = %d, b = %d, swap every %s iterations, |w| = %zu, "
                   "|θ| = %zu\n", o.workers, dg_mdgan_k(&mc), o.L, o.batch, b1,
                   dg_net_param_count(out.src.g),
                   dg_net_param_count(dg_mdgan_worker_discriminator(dg_mdgan_run_worker(md, 1))));
            if (o.quorum)
                printf("asynchronous: quorum %d, deadline %g s, staleness %s, tau_max %d\n",
                       o.quorum, o.deadline, o.staleness ? "constant" : "1/tau", o.tau_max);
        } else {
            if ((r = dg_flgan_run_create(&fl, &fc, pool, &train, &part, o.crash, o.n_crash)))
                return fail("flgan", r);
            t = dg_flgan_run_transport(fl);
            if (o.network && (r = dg_flgan_run_set_network(fl, &o.net))) return fail("network", r);
            for (i = 0; i < o.n_also; i++)
                if ((r = dg_flgan_run_add_network(fl, &o.also[i]))) return fail("--also-network", r);
            if (o.run.resume && (r = dg_flgan_run_load(fl, o.run.out))) return fail("resume", r);
            out.src.g = dg_flgan_server_generator(dg_flgan_run_server(fl));
            out.fl = fl;
            out.start_it = dg_flgan_server_stats(dg_flgan_run_server(fl))->iterations;
            printf("FL-GAN: N = %d, %d local iterations (E = %d) per round\n", o.workers,
                   out.per_round, fc.local_epochs);
            if (o.fraction > 0)
                printf("FeGAN: a fraction C = %g of the workers per round%s\n", o.fraction,
                       o.balanced ? ", drawn proportionally to their shard sizes" : "");
        }
        out.sim_restored = t && dg_netsim_clock(t, DG_PEER_SERVER) > 0.0;
        if (out.start_it == 0 && output_untrained(&out)) return 1;
        out.started = 1;
        out.t0 = dg_clock_seconds();
        out.it = out.start_it;
        while (out.it < o.iters) {
            if (o.algo == ALGO_GAN) {
                dg_gan_stats st;
                if ((r = dg_gan_trainer_step(&trainer, &st))) return fail("step", r);
                if (output_step(&out, st.iter, st.d_loss, st.g_loss, 1, NULL)) return 1;
            } else if (o.algo == ALGO_MDGAN) {
                const dg_mdgan_stats *st;
                if ((r = dg_mdgan_run_iteration(md))) return fail("iteration", r);
                st = dg_mdgan_server_stats(dg_mdgan_run_server(md));
                if (output_step(&out, st->iteration, st->d_loss, st->g_loss, st->n_live, t)) return 1;
            } else {
                const dg_flgan_stats *st;
                if ((r = dg_flgan_run_round(fl))) return fail("round", r);
                st = dg_flgan_server_stats(dg_flgan_run_server(fl));
                if (output_step(&out, st->iterations, st->d_loss, st->g_loss, st->n_live, t)) return 1;
            }
        }
        if (output_finish(&out, out.src.g)) return 1;
        if (md) dg_mdgan_run_free(md);
        if (fl) dg_flgan_run_free(fl);
        if (o.algo == ALGO_GAN) dg_gan_trainer_free(&trainer);
        if (out.have_eval) dg_evaluator_free(&out.ev);
    }
    if (o.algo != ALGO_GAN) dg_partition_free(&part);
    free(out.src.g_in);
    dg_dataset_free(&train);
    dg_dataset_free(&test);
    dg_pool_destroy(pool);
#ifdef DISTGAN_MPI
    if (o.transport == T_MPI) MPI_Finalize();
#endif
    return status;
}

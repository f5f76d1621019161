/* examples/cli.h: what the programs (the examples and tools/plot.c) do alike
 * around the library: their options with --help, the log line of a
 * distributed run's process, and the TCP endpoint from the TCP options they
 * share.  Include after distgan.h. */
#ifndef DG_EXAMPLES_CLI_H
#define DG_EXAMPLES_CLI_H
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* dg_options_parse of argv[first..argc): 0 to go on; after a bad option,
   "<prog>: <why>" on stderr and 1; once the table has set *help, the usage
   on stdout and exit(0). */
static inline int cli_parse(const char *prog, const dg_option *table, int n, int argc, char **argv,
                     int first, const int *help, void (*usage)(FILE *))
{
    if (dg_options_parse(table, n, argc, argv, first)) {
        fprintf(stderr, "%s: %s\n", prog, dg_last_error());
        return 1;
    }
    if (*help) {
        usage(stdout);
        exit(0);
    }
    return 0;
}

/* The options gan and distgan share: the data, the networks, the
   classifier that scores the samples, the threads, the output folder and
   its checkpoint.  CLI_RUN_OPTIONS(&o->run) puts their rows in a table. */
typedef struct cli_run {
    const char *dataset, *classifier, *out;
    int arch, clf_epochs, threads, resume, no_checkpoint, help;
} cli_run;

#define CLI_RUN_OPTIONS(r)                                                 \
    {"--dataset", DG_OPT_STRING, &(r)->dataset, 0, 0, NULL},               \
    {"--arch", DG_OPT_CHOICE, &(r)->arch, 0, 0, "dcgan|mlp|tiny"},         \
    {"--classifier", DG_OPT_STRING, &(r)->classifier, 0, 0, NULL},         \
    {"--clf-epochs", DG_OPT_INT, &(r)->clf_epochs, 0, 1000, NULL},         \
    {"--threads", DG_OPT_INT, &(r)->threads, 0, 1024, NULL},               \
    {"--out", DG_OPT_STRING, &(r)->out, 0, 0, NULL},                       \
    {"--resume", DG_OPT_FLAG, &(r)->resume, 0, 0, NULL},                   \
    {"--no-checkpoint", DG_OPT_FLAG, &(r)->no_checkpoint, 0, 0, NULL},     \
    {"--help", DG_OPT_FLAG, &(r)->help, 0, 0, NULL}

/* The events of a process of a distributed run, on stderr, "[worker 2
   3.21s] ...": user names the process; main sets cli_t_start. */
static double cli_t_start;
static inline void cli_log_line(void *user, const char *line)
{
    fprintf(stderr, "[%s %7.2fs] %s\n", (const char *)user, dg_clock_seconds() - cli_t_start, line);
    fflush(stderr);
}

/* --listen, --connect, --secret-file, --insecure, --dead-ms, --heartbeat-ms:
   CLI_TCP_OPTIONS(o->tcp) puts their rows in a table. */
typedef struct cli_tcp {
    const char *listen, *connect, *secret_file;
    int insecure, dead_ms, heartbeat_ms;
} cli_tcp;

#define CLI_TCP_OPTIONS(t)                                                 \
    {"--listen", DG_OPT_STRING, &(t).listen, 0, 0, NULL},                  \
    {"--connect", DG_OPT_STRING, &(t).connect, 0, 0, NULL},                \
    {"--secret-file", DG_OPT_STRING, &(t).secret_file, 0, 0, NULL},        \
    {"--insecure", DG_OPT_FLAG, &(t).insecure, 0, 0, NULL},                \
    {"--dead-ms", DG_OPT_INT, &(t).dead_ms, 0, 86400000, NULL},            \
    {"--heartbeat-ms", DG_OPT_INT, &(t).heartbeat_ms, 0, 86400000, NULL}

#ifndef DG_NO_TCP
/* This process's TCP endpoint: tc comes in with what the program sets
   itself (n_peers, self, config_hash, ...) and gets the options o, their
   secret, cli_log_line naming the process `who`, and 30 s of redialling (a
   worker started before its server, or refused while it is full); then the
   server's (tc->self == 0) or a worker's transport, the server saying
   "<server> listening on port N" on stdout.  1 after the error on stderr. */
static inline int cli_tcp_open(const char *prog, const cli_tcp *o, dg_tcp_config *tc, const char *who,
                        const char *server, dg_transport **t)
{
    unsigned char *secret = NULL;
    size_t secret_len = 0;
    dg_result r;
    if (o->secret_file && dg_tcp_read_secret(o->secret_file, &secret, &secret_len) != DG_OK) {
        fprintf(stderr, "%s: %s\n", prog, dg_last_error());
        return 1;
    }
    tc->listen = o->listen;
    tc->connect = o->connect;
    tc->secret = secret;
    tc->secret_len = secret_len;
    tc->allow_insecure = o->insecure;
    tc->dead_ms = o->dead_ms;
    tc->heartbeat_ms = o->heartbeat_ms;
    tc->retry_ms = 30000;
    tc->log = cli_log_line;
    tc->log_user = (void *)who;
    r = tc->self ? dg_tcp_worker_create(t, tc) : dg_tcp_server_create(t, tc);
    if (secret) memset(secret, 0, secret_len); /* the transport keeps its own key */
    dg_tcp_free(secret);
    tc->secret = NULL;
    if (r != DG_OK) {
        fprintf(stderr, "%s %s: %s: %s\n", prog, who, dg_result_str(r), dg_last_error());
        return 1;
    }
    if (!tc->self) {
        printf("%s listening on port %u\n", server, (unsigned)dg_tcp_port(*t));
        fflush(stdout);
    }
    return 0;
}
#endif
#endif

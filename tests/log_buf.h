/* tests/log_buf.h: a log callback (dg_tcp_config.log, dg_drive.log) that
 * keeps the lines for the checks, from any thread:
 *
 *   static log_buf lb;  pthread_mutex_init(&lb.mu, NULL);
 *   c.log = log_to;  c.log_user = &lb;  ...  log_count(&lb, "joined")
 *
 * The first 64 KB are kept; lb.text is the log so far. */
#ifndef DG_TEST_LOG_BUF_H
#define DG_TEST_LOG_BUF_H
#include <pthread.h>
#include <stdio.h>
#include <string.h>

typedef struct log_buf {
    pthread_mutex_t mu;
    char text[1 << 16];
    size_t len;
} log_buf;

static void log_to(void *user, const char *line)
{
    log_buf *b = (log_buf *)user;
    pthread_mutex_lock(&b->mu);
    b->len += (size_t)snprintf(b->text + b->len, sizeof b->text - b->len, "%s\n", line);
    if (b->len >= sizeof b->text) b->len = sizeof b->text - 1;
    pthread_mutex_unlock(&b->mu);
}

/* forgets the lines so far */
static inline void log_clear(log_buf *b)
{
    pthread_mutex_lock(&b->mu);
    b->len = 0;
    b->text[0] = 0;
    pthread_mutex_unlock(&b->mu);
}

static int log_count(log_buf *b, const char *needle)
{
    int k = 0;
    const char *p;
    pthread_mutex_lock(&b->mu);
    for (p = b->text; (p = strstr(p, needle)) != NULL; p++) k++;
    pthread_mutex_unlock(&b->mu);
    return k;
}
#endif

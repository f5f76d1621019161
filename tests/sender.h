/* tests/sender.h: a thread that sends n messages on a transport, the i-th
 * made by make(s, i), for the tests of a queue or a connection under load:
 *
 *   sender s = {t, 1, 6000, 0, make_one};
 *   pthread_create(&th, NULL, sender_main, &s);  ...  pthread_join(th, &ret)
 *
 * sent counts the messages sent so far (read it with __atomic_load_n while
 * the thread runs); the thread stops at the first message it cannot make
 * or send and then returns s, else NULL.  Include after distgan.h. */
#ifndef DG_TEST_SENDER_H
#define DG_TEST_SENDER_H

typedef struct sender {
    dg_transport *t;
    int id;       /* the sending peer, for make */
    int n, sent;
    dg_msg *(*make)(const struct sender *s, int i);
} sender;

static void *sender_main(void *arg)
{
    sender *s = (sender *)arg;
    int i;
    for (i = 0; i < s->n; i++) {
        dg_msg *m = s->make(s, i);
        if (!m || dg_transport_send(s->t, m) != DG_OK) return s;
        __atomic_store_n(&s->sent, i + 1, __ATOMIC_RELEASE);
    }
    return NULL;
}
#endif

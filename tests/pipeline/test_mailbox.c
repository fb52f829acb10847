/* test_mailbox.c - the bounded blocking FIFO: order, bounds, timeouts, close,
 * and a producer/consumer pair across threads. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdint.h>
#include "daemon/pipeline/mailbox.h"
#include "kernels/common.h"

static int freed;
static void count_free(void *m) { (void)m; freed++; }

static void test_fifo_bounds(void **state)
{
    (void)state;
    nb_mbox_t *b = nb_mbox_new(2, count_free);
    assert_non_null(b);
    assert_int_equal(nb_mbox_try_push(b, (void *)1), 0);
    assert_int_equal(nb_mbox_try_push(b, (void *)2), 0);
    assert_int_equal(nb_mbox_try_push(b, (void *)3), NB_ELIMIT);
    void *m;
    assert_int_equal(nb_mbox_pop(b, &m, 0), 0);
    assert_ptr_equal(m, (void *)1);
    assert_int_equal(nb_mbox_try_push(b, (void *)3), 0);
    assert_int_equal(nb_mbox_pop(b, &m, 0), 0);
    assert_ptr_equal(m, (void *)2);
    assert_int_equal(nb_mbox_len(b), 1);
    freed = 0;
    nb_mbox_free(b); /* frees the one left */
    assert_int_equal(freed, 1);
    assert_null(nb_mbox_new(0, NULL));
}

static void test_timeout_and_close(void **state)
{
    (void)state;
    nb_mbox_t *b = nb_mbox_new(4, NULL);
    void *m;
    assert_int_equal(nb_mbox_pop(b, &m, 20), NB_ETIMEDOUT);
    assert_int_equal(nb_mbox_try_pop(b, &m), NB_ELIMIT);
    assert_int_equal(nb_mbox_push(b, (void *)7), 0);
    nb_mbox_close(b);
    assert_int_equal(nb_mbox_push(b, (void *)8), NB_ECLOSED);
    assert_int_equal(nb_mbox_pop(b, &m, -1), 0); /* drains after close */
    assert_ptr_equal(m, (void *)7);
    assert_int_equal(nb_mbox_pop(b, &m, -1), NB_ECLOSED);
    nb_mbox_free(b);
}

static void *producer(void *arg)
{
    nb_mbox_t *b = arg;
    for (uintptr_t i = 1; i <= 10000; i++)
        if (nb_mbox_push(b, (void *)i) != 0)
            return (void *)1;
    return NULL;
}

static void test_threads_keep_order(void **state)
{
    (void)state;
    nb_mbox_t *b = nb_mbox_new(3, NULL);
    pthread_t t;
    pthread_create(&t, NULL, producer, b);
    for (uintptr_t i = 1; i <= 10000; i++) {
        void *m;
        assert_int_equal(nb_mbox_pop(b, &m, 5000), 0);
        assert_true((uintptr_t)m == i);
        assert_true(nb_mbox_len(b) <= 3);
    }
    void *rv;
    pthread_join(t, &rv);
    assert_null(rv);
    nb_mbox_free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fifo_bounds),
        cmocka_unit_test(test_timeout_and_close),
        cmocka_unit_test(test_threads_keep_order),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

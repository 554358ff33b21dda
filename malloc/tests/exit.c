// Threads whose first call to malloc's family is a free from a pthread_key
// destructor: glibc runs those after the thread's thread-local destructors,
// so the thread's cache is taken during its exit and must still be given
// back. A cache left in the registry from a dead thread became a cycle
// once a new thread reused that thread's stack (malloc_trim and exit then
// looped for ever), or was read after its stack was unmapped (a crash).
// Run under a timeout: a hang is the failure.
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static pthread_key_t key;

static void free_block(void *p) { free(p); }  // this thread's first call

static void *hold(void *block) {  // no allocation of its own
    pthread_setspecific(key, block);
    return NULL;
}

static void *churn(void *arg) {
    (void)arg;
    for (int i = 0; i < 100000; i++) free(malloc(i % 700 + 1));
    return NULL;
}

static int run(size_t stack, int threads) {
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, stack);
    for (int i = 0; i < threads; i++) {
        char *block = malloc(32);
        if (!block) return 1;
        memset(block, 0x5a, 32);
        pthread_t t;
        if (pthread_create(&t, &attr, hold, block) != 0) return 1;
        pthread_join(t, NULL);
    }
    pthread_attr_destroy(&attr);
    return 0;
}

int main(void) {
    pthread_key_create(&key, free_block);
    // Two threads meet at the lock: the caches come on.
    pthread_t t[2];
    for (int i = 0; i < 2; i++) pthread_create(&t[i], NULL, churn, NULL);
    for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
    free(malloc(40));  // this thread caches too
    // Stacks of the default size are reused; 64 MiB ones are unmapped.
    if (run(8 << 20, 300) || run(64 << 20, 20)) {
        puts("strata-malloc exit: FAIL (allocation)");
        return 1;
    }
    malloc_trim(0);  // drains every cache on the registry's list
    puts("strata-malloc exit: PASS");
    return 0;  // exit(): this thread's cache leaves the list
}

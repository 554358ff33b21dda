/* Four threads of malloc/free/realloc churn, 16 B to 4 KiB (one in eight up
 * to 64 KiB), up to 2000 live blocks each, every block's contents checked
 * when it is freed. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LIVE 2000
#define OPS 1500000

static uint64_t rng(uint64_t *s) {
    *s ^= *s >> 12; *s ^= *s << 25; *s ^= *s >> 27;
    return *s * 0x2545F4914F6CDD1DULL;
}

static void *run(void *arg) {
    uint64_t s = 0x9E3779B97F4A7C15ULL + (uintptr_t)arg;
    unsigned char *p[LIVE] = {0};
    size_t n[LIVE] = {0};
    for (int i = 0; i < OPS; i++) {
        int k = rng(&s) % LIVE;
        if (p[k]) {
            unsigned char tag = (unsigned char)k;
            if (p[k][0] != tag || p[k][n[k] - 1] != tag || p[k][n[k] / 2] != tag) {
                fprintf(stderr, "corrupt block\n");
                exit(1);
            }
            if (rng(&s) % 8 == 0) {
                size_t m = 16 + rng(&s) % 4096;
                p[k] = realloc(p[k], m);
                memset(p[k], tag, m);
                n[k] = m;
                continue;
            }
            free(p[k]);
        }
        size_t m = rng(&s) % 8 == 0 ? 16 + rng(&s) % 65536 : 16 + rng(&s) % 4096;
        p[k] = malloc(m);
        memset(p[k], (unsigned char)k, m);
        n[k] = m;
    }
    for (int k = 0; k < LIVE; k++) free(p[k]);
    return NULL;
}

int main(void) {
    pthread_t t[4];
    for (int i = 0; i < 4; i++) pthread_create(&t[i], NULL, run, (void *)(uintptr_t)i);
    for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
    puts("ok");
    return 0;
}

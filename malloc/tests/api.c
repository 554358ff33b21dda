/* The C allocation API of strata-malloc, checked from C: every function's
 * contract as glibc has it, contents under 8 threads with cross-thread
 * frees, fork() while other threads allocate, and the refusal of frees
 * strata does not own. Built twice by `make test-malloc`: run under
 * LD_PRELOAD=libstrata_malloc.so, and linked with libstrata_malloc.a. Exits
 * non-zero on the first failed check. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int failures;

#define CHECK(cond, ...)                                                        \
    do {                                                                        \
        if (!(cond)) {                                                          \
            fprintf(stderr, "api.c:%d: check failed: %s: ", __LINE__, #cond);   \
            fprintf(stderr, __VA_ARGS__);                                       \
            fprintf(stderr, "\n");                                              \
            failures++;                                                         \
        }                                                                       \
    } while (0)

static size_t (*refused)(void);

static uint64_t rng(uint64_t *s) {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545F4914F6CDD1DULL;
}

static int all(const unsigned char *p, size_t n, unsigned char v) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != v) return 0;
    return 1;
}

static void basics(void) {
    /* malloc(0): a unique pointer that can be freed. */
    void *a = malloc(0), *b = malloc(0);
    CHECK(a && b && a != b, "malloc(0) gave %p and %p", a, b);
    free(a);
    free(b);
    free(NULL);

    /* Every block is 16-aligned and holds its usable size. */
    for (size_t n = 1; n < 300000; n = n * 5 / 4 + 1) {
        unsigned char *p = malloc(n);
        CHECK(p && ((uintptr_t)p & 15) == 0, "malloc(%zu) = %p", n, (void *)p);
        size_t u = malloc_usable_size(p);
        CHECK(u >= n, "malloc_usable_size = %zu for %zu", u, n);
        memset(p, 0xAB, u);
        free(p);
    }
    CHECK(malloc_usable_size(NULL) == 0, "usable size of NULL");

    /* Exhaustion is null with ENOMEM, never a crash. */
    errno = 0;
    CHECK(malloc(SIZE_MAX) == NULL && errno == ENOMEM, "malloc(SIZE_MAX), errno %d", errno);
#if SIZE_MAX > 0xffffffffu
    errno = 0;
    CHECK(malloc((size_t)1 << 47) == NULL && errno == ENOMEM, "malloc(2^47), errno %d", errno);
#endif
    errno = 0;
    CHECK(malloc(SIZE_MAX / 2) == NULL && errno == ENOMEM, "malloc(SIZE_MAX / 2), errno %d", errno);

    /* calloc: zeroed, even on reused memory; overflow checked. */
    for (int round = 0; round < 2; round++) {
        unsigned char *p = malloc(5000);
        memset(p, 0xFF, 5000);
        free(p);
        unsigned char *q = calloc(1000, 5);
        CHECK(q && all(q, 5000, 0), "calloc returned dirty memory");
        free(q);
    }
    errno = 0;
    CHECK(calloc(SIZE_MAX / 2, 3) == NULL && errno == ENOMEM, "calloc overflow, errno %d", errno);
    void *z = calloc(0, 10);
    CHECK(z != NULL, "calloc(0, 10)");
    free(z);
}

static void reallocs(void) {
    /* realloc(NULL, n) allocates; realloc(p, 0) frees and returns NULL. */
    unsigned char *p = realloc(NULL, 100);
    CHECK(p != NULL, "realloc(NULL, 100)");
    memset(p, 7, 100);
    /* Grows and shrinks keep the prefix, through every layer. */
    size_t sizes[] = {24, 600, 100000, 3000000, 40, 70000, 8};
    size_t old = 100;
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        size_t n = sizes[i];
        unsigned char *q = realloc(p, n);
        CHECK(q != NULL, "realloc to %zu", n);
        size_t keep = old < n ? old : n;
        CHECK(all(q, keep, 7), "realloc to %zu lost the first %zu bytes", n, keep);
        memset(q, 7, n);
        p = q;
        old = n;
    }
    errno = 0;
    CHECK(realloc(p, 0) == NULL, "realloc(p, 0) returns NULL");

    /* Every realloc is 16-aligned, as malloc is: a block shrunk in place to
     * 39 bytes (40 usable, 8 mod 16) and then moved to a small size once
     * landed in a class whose blocks are 8 bytes apart (the hostile pass:
     * 936 of 2000 such reallocs were only 8-aligned). */
    enum { ROUNDS = 2000 };
    static unsigned char *moved[ROUNDS], *tails[ROUNDS];
    for (int i = 0; i < ROUNDS; i++) {
        unsigned char *a = malloc(2630);
        a = realloc(a, 39);
        tails[i] = malloc(2500);
        moved[i] = realloc(a, 243);
        CHECK(moved[i] && ((uintptr_t)moved[i] & 15) == 0, "realloc(%p, 243) = %p", (void *)a, (void *)moved[i]);
    }
    for (int i = 0; i < ROUNDS; i++) {
        free(moved[i]);
        free(tails[i]);
    }

    /* And in a random program of small, medium and large sizes: on 32-bit
     * targets, whose heap aligns its chunks to 8 only, reallocs that moved
     * or grew backward were 8-aligned (1 575 of 70 000 in this program). */
    {
        enum { SLOTS = 1000 };
        static unsigned char *live[SLOTS];
        static size_t len[SLOTS];
        uint64_t s = 0x5eed;
        for (int step = 0; step < 200000; step++) {
            int k = (int)(rng(&s) % SLOTS);
            size_t n = rng(&s) % 8 == 0 ? 1 + rng(&s) % 70000 : 1 + rng(&s) % 600;
            if (!live[k]) {
                live[k] = malloc(n);
                CHECK(live[k] && ((uintptr_t)live[k] & 15) == 0, "malloc(%zu) = %p", n, (void *)live[k]);
            } else if (rng(&s) % 2) {
                unsigned char *q = realloc(live[k], n);
                CHECK(q && ((uintptr_t)q & 15) == 0, "realloc(%p, %zu) = %p", (void *)live[k], n, (void *)q);
                size_t keep = len[k] < n ? len[k] : n;
                CHECK(q && all(q, keep, (unsigned char)k), "realloc to %zu lost the first %zu bytes", n, keep);
                if (!q) return;
                live[k] = q;
            } else {
                free(live[k]);
                live[k] = NULL;
                continue;
            }
            if (!live[k]) return;
            memset(live[k], (unsigned char)k, n);
            len[k] = n;
        }
        for (int k = 0; k < SLOTS; k++) free(live[k]);
    }

    /* A failed realloc leaves the block as it was. */
    p = malloc(64);
    memset(p, 9, 64);
    errno = 0;
    CHECK(realloc(p, SIZE_MAX - 4096) == NULL && errno == ENOMEM, "huge realloc, errno %d", errno);
    CHECK(all(p, 64, 9) && malloc_usable_size(p) >= 64, "a failed realloc changed the block");
    errno = 0;
    CHECK(reallocarray(p, SIZE_MAX / 2, 3) == NULL && errno == ENOMEM, "reallocarray overflow");
    CHECK(all(p, 64, 9), "a failed reallocarray changed the block");
    unsigned char *q = reallocarray(p, 10, 100);
    CHECK(q && all(q, 64, 9), "reallocarray(p, 10, 100)");
    free(q);
}

static void aligned(void) {
    for (size_t align = sizeof(void *); align <= (1 << 20); align *= 2) {
        void *p = (void *)1;
        CHECK(posix_memalign(&p, align, 100) == 0 && p && ((uintptr_t)p & (align - 1)) == 0,
              "posix_memalign(%zu) = %p", align, p);
        CHECK(malloc_usable_size(p) >= 100, "usable size of an aligned block");
        memset(p, 1, 100);
        p = realloc(p, 5000);
        CHECK(p != NULL, "realloc of an aligned block");
        free(p);
        void *q = aligned_alloc(align, align * 3);
        CHECK(q && ((uintptr_t)q & (align - 1)) == 0, "aligned_alloc(%zu) = %p", align, q);
        free(q);
    }
    void *p = (void *)1;
    CHECK(posix_memalign(&p, 24, 100) == EINVAL && p == (void *)1, "posix_memalign(24) must be EINVAL");
    CHECK(posix_memalign(&p, sizeof(void *) / 2, 100) == EINVAL && p == (void *)1,
          "posix_memalign(sizeof(void *) / 2) must be EINVAL");
    errno = 0;
    CHECK(posix_memalign(&p, 64, SIZE_MAX - 100) == ENOMEM && p == (void *)1 && errno == 0,
          "posix_memalign out of memory: ENOMEM returned, errno unchanged, *out untouched");
    errno = 0;
    CHECK(aligned_alloc(24, 100) == NULL && errno == EINVAL, "aligned_alloc(24), errno %d", errno);
    void *m = memalign(24, 100);
    CHECK(m && ((uintptr_t)m & 31) == 0, "memalign(24) rounds up to 32: %p", m);
    free(m);
    long page = sysconf(_SC_PAGESIZE);
    void *v = valloc(10);
    CHECK(v && ((uintptr_t)v & (page - 1)) == 0, "valloc: %p", v);
    free(v);
    void *pv = pvalloc(0);
    CHECK(pv && ((uintptr_t)pv & (page - 1)) == 0 && malloc_usable_size(pv) >= (size_t)page, "pvalloc(0)");
    free(pv);
}

static void refusals(void) {
    size_t before = refused();
    int local;
    free(&local);                                   /* a stack address */
    CHECK(refused() == before + 1, "a foreign free was not refused");
    CHECK(malloc_usable_size(&local) == 0, "usable size of a foreign pointer");
    char *p = malloc(3000);
    free(p);
    free(p);                                        /* a double free */
    CHECK(refused() == before + 2, "a double free was not refused: %zu refusals, %zu before", refused(), before);
    /* free(a); free(b); free(a): a double free deep in a free list (seen
     * by the tags free blocks carry on 64-bit x86_64 and aarch64 only). */
#if defined(__x86_64__) || defined(__aarch64__)
    for (int i = 0; i < 300; i++) free(malloc(64));
    char *a = malloc(64), *b = malloc(64), *c = malloc(64);
    memset(c, 0xC3, 64);
    before = refused();
    free(a);
    free(b);
    free(a);
    CHECK(refused() == before + 1, "free(a); free(b); free(a) was not refused");
    char *fresh[32];
    for (int i = 0; i < 32; i++) {
        fresh[i] = malloc(64);
        CHECK(fresh[i] != c, "a live block was handed out after a double free");
        for (int j = 0; j < i; j++) CHECK(fresh[i] != fresh[j], "a block was handed out twice");
    }
    CHECK(all((unsigned char *)c, 64, 0xC3), "a live block was overwritten");
    for (int i = 0; i < 32; i++) free(fresh[i]);
    free(c);
#endif
    errno = 0;
    CHECK(realloc(&local, 10) == NULL && errno == ENOMEM, "realloc of a foreign pointer");
    /* The heap still works. */
    char *q = malloc(3000);
    CHECK(q != NULL, "malloc after refusals");
    free(q);
}

static long rss_kb(void) {
    long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f || fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = -1;
    if (f) fclose(f);
    return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

/* Memory goes back to the OS: a freed block of a megabyte or more, the tail
 * a shrinking realloc gives back, and, on malloc_trim, free space made of
 * smaller blocks. */
static void memory_back(void) {
    long base = rss_kb();
    char *big = malloc(64 << 20);
    memset(big, 1, 64 << 20);
    CHECK(rss_kb() - base > 60000, "64 MiB written: RSS %ld kB over the start", rss_kb() - base);
    big = realloc(big, 4096);
    CHECK(rss_kb() - base < 8000, "a 64 MiB block shrunk to 4 KiB keeps %ld kB resident", rss_kb() - base);
    free(big);
    char *blocks[128];
    for (int i = 0; i < 128; i++) {
        blocks[i] = malloc(256 << 10);
        memset(blocks[i], 2, 256 << 10);
    }
    long full = rss_kb();
    for (int i = 0; i < 128; i++) free(blocks[i]);
    CHECK(malloc_trim(0) == 1, "malloc_trim found nothing to give back");
    CHECK(full - rss_kb() > 24000, "malloc_trim gave back only %ld of 32 MiB", full - rss_kb());
}

#define THREADS 8
#define LIVE 300

struct block {
    unsigned char *p;
    size_t n;
    unsigned char tag;
};

static struct block handoff[THREADS][LIVE];
static pthread_barrier_t barrier;

static void *churn(void *arg) {
    int t = (int)(intptr_t)arg;
    uint64_t s = 0x9E3779B97F4A7C15ULL * (t + 1);
    struct block live[LIVE] = {0};
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < 60000; i++) {
            int k = rng(&s) % LIVE;
            struct block *b = &live[k];
            if (b->p) {
                CHECK(all(b->p, b->n, b->tag), "thread %d: block %p of %zu lost its contents", t, (void *)b->p, b->n);
                if (rng(&s) % 4 == 0) {
                    size_t n = 1 + rng(&s) % 3000;
                    unsigned char *q = realloc(b->p, n);
                    CHECK(q && all(q, n < b->n ? n : b->n, b->tag), "thread %d: realloc", t);
                    memset(q, b->tag, n);
                    b->p = q;
                    b->n = n;
                    continue;
                }
                free(b->p);
                b->p = NULL;
            }
            size_t n = rng(&s) % 8 == 0 ? 513 + rng(&s) % 20000 : 1 + rng(&s) % 512;
            b->p = rng(&s) % 5 == 0 ? calloc(1, n) : malloc(n);
            CHECK(b->p != NULL, "thread %d: malloc(%zu)", t, n);
            b->n = n;
            b->tag = (unsigned char)(i ^ t);
            memset(b->p, b->tag, n);
        }
        /* Hand every block to the next thread, which frees it. */
        memcpy(handoff[t], live, sizeof live);
        memset(live, 0, sizeof live);
        pthread_barrier_wait(&barrier);
        int from = (t + 1) % THREADS;
        for (int k = 0; k < LIVE; k++) {
            struct block *b = &handoff[from][k];
            if (b->p) {
                CHECK(all(b->p, b->n, b->tag), "thread %d: a handed-off block lost its contents", t);
                free(b->p);
            }
        }
        pthread_barrier_wait(&barrier);
    }
    return NULL;
}

static void threads(void) {
    pthread_t th[THREADS];
    pthread_barrier_init(&barrier, NULL, THREADS);
    for (int t = 0; t < THREADS; t++) pthread_create(&th[t], NULL, churn, (void *)(intptr_t)t);
    for (int t = 0; t < THREADS; t++) pthread_join(th[t], NULL);
    pthread_barrier_destroy(&barrier);
}

static volatile int stop;

static void *busy(void *arg) {
    (void)arg;
    uint64_t s = 42;
    void *keep[64] = {0};
    while (!stop) {
        int k = rng(&s) % 64;
        free(keep[k]);
        keep[k] = malloc(1 + rng(&s) % 4000);
    }
    for (int k = 0; k < 64; k++) free(keep[k]);
    return NULL;
}

/* fork() while other threads allocate: the child must find a heap that
 * works (no lock held by a thread it did not inherit). */
static void forks(void) {
    pthread_t th[3];
    stop = 0;
    for (int t = 0; t < 3; t++) pthread_create(&th[t], NULL, busy, NULL);
    for (int i = 0; i < 20; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            for (int j = 0; j < 20000; j++) {
                char *p = malloc(1 + j % 3000);
                if (!p) _exit(3);
                memset(p, 1, 1 + j % 3000);
                free(p);
            }
            _exit(0);
        }
        int status = 0;
        CHECK(pid > 0 && waitpid(pid, &status, 0) == pid, "fork/wait");
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child %d ended with status %#x", i, status);
    }
    stop = 1;
    for (int t = 0; t < 3; t++) pthread_join(th[t], NULL);
}

int main(void) {
    refused = (size_t (*)(void))dlsym(RTLD_DEFAULT, "strata_malloc_refused");
    if (!refused) {
        fprintf(stderr, "api.c: not running on strata-malloc (no strata_malloc_refused)\n");
        return 2;
    }
    basics();
    reallocs();
    aligned();
    refusals();
    memory_back();
    threads();
    forks();
    if (failures) {
        fprintf(stderr, "strata-malloc api: %d checks failed\n", failures);
        return 1;
    }
    printf("strata-malloc api: PASS\n");
    return 0;
}

/* strata-malloc as the malloc of C firmware: a Cortex-M4F program on
 * qemu-system-arm (mps2-an386) linked with picolibc and
 * libstrata_malloc.a (built for thumbv7em-none-eabihf), which replaces
 * picolibc's malloc. Output and exit status through semihosting; exits
 * non-zero on the first failed check. Built and run by `make test-malloc`. */
#include <errno.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int strata_init(void *region, size_t len);
size_t strata_malloc_refused(void);

static int failures;

#define CHECK(cond, ...)                                                        \
    do {                                                                        \
        if (!(cond)) {                                                          \
            printf("firmware.c:%d: check failed: %s: ", __LINE__, #cond);      \
            printf(__VA_ARGS__);                                                \
            printf("\n");                                                       \
            failures++;                                                         \
        }                                                                       \
    } while (0)

#define HEAP_SIZE (96 * 1024)
static unsigned char heap[HEAP_SIZE] __attribute__((aligned(16)));

struct node {
    struct node *next;
    uint32_t value;
    char name[20];
};

static int all(const unsigned char *p, size_t n, unsigned char v) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != v) return 0;
    return 1;
}

static uint32_t rng(uint32_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

/* Fill the heap with a mix of sizes until the first failure; return the
 * bytes allocated, freeing everything again. */
static size_t fill(void) {
    static void *blocks[4096];
    size_t n = 0, bytes = 0;
    uint32_t s = 7;
    while (n < 4096) {
        size_t size = 8 + rng(&s) % 300;
        void *p = malloc(size);
        if (!p) break;
        memset(p, 0x5A, size);
        blocks[n++] = p;
        bytes += size;
    }
    for (size_t i = 0; i < n; i++) free(blocks[i]);
    return bytes;
}

int main(void) {
    errno = 0;
    CHECK(malloc(16) == NULL && errno == ENOMEM, "malloc before strata_init must fail with ENOMEM");
    CHECK(strata_init(heap, sizeof heap) == 0, "strata_init");
    CHECK(strata_init(heap, sizeof heap) == EINVAL, "a second strata_init must be EINVAL");

    /* A linked list, freed without sizes. */
    struct node *head = NULL;
    for (uint32_t i = 0; i < 500; i++) {
        struct node *n = malloc(sizeof *n);
        CHECK(n != NULL && ((uintptr_t)n & 7) == 0, "node %lu", (unsigned long)i);
        n->next = head;
        n->value = i * 3;
        snprintf(n->name, sizeof n->name, "sensor-%lu", (unsigned long)i);
        head = n;
    }
    uint32_t expect = 499;
    for (struct node *n = head; n; expect--) {
        char name[20];
        snprintf(name, sizeof name, "sensor-%lu", (unsigned long)expect);
        CHECK(n->value == expect * 3 && strcmp(n->name, name) == 0, "node %lu corrupted", (unsigned long)expect);
        struct node *next = n->next;
        free(n);
        n = next;
    }

    /* calloc, realloc, the aligned calls, usable sizes. */
    unsigned char *p = calloc(100, 4);
    CHECK(p && all(p, 400, 0), "calloc");
    memset(p, 3, 400);
    p = realloc(p, 3000);
    CHECK(p && all(p, 400, 3), "realloc kept the data");
    CHECK(malloc_usable_size(p) >= 3000, "usable size");
    p = realloc(p, 40);
    CHECK(p && all(p, 40, 3), "realloc shrink");
    free(p);
    /* Every block is 16-aligned, reallocs too: moved or grown backward,
     * they were 8-aligned on 32-bit targets. */
    {
        /* (At most 36 KiB live: no request fails in the 96 KiB heap.) */
        enum { SLOTS = 24 };
        unsigned char *live[SLOTS] = {0};
        uint32_t s = 12345;
        for (int step = 0; step < 20000; step++) {
            rng(&s);
            int k = (int)((s >> 8) % SLOTS);
            size_t n = 1 + (s >> 16) % ((s & 3) == 0 ? 1500 : 300);
            if (live[k] == NULL) {
                live[k] = malloc(n);
                CHECK(live[k] && ((uintptr_t)live[k] & 15) == 0, "malloc(%u) misaligned", (unsigned)n);
            } else if (s & 4) {
                unsigned char *q = realloc(live[k], n);
                CHECK(q && ((uintptr_t)q & 15) == 0, "realloc to %u misaligned", (unsigned)n);
                if (q) live[k] = q;
            } else {
                free(live[k]);
                live[k] = NULL;
            }
        }
        for (int k = 0; k < SLOTS; k++) free(live[k]);
    }
    void *a = NULL;
    CHECK(posix_memalign(&a, 256, 1000) == 0 && ((uintptr_t)a & 255) == 0, "posix_memalign");
    free(a);
    CHECK(posix_memalign(&a, 24, 10) == EINVAL, "posix_memalign(24)");
    void *b = aligned_alloc(64, 128);
    CHECK(b && ((uintptr_t)b & 63) == 0, "aligned_alloc");
    free(b);
    errno = 0;
    CHECK(calloc(0x10000, 0x10000) == NULL && errno == ENOMEM, "calloc overflow");

    /* Exhaustion is null with ENOMEM, and everything comes back. */
    errno = 0;
    CHECK(malloc(HEAP_SIZE) == NULL && errno == ENOMEM, "a request larger than the heap");
    size_t first = fill();
    size_t second = fill();
    CHECK(first > HEAP_SIZE * 3 / 4, "filled only %u of %u bytes", (unsigned)first, (unsigned)HEAP_SIZE);
    CHECK(first == second, "the second fill got %u bytes, the first %u", (unsigned)second, (unsigned)first);
    void *big = malloc(HEAP_SIZE * 9 / 10);
    CHECK(big != NULL, "all memory back after the fills");
    free(big);

    /* Refused frees: a pointer outside the heap, a double free. */
    int local;
    size_t before = strata_malloc_refused();
    free(&local);
    void *d = malloc(200);
    free(d);
    free(d);
    CHECK(strata_malloc_refused() == before + 2, "refusals: %u", (unsigned)(strata_malloc_refused() - before));

    printf("strata-malloc firmware: filled %u of %u bytes; %s\n", (unsigned)first, (unsigned)HEAP_SIZE,
           failures ? "FAIL" : "PASS");
    return failures ? 1 : 0;
}

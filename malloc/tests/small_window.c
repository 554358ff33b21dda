/* strata-malloc with a small window: run under `ulimit -v 32000` (about 31
 * MiB of address space), where the heap's window (half of what the limit
 * leaves once the program is loaded) is under 16 MiB. C's free and realloc give no size, so the heap must find
 * every block's size there too: frees are taken, not refused; realloc keeps
 * the contents; a malloc/free loop never runs out; and after the heap is
 * exhausted and every block freed, it serves as much again. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_BLOCKS 400000
static void *blocks[MAX_BLOCKS];

#define CHECK(cond, ...)                                        \
    do {                                                        \
        if (!(cond)) {                                          \
            fprintf(stderr, "small_window.c: " __VA_ARGS__);    \
            fprintf(stderr, "\n");                              \
            exit(1);                                            \
        }                                                       \
    } while (0)

/* Fills the heap with blocks of 1 to 512 bytes until the first failure;
 * returns how many it took. */
static long fill(void) {
    long n = 0;
    errno = 0;
    while (n < MAX_BLOCKS && (blocks[n] = malloc(1 + n % 512)) != NULL) {
        memset(blocks[n], (int)(n & 0xff), 1 + n % 512);
        n++;
    }
    CHECK(n < MAX_BLOCKS, "the heap never ran out (is the ulimit set?)");
    CHECK(errno == ENOMEM, "failed malloc left errno %d, not ENOMEM", errno);
    return n;
}

static void free_all(long n) {
    for (long i = 0; i < n; i++) {
        const unsigned char *b = blocks[i];
        CHECK(b[0] == (unsigned char)(i & 0xff) && b[i % 512] == (unsigned char)(i & 0xff),
              "block %ld lost its contents", i);
        free(blocks[i]);
    }
}

int main(void) {
    size_t (*refused)(void) = (size_t (*)(void))dlsym(RTLD_DEFAULT, "strata_malloc_refused");
    CHECK(refused != NULL, "not running on strata-malloc");

    char *p = malloc(100);
    CHECK(p != NULL, "malloc(100) failed");
    CHECK(malloc_usable_size(p) >= 100, "usable size %zu of a 100-byte block", malloc_usable_size(p));
    strcpy(p, "kept across realloc");
    char *q = realloc(p, 5000);
    CHECK(q != NULL, "realloc(p, 5000) failed, errno %d", errno);
    CHECK(strcmp(q, "kept across realloc") == 0, "realloc lost the contents");
    free(q);
    CHECK(refused() == 0, "%zu frees refused", refused());

    for (long i = 0; i < 1000000; i++) {
        void *x = malloc(1024);
        CHECK(x != NULL, "malloc(1024)/free loop ran out after %ld rounds", i);
        free(x);
    }

    long first = fill();
    free_all(first);
    CHECK(malloc_trim(0) >= 0, "malloc_trim");
    long second = fill();
    free_all(second);
    CHECK(refused() == 0, "%zu frees refused", refused());
    CHECK(second >= first - first / 100, "the second fill took %ld blocks, the first %ld", second, first);
    void *a = malloc(1000), *b = malloc(100), *c = malloc(100000);
    CHECK(a && b && c, "the heap does not serve again after being emptied");
    free(a);
    free(b);
    free(c);
    printf("small_window.c: fills of %ld and %ld blocks, no free refused\n", first, second);
    return 0;
}

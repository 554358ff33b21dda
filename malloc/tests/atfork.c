/* pthread_atfork handlers that allocate, registered before the process's
 * first malloc (from a constructor), so before strata's own handlers: they
 * run while strata holds its heap for fork() (its prepare runs first, its
 * parent and child last) and must be served, not wait for the lock their
 * own thread holds. Handlers registered later run outside that window.
 * Four threads churn while the main thread forks 200 times; every child
 * allocates too. Run preloaded and statically linked, under a timeout. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define CHECK(cond, what)                                              \
    do {                                                               \
        if (!(cond)) {                                                 \
            fprintf(stderr, "atfork.c: %s failed (%s:%d)\n", what,     \
                    __FILE__, __LINE__);                               \
            _exit(1);                                                  \
        }                                                              \
    } while (0)

/* A block made by a prepare handler, freed by the parent or child one. */
static char *from_prepare;
/* Blocks made inside the window, freed outside it by main. */
static void *kept[400];
static int nkept;

/* Every kind of call, checked. */
static void *exercise(const char *tag) {
    char *p = malloc(100);
    CHECK(p != NULL, "malloc");
    strcpy(p, tag);
    CHECK(malloc_usable_size(p) >= 100, "malloc_usable_size");
    p = realloc(p, 3000);
    CHECK(p != NULL && strcmp(p, tag) == 0, "realloc keeps the contents");
    char *z = calloc(50, 20);
    CHECK(z != NULL, "calloc");
    for (int i = 0; i < 1000; i++) CHECK(z[i] == 0, "calloc zeroes");
    void *a = NULL;
    CHECK(posix_memalign(&a, 4096, 200) == 0 && ((size_t)a & 4095) == 0, "posix_memalign");
    free(z);
    free(a);
    return p;
}

static void early_prepare(void) {
    from_prepare = exercise("prepare");
    if (nkept < 400) kept[nkept++] = malloc(64);
}
static void early_parent(void) {
    CHECK(strcmp(from_prepare, "prepare") == 0, "prepare's block in the parent");
    free(from_prepare);
    free(exercise("parent"));
}
static void early_child(void) {
    CHECK(strcmp(from_prepare, "prepare") == 0, "prepare's block in the child");
    free(from_prepare);
    free(exercise("child"));
}
static void late_prepare(void) { free(exercise("late prepare")); }
static void late_after(void) { free(exercise("late after")); }

__attribute__((constructor(101))) static void register_early(void) {
    CHECK(pthread_atfork(early_prepare, early_parent, early_child) == 0, "pthread_atfork");
}

static atomic_int stop;

static void *churn(void *arg) {
    unsigned long x = (unsigned long)arg * 2654435761u + 1;
    void *live[64] = {0};
    while (!atomic_load(&stop)) {
        x = x * 6364136223846793005ul + 1442695040888963407ul;
        int k = (int)((x >> 33) % 64);
        free(live[k]);
        live[k] = malloc(1 + (x >> 40) % 6000);
        CHECK(live[k] != NULL, "malloc in a churning thread");
    }
    for (int k = 0; k < 64; k++) free(live[k]);
    return NULL;
}

int main(void) {
    free(malloc(1)); /* strata registers its handlers here, after the early ones */
    CHECK(pthread_atfork(late_prepare, late_after, late_after) == 0, "pthread_atfork");
    pthread_t t[4];
    for (long i = 0; i < 4; i++) CHECK(pthread_create(&t[i], NULL, churn, (void *)i) == 0, "pthread_create");
    for (int i = 0; i < 200; i++) {
        pid_t pid = fork();
        CHECK(pid >= 0, "fork");
        if (pid == 0) {
            free(exercise("in the child"));
            _exit(0);
        }
        int status;
        CHECK(waitpid(pid, &status, 0) == pid, "waitpid");
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child's checks");
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
    for (int i = 0; i < nkept; i++) free(kept[i]);
    size_t (*refused)(void) = (size_t (*)(void))dlsym(RTLD_DEFAULT, "strata_malloc_refused");
    CHECK(refused == NULL || refused() == 0, "no free refused");
    printf("strata-malloc atfork: PASS\n");
    return 0;
}

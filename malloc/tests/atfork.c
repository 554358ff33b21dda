/* fork() and pthread_atfork handlers that allocate (glibc runs prepare
 * handlers in reverse order of registration, parent and child handlers in
 * order). strata registers its own handlers as it loads (an .init_array
 * entry of priority 100), so a program's handlers run around them: its
 * prepare before strata's takes the heap, its parent and child after
 * strata's gives it back, as glibc's malloc does inside fork(). Handlers
 * registered before strata's — here from a constructor of priority 50,
 * which in the statically linked run comes first (as a linked library's
 * constructor comes before a preloaded one) — run while strata holds the
 * heap: their thread's calls are served by the heap it holds, their frees
 * made after the fork (checked then, so a double free is refused).
 *
 * Also: a library's handlers that hold its mutex across fork() while a
 * worker allocates under it (lock order), a child handler that starts a
 * thread that allocates, two threads forking at once, and four threads
 * churning while the main thread forks 200 times. Run preloaded and
 * statically linked, under a timeout: a deadlock fails the run. */
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
/* A block freed before a fork, freed again inside it (misuse: refused). */
static void *stale;
/* Set on the main thread around its forks (the handlers run on the
 * forking thread; the second forker's forks skip the checks). */
static _Thread_local int forks_by_main;

static size_t refused(void) {
    size_t (*f)(void) = (size_t (*)(void))dlsym(RTLD_DEFAULT, "strata_malloc_refused");
    return f ? f() : 0;
}

/* Every kind of call, checked. */
static void *exercise(const char *tag) {
    char *p = malloc(100);
    CHECK(p != NULL, "malloc");
    strcpy(p, tag);
    CHECK(malloc_usable_size(p) >= 100, "malloc_usable_size");
    p = realloc(p, 3000);
    CHECK(p != NULL && strcmp(p, tag) == 0, "realloc keeps the contents");
    p = realloc(p, 200000);
    CHECK(p != NULL && strcmp(p, tag) == 0, "a larger realloc keeps the contents");
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
    if (!forks_by_main) return;
    from_prepare = exercise("prepare");
    if (nkept < 400) kept[nkept++] = malloc(64);
    if (stale) {
        free(stale); /* a second free: must be refused, not corrupt */
        stale = NULL;
    }
}
static void early_parent(void) {
    if (!forks_by_main) return;
    CHECK(strcmp(from_prepare, "prepare") == 0, "prepare's block in the parent");
    free(from_prepare);
    free(exercise("parent"));
}
static void early_child(void) {
    if (!forks_by_main) return;
    CHECK(strcmp(from_prepare, "prepare") == 0, "prepare's block in the child");
    free(from_prepare);
    free(exercise("child"));
}
__attribute__((constructor(50))) static void register_early(void) {
    CHECK(pthread_atfork(early_prepare, early_parent, early_child) == 0, "pthread_atfork");
}

/* A library's usual handlers: its mutex held across fork(). */
static pthread_mutex_t lib_lock = PTHREAD_MUTEX_INITIALIZER;
static void lib_prepare(void) { pthread_mutex_lock(&lib_lock); }
static void lib_release(void) { pthread_mutex_unlock(&lib_lock); }
static void *child_worker(void *arg) {
    free(exercise("child's new thread"));
    return arg;
}
/* A child handler that restarts a worker thread, which allocates. */
static void lib_child(void) {
    lib_release();
    pthread_t t;
    CHECK(pthread_create(&t, NULL, child_worker, NULL) == 0, "pthread_create in the child");
    pthread_join(t, NULL);
}
__attribute__((constructor)) static void register_library(void) {
    CHECK(pthread_atfork(lib_prepare, lib_release, lib_child) == 0, "pthread_atfork");
}

static atomic_int stop;

/* Allocates under the library's mutex, and churns. */
static void *churn(void *arg) {
    unsigned long x = (unsigned long)arg * 2654435761u + 1;
    void *live[64] = {0};
    while (!atomic_load(&stop)) {
        x = x * 6364136223846793005ul + 1442695040888963407ul;
        int k = (int)((x >> 33) % 64);
        pthread_mutex_lock(&lib_lock);
        free(live[k]);
        live[k] = malloc(1 + (x >> 40) % 6000);
        pthread_mutex_unlock(&lib_lock);
        CHECK(live[k] != NULL, "malloc in a churning thread");
    }
    for (int k = 0; k < 64; k++) free(live[k]);
    return NULL;
}

/* Forks from a second thread at the same time as main. */
static void *forker(void *arg) {
    for (int i = 0; i < 50; i++) {
        pid_t pid = fork();
        CHECK(pid >= 0, "fork");
        if (pid == 0) _exit(0);
        CHECK(waitpid(pid, NULL, 0) == pid, "waitpid");
    }
    return arg;
}

int main(void) {
    pthread_t t[4], f;
    for (long i = 0; i < 4; i++) CHECK(pthread_create(&t[i], NULL, churn, (void *)i) == 0, "pthread_create");
    CHECK(pthread_create(&f, NULL, forker, NULL) == 0, "pthread_create");
    for (int i = 0; i < 200; i++) {
        stale = malloc(600);
        free(stale);
        size_t before = refused();
        forks_by_main = 1;
        pid_t pid = fork();
        CHECK(pid >= 0, "fork");
        if (pid == 0) {
            free(exercise("in the child"));
            _exit(0);
        }
        forks_by_main = 0;
        CHECK(stale == NULL && refused() == before + 1, "the double free in the window was refused");
        int status;
        CHECK(waitpid(pid, &status, 0) == pid, "waitpid");
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child's checks");
        /* Two blocks handed out at once must differ (no block freed twice). */
        void *a = malloc(600), *b = malloc(600);
        CHECK(a != b, "a block handed out twice");
        free(a);
        free(b);
    }
    pthread_join(f, NULL);
    atomic_store(&stop, 1);
    for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
    for (int i = 0; i < nkept; i++) free(kept[i]);
    printf("strata-malloc atfork: PASS\n");
    return 0;
}

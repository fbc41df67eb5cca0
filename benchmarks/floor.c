/* The syscall floor of checking files: open, fstat, read whole, close, for each file listed
 * on stdin (one relative path a line), as the C reader does, without hashing (Debian has no
 * BLAKE3 C library). benchmarks/compare.py builds and times it beside b3sum --check, so
 * anyone can see on their machine how much of a verification the kernel alone costs. With
 * -j N, N threads share the files (what more readers can win, from a cold cache above all).
 *
 *     gcc -O2 -pthread -o floor benchmarks/floor.c && (cd TREE && ./floor [-j N] < files.txt)
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char **names;
static size_t n_names, next;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int failed;

static void *reader(void *total) {
    size_t cap = 1 << 20, sum = 0;
    char *buf = malloc(cap);
    if (!buf) abort();
    for (;;) {
        pthread_mutex_lock(&lock);
        size_t i = next < n_names ? next++ : n_names;
        pthread_mutex_unlock(&lock);
        if (i == n_names) break;
        int fd = open(names[i], O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
            fprintf(stderr, "%s: not a readable file\n", names[i]);
            failed = 1;
            if (fd >= 0) close(fd);
            continue;
        }
        for (ssize_t n; (n = read(fd, buf, cap)) > 0;) sum += (size_t)n;
        close(fd);
    }
    free(buf);
    pthread_mutex_lock(&lock);
    *(size_t *)total += sum;
    pthread_mutex_unlock(&lock);
    return NULL;
}

int main(int argc, char **argv) {
    int threads = 1;
    if (argc == 3 && strcmp(argv[1], "-j") == 0) threads = atoi(argv[2]);
    else if (argc != 1) return fprintf(stderr, "usage: floor [-j N] < files.txt\n"), 2;
    if (threads < 1 || threads > 64) return fprintf(stderr, "floor: -j takes 1 to 64\n"), 2;
    static char line[8192];
    size_t cap = 0;
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\n")] = '\0';
        if (n_names == cap && !(names = realloc(names, (cap = cap ? cap * 2 : 4096) * sizeof *names))) abort();
        if (!(names[n_names++] = strdup(line))) abort();
    }
    size_t total = 0;
    pthread_t t[64];
    for (int k = 0; k < threads; k++) pthread_create(&t[k], NULL, reader, &total);
    for (int k = 0; k < threads; k++) pthread_join(t[k], NULL);
    printf("%zu\n", total);
    return failed;
}

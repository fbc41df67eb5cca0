/* The syscall floor of quick mode: walk the tree given as argv[1] as the quick-mode scanner does
 * (list each directory, lstat every entry, open each subdirectory without following a symlink and
 * fstat it to check it is the one listed), without comparing anything. benchmarks/compare.py
 * builds and times it beside `duri-integrity verify --quick` and `git status`, so anyone can see
 * on their machine how much of a quick check the kernel alone costs. With -j N, N threads share
 * the directories (what a parallel scanner could reach; the scanner itself uses one).
 *
 *     gcc -O2 -pthread -o walk_floor benchmarks/walk_floor.c && ./walk_floor [-j N] TREE
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t more = PTHREAD_COND_INITIALIZER;
static int *pending; /* directory descriptors still to list */
static size_t n_pending, cap_pending, busy;
static long entries;

static void push(int fd) {
    pthread_mutex_lock(&lock);
    if (n_pending == cap_pending) {
        cap_pending = cap_pending ? cap_pending * 2 : 256;
        pending = realloc(pending, cap_pending * sizeof *pending);
        if (!pending) abort();
    }
    pending[n_pending++] = fd;
    pthread_cond_signal(&more);
    pthread_mutex_unlock(&lock);
}

static long list(int dir_fd) {
    DIR *dir = fdopendir(dir_fd);
    if (!dir) return close(dir_fd), 0;
    long seen = 0;
    struct dirent *d;
    while ((d = readdir(dir))) {
        if (d->d_name[0] == '.' && (!d->d_name[1] || (d->d_name[1] == '.' && !d->d_name[2]))) continue;
        struct stat st, again;
        if (fstatat(dirfd(dir), d->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0) continue;
        seen++;
        if (!S_ISDIR(st.st_mode)) continue;
        int sub = openat(dirfd(dir), d->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (sub < 0) continue;
        if (fstat(sub, &again) < 0 || again.st_ino != st.st_ino)
            close(sub);
        else
            push(sub);
    }
    closedir(dir);
    return seen;
}

static void *worker(void *unused) {
    (void)unused;
    long seen = 0;
    pthread_mutex_lock(&lock);
    for (;;) {
        while (!n_pending && busy) pthread_cond_wait(&more, &lock);
        if (!n_pending) break; /* nothing left and nobody listing: done */
        int fd = pending[--n_pending];
        busy++;
        pthread_mutex_unlock(&lock);
        seen += list(fd);
        pthread_mutex_lock(&lock);
        if (--busy == 0 && !n_pending) pthread_cond_broadcast(&more);
    }
    entries += seen;
    pthread_cond_broadcast(&more);
    pthread_mutex_unlock(&lock);
    return NULL;
}

int main(int argc, char **argv) {
    int threads = 1;
    if (argc == 4 && strcmp(argv[1], "-j") == 0) threads = atoi(argv[2]), argv += 2, argc -= 2;
    if (argc != 2 || threads < 1 || threads > 64) return fprintf(stderr, "usage: walk_floor [-j N] TREE\n"), 2;
    int root = open(argv[1], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (root < 0) return perror(argv[1]), 1;
    push(root);
    pthread_t t[64];
    for (int k = 0; k < threads; k++) pthread_create(&t[k], NULL, worker, NULL);
    for (int k = 0; k < threads; k++) pthread_join(t[k], NULL);
    printf("%ld\n", entries);
    return 0;
}

/* The syscall floor of quick mode: walk the tree given as argv[1] as the quick-mode scanner does
 * (list each directory, lstat every entry, open each subdirectory without following a symlink and
 * fstat it to check it is the one listed), without comparing anything. benchmarks/compare.py
 * builds and times it beside `duri-integrity verify --quick` and `git status`, so anyone can see
 * on their machine how much of a quick check the kernel alone costs.
 *
 *     gcc -O2 -o walk_floor benchmarks/walk_floor.c && ./walk_floor TREE
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

static long entries;

static int walk(int dir_fd) {
    DIR *dir = fdopendir(dir_fd);
    if (!dir) return close(dir_fd), -1;
    struct dirent *d;
    while ((d = readdir(dir))) {
        if (d->d_name[0] == '.' && (!d->d_name[1] || (d->d_name[1] == '.' && !d->d_name[2]))) continue;
        struct stat st, again;
        if (fstatat(dirfd(dir), d->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0) continue;
        entries++;
        if (!S_ISDIR(st.st_mode)) continue;
        int sub = openat(dirfd(dir), d->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (sub < 0) continue;
        if (fstat(sub, &again) < 0 || again.st_ino != st.st_ino)
            close(sub);
        else
            walk(sub); /* closes sub */
    }
    closedir(dir);
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 2) return fprintf(stderr, "usage: walk_floor TREE\n"), 2;
    int root = open(argv[1], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (root < 0 || walk(root) < 0) return perror(argv[1]), 1;
    printf("%ld\n", entries);
    return 0;
}

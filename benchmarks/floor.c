/* The syscall floor of checking files: open, fstat, read whole, close, for each file listed
 * on stdin (one relative path a line), as the C reader does, without hashing (Debian has no
 * BLAKE3 C library). benchmarks/compare.py builds and times it beside b3sum --check, so
 * anyone can see on their machine how much of a verification the kernel alone costs.
 *
 *     gcc -O2 -o floor benchmarks/floor.c && (cd TREE && ./floor < files.txt)
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int main(void) {
    static char line[8192];
    size_t cap = 1 << 20, total = 0;
    char *buf = malloc(cap);
    if (!buf) return 2;
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\n")] = '\0';
        int fd = open(line, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
        if (fd < 0) return perror(line), 1;
        struct stat st;
        if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) return fprintf(stderr, "%s: not a file\n", line), 1;
        for (;;) {
            ssize_t n = read(fd, buf, cap);
            if (n <= 0) break;
            total += (size_t)n;
        }
        close(fd);
    }
    printf("%zu\n", total);
    return 0;
}

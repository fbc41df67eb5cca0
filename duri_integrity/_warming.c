/* Part of the optional C extension _speedups: warm the kernel's caches of a tree's metadata.
 *
 * From a cold cache, a full verification waits on storage for every directory block and
 * every inode: the walk lists directories one after another with the GIL held (about 14 ms
 * of a 3,000-file tree on the 2-core VM of docs/performance.md), and each file's open by
 * the readers first reads its inode. Warming(root_fd, threads, budget, watch) starts
 * threads that list the tree beneath root_fd and lstat every entry, GIL-free, while the
 * calling thread is still checking the manifest's signature; the walk and the reads behind
 * them then find the metadata cached. Nothing they learn is kept or returned: the tree (which
 * whoever writes it controls) decides only how long they take, never a verdict.
 *
 * Bounded: at most `budget` entries in all; directories are opened with O_NOFOLLOW and
 * O_DIRECTORY (a symlink, FIFO or device is never opened) and entered on the root's device
 * only (a mount point is opened, found to be another device, and closed); at most
 * STACK_CAP directory descriptors wait to be listed, and a thread lists at most MAX_INLINE
 * levels below one it took from the stack (deeper ones are left to the walk), so the threads
 * hold at most STACK_CAP + threads * (MAX_INLINE + 1) descriptors and DIR buffers. With
 * `watch`, a thread stops them all when WATCH_WINDOW entries in a row read nothing from
 * storage (getrusage's per-thread block count): the cache is warm and there is nothing to win.
 * stop() asks them to end and does not wait: a thread finishes the call it is in, then
 * closes what it holds, and the last one out closes what still waits to be listed; the last
 * reference (a thread's or the object's) frees the shared state. No new Warming starts while
 * threads of an earlier one are still running, so a stuck filesystem cannot pile them up (a
 * child forked meanwhile starts afresh). They run 10 nice levels below the caller, out of any
 * real-time policy. Signals are blocked in them: they stay with the threads Python knows. */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "_speedups.h"

#define STACK_CAP 16
#define MAX_INLINE 8
#define MAX_THREADS 8
#define WATCH_WINDOW 256
#define WARM_NICE 10 /* added to the caller's nice value, up to 19 */
#define MIN_NOFILE 512 /* below this descriptor limit the walk and readers need every one */
#define WARM_DIR_FLAGS (O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)

static atomic_int live_threads; /* of every Warming: none starts while one is still running */
static atomic_ulong generation;  /* bumped in a child after fork(): the threads of earlier Warmings are not there */

typedef struct {
    atomic_int refs; /* the Warming object, and each thread */
    atomic_int stop;
    atomic_long budget; /* entries still to visit */
    atomic_long visited;
    atomic_int running;
    unsigned long gen; /* the process's generation when it started (see forked_child) */
    int watch;
    dev_t dev;
    pthread_mutex_t lock;
    pthread_cond_t more;
    int stack[STACK_CAP]; /* directory descriptors waiting to be listed */
    size_t n, busy;       /* waiting; being listed */
} Shared;

typedef struct {
    Shared *s;
    long window_start; /* entries this thread had visited when its watch window began */
    long blocks;       /* blocks this thread had read from storage then */
    long seen;
} Worker;

static long blocks_read(void) {
    struct rusage ru;
    return getrusage(RUSAGE_THREAD, &ru) == 0 ? ru.ru_inblock : -1;
}

/* Whether this is still the process whose threads use ``s``: in a child forked meanwhile they are
 * gone, and the lock may have been taken when it forked. Such a state is left alone (leaked);
 * its descriptors are the child's like any other it inherited. */
static int ours(const Shared *s) { return s->gen == atomic_load(&generation); }

static void forked_child(void) {
    atomic_fetch_add(&generation, 1);
    atomic_store(&live_threads, 0);
}

/* Close what waits to be listed (the lock held): when the threads stop, nothing is kept open,
 * whatever becomes of the Warming object (an interrupted run's traceback can hold it). */
static void drop_stack(Shared *s) {
    for (size_t k = 0; k < s->n; k++) close(s->stack[k]);
    s->n = 0;
}

static void release(Shared *s) {
    if (!ours(s) || atomic_fetch_sub(&s->refs, 1) != 1) return;
    drop_stack(s);
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->more);
    free(s);
}

static void halt(Shared *s) {
    if (!ours(s)) return;
    atomic_store(&s->stop, 1);
    pthread_mutex_lock(&s->lock);
    pthread_cond_broadcast(&s->more);
    pthread_mutex_unlock(&s->lock);
}

/* Count one entry; 0 when the threads are to stop (asked to, out of budget, or the cache is warm). */
static int visit(Worker *w) {
    Shared *s = w->s;
    if (atomic_load_explicit(&s->stop, memory_order_relaxed)) return 0;
    if (atomic_fetch_sub_explicit(&s->budget, 1, memory_order_relaxed) <= 0) return halt(s), 0;
    atomic_fetch_add_explicit(&s->visited, 1, memory_order_relaxed);
    if (s->watch && ++w->seen - w->window_start >= WATCH_WINDOW) {
        long now = blocks_read();
        if (now >= 0 && now == w->blocks) return halt(s), 0;
        w->window_start = w->seen;
        w->blocks = now;
    }
    return 1;
}

/* Offer a directory to the other threads; 0 if the stack is full. */
static int offer(Shared *s, int fd) {
    int taken = 0;
    pthread_mutex_lock(&s->lock);
    if (s->n < STACK_CAP) {
        s->stack[s->n++] = fd;
        taken = 1;
        pthread_cond_signal(&s->more);
    }
    pthread_mutex_unlock(&s->lock);
    return taken;
}

static void list(Worker *w, int fd, int depth);

/* O_NOATIME where allowed (the owner, or root): the walk leaves excluded directories' access
 * times alone, and so must this, which lists them too. */
static int open_dir(int parent, const char *name) {
    int fd = openat(parent, name, WARM_DIR_FLAGS | O_NOATIME);
    return fd < 0 && errno == EPERM ? openat(parent, name, WARM_DIR_FLAGS) : fd;
}

static void subdir(Worker *w, int parent, const char *name, int depth) {
    int fd = open_dir(parent, name);
    if (fd < 0) return;
    struct stat st;
    if (fstat(fd, &st) < 0 || st.st_dev != w->s->dev) { /* another filesystem: not the tree's to warm */
        close(fd);
        return;
    }
    if (offer(w->s, fd)) return;
    if (depth < MAX_INLINE) list(w, fd, depth + 1);
    else close(fd);
}

/* List the directory ``fd`` (taking it over), lstat-ing each entry and opening each subdirectory. */
static void list(Worker *w, int fd, int depth) {
    DIR *dir = fdopendir(fd);
    if (!dir) {
        close(fd);
        return;
    }
    struct dirent *d;
    while ((d = readdir(dir)) != NULL) {
        const char *name = d->d_name;
        if (name[0] == '.' && (name[1] == '\0' || (name[1] == '.' && name[2] == '\0'))) continue;
        if (!visit(w)) break;
        struct stat st;
        int is_dir = d->d_type == DT_DIR;
        if (!is_dir && fstatat(dirfd(dir), name, &st, AT_SYMLINK_NOFOLLOW) == 0) is_dir = S_ISDIR(st.st_mode);
        if (is_dir) subdir(w, dirfd(dir), name, depth);
    }
    closedir(dir);
}

/* Below the caller's thread (which checks the signature meanwhile), whatever it runs at: the
 * warming is a hint, and must not take a core from the work it is there to speed up. */
static void lower_priority(void) {
    /* Not SCHED_IDLE: its reads then queue behind every other (the I/O class follows), and a
     * cold walk got nothing from it (16.3 against 11.1 ms, medians of 20 cold runs). */
    int policy;
    struct sched_param param;
    if (pthread_getschedparam(pthread_self(), &policy, &param) == 0 && policy != SCHED_OTHER &&
        policy != SCHED_BATCH && policy != SCHED_IDLE) { /* a real-time caller: leave real time */
        param.sched_priority = 0;
        (void)pthread_setschedparam(pthread_self(), SCHED_OTHER, &param);
    }
    id_t tid = (id_t)syscall(SYS_gettid); /* Linux: nice is per thread, and a new one inherits the caller's */
    errno = 0;
    int nice_now = getpriority(PRIO_PROCESS, tid);
    if (errno == 0) (void)setpriority(PRIO_PROCESS, tid, nice_now + WARM_NICE > 19 ? 19 : nice_now + WARM_NICE);
}

static void *worker_main(void *arg) {
    Worker w = {.s = arg};
    Shared *s = w.s;
    lower_priority();
    w.blocks = blocks_read();
    for (;;) {
        pthread_mutex_lock(&s->lock);
        while (s->n == 0 && s->busy > 0 && !atomic_load(&s->stop)) pthread_cond_wait(&s->more, &s->lock);
        if (s->n == 0 || atomic_load(&s->stop)) {
            pthread_cond_broadcast(&s->more); /* nothing left: the others end too */
            if (atomic_fetch_sub(&s->running, 1) == 1) drop_stack(s); /* the last one out */
            pthread_mutex_unlock(&s->lock);
            break;
        }
        int fd = s->stack[--s->n];
        s->busy++;
        pthread_mutex_unlock(&s->lock);
        list(&w, fd, 0);
        pthread_mutex_lock(&s->lock);
        if (--s->busy == 0 && s->n == 0) pthread_cond_broadcast(&s->more);
        pthread_mutex_unlock(&s->lock);
    }
    atomic_fetch_sub(&live_threads, 1);
    release(s);
    return NULL;
}

typedef struct {
    PyObject_HEAD Shared *s;
} Warming;

/* The threads, or 0 started (their descriptors are then closed by release()). */
static int start_threads(Shared *s, int threads) {
    sigset_t all, old;
    sigfillset(&all);
    int blocked = pthread_sigmask(SIG_SETMASK, &all, &old) == 0;
    int started = 0;
    for (int k = 0; k < threads; k++) {
        pthread_t t;
        atomic_fetch_add(&s->refs, 1);
        atomic_fetch_add(&s->running, 1);
        atomic_fetch_add(&live_threads, 1);
        if (pthread_create(&t, NULL, worker_main, s) != 0) {
            atomic_fetch_sub(&s->refs, 1);
            atomic_fetch_sub(&s->running, 1);
            atomic_fetch_sub(&live_threads, 1);
            break;
        }
        pthread_detach(t);
        started++;
    }
    if (blocked) pthread_sigmask(SIG_SETMASK, &old, NULL);
    return started;
}

static int Warming_init(Warming *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"root_fd", "threads", "budget", "watch", NULL};
    int root_fd, threads, watch;
    long budget;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iilp", kwlist, &root_fd, &threads, &budget, &watch)) return -1;
    if (threads < 1 || threads > MAX_THREADS || budget < 0) {
        PyErr_SetString(PyExc_ValueError, "threads must be 1 to 8 and budget not negative");
        return -1;
    }
    if (self->s) return 0; /* already started */
    struct rlimit nofile;
    struct stat st;
    if (atomic_load(&live_threads) > 0 || getrlimit(RLIMIT_NOFILE, &nofile) != 0 || nofile.rlim_cur < MIN_NOFILE ||
        fstat(root_fd, &st) != 0 || !S_ISDIR(st.st_mode))
        return 0; /* nothing to do, or not now: the run is the same without it, only slower from disk */
    Shared *s = calloc(1, sizeof *s);
    if (!s) return 0;
    int fd = open_dir(root_fd, ".");
    if (fd < 0 || pthread_mutex_init(&s->lock, NULL) != 0) {
        if (fd >= 0) close(fd);
        free(s);
        return 0;
    }
    pthread_cond_init(&s->more, NULL);
    atomic_init(&s->refs, 1);
    atomic_init(&s->budget, budget);
    s->watch = watch;
    s->dev = st.st_dev;
    s->stack[s->n++] = fd;
    s->gen = atomic_load(&generation);
    self->s = s;
    if (start_threads(s, threads) == 0) {
        pthread_mutex_lock(&s->lock);
        drop_stack(s);
        pthread_mutex_unlock(&s->lock);
    }
    return 0;
}

static PyObject *Warming_stop(Warming *self, PyObject *Py_UNUSED(ignored)) {
    if (self->s) halt(self->s);
    Py_RETURN_NONE;
}

static PyObject *Warming_running(Warming *self, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromLong(self->s && ours(self->s) ? atomic_load(&self->s->running) : 0);
}

static PyObject *Warming_visited(Warming *self, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromLong(self->s ? atomic_load(&self->s->visited) : 0);
}

static PyObject *Warming_live(PyObject *Py_UNUSED(cls), PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromLong(atomic_load(&live_threads));
}

static void Warming_dealloc(Warming *self) {
    if (self->s) {
        halt(self->s);
        release(self->s);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Warming_methods[] = {
    {"stop", (PyCFunction)Warming_stop, METH_NOARGS, "Ask the threads to end; does not wait for them."},
    {"running", (PyCFunction)Warming_running, METH_NOARGS, "How many of the threads have not ended yet."},
    {"visited", (PyCFunction)Warming_visited, METH_NOARGS, "How many entries the threads have looked at."},
    {"live", (PyCFunction)Warming_live, METH_NOARGS | METH_STATIC,
     "How many threads of any Warming have not ended (none starts while one runs)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject WarmingType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "duri_integrity._speedups.Warming",
    .tp_basicsize = sizeof(Warming),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Warming(root_fd, threads, budget, watch): warm the metadata beneath root_fd on threads.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Warming_init,
    .tp_dealloc = (destructor)Warming_dealloc,
    .tp_methods = Warming_methods,
};

int add_warming(PyObject *module) {
    if (PyType_Ready(&WarmingType) < 0) return -1;
    static int registered;
    if (!registered && pthread_atfork(NULL, NULL, forked_child) != 0) {
        PyErr_SetString(PyExc_OSError, "pthread_atfork failed");
        return -1;
    }
    registered = 1;
    return PyModule_AddObjectRef(module, "Warming", (PyObject *)&WarmingType);
}

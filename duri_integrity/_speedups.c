/* Optional C speed-ups for duri_integrity.hashing: a batched, GIL-free file reader.
 *
 * Reader(root_fd).read(jobs, batch, buf) opens each job's file beneath root_fd (directories one
 * component at a time with O_DIRECTORY|O_NOFOLLOW, files with O_NOFOLLOW|O_NONBLOCK), fstat-s
 * it, checks it is a regular file with the inode the walk listed, compares mode and size, and
 * reads it whole into its slot of buf (size + 1 bytes, to notice growth), all with the GIL
 * released. Hashing stays in Python (the blake3 package has no C API). No mmap: a file
 * truncated under a mapping would kill the process with SIGBUS.
 *
 * It applies the stability rule of hashing.py (stated there, once): content is handed out only
 * for the regular file with the listed inode, read to exactly its size, with size, mtime and
 * ctime unchanged from the open's fstat to an fstat after the read. hashing.read_file is the
 * same rule in Python and returns the same results; hashing.py maps both onto problems.
 *
 * The result is one object per job, in batch order:
 *   int >= 0               the content is at this offset of buf, and the rule held
 *   ("open", errno)        the file or one of its directories could not be opened
 *   ("read", errno)        an fstat or the read failed after the open
 *   ("replaced",)          not a regular file, or another inode than listed (and than the name now)
 *   ("size", actual)       another size than expected (not read)
 *   ("changed",)           not exactly size bytes read, or size/mtime/ctime changed across the read
 *   ("mode", actual, rest) another mode; rest is one of the above for the same file
 */
#define _GNU_SOURCE /* memrchr */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "_speedups.h"

#define MAX_HELD 16 /* directory descriptors one Reader keeps open (see walk.MAX_HELD_DIRS) */
#define FILE_FLAGS (O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY)
#define DIR_FLAGS (O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)

enum { R_OK_ = 0, R_CHANGED, R_OPEN, R_READ, R_REPLACED, R_SIZE };
enum { STAGE_OPEN = 0, STAGE_FSTAT, STAGE_READ, STAGE_ENTRY, STAGE_LIST, STAGE_CTIME };

typedef struct {
    const char *path; /* relative path, filesystem encoding */
    Py_ssize_t len;
    unsigned long long ino;
    long long size;
    unsigned int mode;
    /* results */
    int kind;
    int err;
    unsigned int actual_mode;
    long long actual_size;
    Py_ssize_t offset;
    int mode_differs;
} Item;

typedef struct {
    PyObject_HEAD int root_fd;
    int busy;
    char *cur;      /* the directory the chain is in, components separated by '/' */
    size_t cur_len; /* bytes of cur in use */
    size_t cur_cap;
    int cur_valid;  /* 0 after a failed enter: the chain is a prefix of cur */
    int *fds;       /* per level; -1 for a closed intermediate level */
    size_t *ends;   /* end offset in cur of each level's component */
    size_t depth;   /* levels open (or placeholders) */
    size_t lvl_cap;
    char *failed; /* the last directory that could not be entered, and why */
    size_t failed_len;
    int failed_errno;
    PyObject *hook; /* tests only: hook(stage, path) -> errno to inject (0: none); GIL taken to call it */
} Reader;

static int retry_openat(int dirfd, const char *name, int flags) {
    int fd;
    do {
        fd = openat(dirfd, name, flags);
    } while (fd < 0 && errno == EINTR);
    return fd;
}

static void drop_to(Reader *r, size_t keep) {
    while (r->depth > keep) {
        int fd = r->fds[--r->depth];
        if (fd >= 0) close(fd);
    }
}

static int grow_levels(Reader *r, size_t need) {
    if (need <= r->lvl_cap) return 0;
    size_t cap = r->lvl_cap ? r->lvl_cap * 2 : 16;
    while (cap < need) cap *= 2;
    int *fds = realloc(r->fds, cap * sizeof(int));
    if (!fds) return -1;
    r->fds = fds;
    size_t *ends = realloc(r->ends, cap * sizeof(size_t));
    if (!ends) return -1;
    r->ends = ends;
    r->lvl_cap = cap;
    return 0;
}

/* The descriptor of directory dir[0:len] beneath the root, or -1 with errno set. */
static int enter(Reader *r, const char *dir, size_t len) {
    if (r->cur_valid && len == r->cur_len && memcmp(dir, r->cur, len) == 0)
        return r->depth ? r->fds[r->depth - 1] : r->root_fd;
    if (r->failed && len == r->failed_len && memcmp(dir, r->failed, len) == 0) {
        errno = r->failed_errno;
        return -1;
    }
    if (len == 0) {
        drop_to(r, 0);
        r->cur_len = 0;
        r->cur_valid = 1;
        return r->root_fd;
    }
    /* Levels in common with the chain held now. */
    size_t keep = 0, start = 0;
    while (keep < r->depth) {
        size_t old_start = keep ? r->ends[keep - 1] + 1 : 0;
        size_t old_len = r->ends[keep] - old_start;
        const char *slash = memchr(dir + start, '/', len - start);
        size_t end = slash ? (size_t)(slash - dir) : len;
        if (end - start != old_len || memcmp(dir + start, r->cur + old_start, old_len) != 0) break;
        keep++;
        if (!slash) break;
        start = end + 1;
    }
    drop_to(r, keep);
    /* Deep intermediate levels are closed: restart from the deepest level still open. */
    while (r->depth > 0 && r->fds[r->depth - 1] < 0) r->depth--;
    size_t levels = 1;
    for (size_t k = 0; k < len; k++) levels += dir[k] == '/';
    if (len + 1 > r->cur_cap) {
        char *cur = realloc(r->cur, len + 1);
        if (!cur) {
            errno = ENOMEM;
            return -1;
        }
        r->cur = cur;
        r->cur_cap = len + 1;
    }
    if (grow_levels(r, levels) < 0) {
        errno = ENOMEM;
        return -1;
    }
    memcpy(r->cur, dir, len);
    r->cur[len] = '\0';
    r->cur_len = len;
    r->cur_valid = 0;
    size_t lvl = 0, s = 0;
    for (size_t k = 0; k <= len; k++) { /* the component ends, and NULs in place of the slashes */
        if (k == len || r->cur[k] == '/') {
            r->ends[lvl++] = k;
            r->cur[k] = '\0';
        }
    }
    for (lvl = r->depth; lvl < levels; lvl++) {
        s = lvl ? r->ends[lvl - 1] + 1 : 0;
        int parent = lvl ? r->fds[lvl - 1] : r->root_fd;
        const char *part = r->cur + s;
        /* Never up or sideways: manifest paths are validated, but "" "." ".." must not reach openat. */
        int bad = part[0] == '\0' || (part[0] == '.' && (part[1] == '\0' || (part[1] == '.' && part[2] == '\0')));
        if (bad) errno = EINVAL;
        int fd = bad ? -1 : retry_openat(parent, part, DIR_FLAGS);
        if (fd < 0) {
            int e = errno;
            for (size_t k = 0; k < len; k++) /* restore the slashes for the prefix comparison */
                if (r->cur[k] == '\0') r->cur[k] = '/';
            char *failed = realloc(r->failed, len ? len : 1);
            if (failed) {
                memcpy(failed, dir, len);
                r->failed = failed;
                r->failed_len = len;
                r->failed_errno = e;
            }
            errno = e;
            return -1;
        }
        r->fds[lvl] = fd;
        r->depth = lvl + 1;
        if (lvl >= MAX_HELD && r->fds[lvl - 1] >= 0) { /* keep the shallow levels and the deepest one */
            close(r->fds[lvl - 1]);
            r->fds[lvl - 1] = -1;
        }
    }
    for (size_t k = 0; k < len; k++)
        if (r->cur[k] == '\0') r->cur[k] = '/';
    r->cur_valid = 1;
    return r->fds[r->depth - 1];
}

/* Tests only: ask the hook (with the GIL) whether to fail this stage with an errno. */
static int injected(Reader *r, int stage, const char *path, PyThreadState **save) {
    if (!r->hook) return 0;
    PyEval_RestoreThread(*save);
    int e = 0;
    PyObject *res = PyObject_CallFunction(r->hook, "iy", stage, path);
    if (res) {
        e = (int)PyLong_AsLong(res);
        Py_DECREF(res);
    }
    if (PyErr_Occurred()) {
        PyErr_WriteUnraisable(r->hook);
        e = 0;
    }
    *save = PyEval_SaveThread();
    return e;
}

static void read_one(Reader *r, Item *it, char *buf, PyThreadState **save) {
    const char *slash = memrchr(it->path, '/', (size_t)it->len);
    size_t dir_len = slash ? (size_t)(slash - it->path) : 0;
    const char *name = slash ? slash + 1 : it->path;
    int e = injected(r, STAGE_OPEN, it->path, save);
    int dirfd = e ? -1 : enter(r, it->path, dir_len);
    if (e || dirfd < 0) {
        it->kind = R_OPEN;
        it->err = e ? e : errno;
        return;
    }
    int fd = retry_openat(dirfd, name, FILE_FLAGS);
    if (fd < 0) {
        it->kind = R_OPEN;
        it->err = errno;
        return;
    }
    struct stat st, now;
    if ((e = injected(r, STAGE_FSTAT, it->path, save)) != 0 || fstat(fd, &st) < 0) {
        it->kind = R_READ;
        it->err = e ? e : errno;
        goto done;
    }
    if (!S_ISREG(st.st_mode) ||
        ((unsigned long long)st.st_ino != it->ino &&
         /* overlayfs copy-up: the name now holds the opened inode? */
         (fstatat(dirfd, name, &now, AT_SYMLINK_NOFOLLOW) < 0 || now.st_ino != st.st_ino ||
          now.st_dev != st.st_dev))) {
        it->kind = R_REPLACED;
        goto done;
    }
    it->actual_mode = st.st_mode & 07777;
    it->mode_differs = it->actual_mode != it->mode;
    if ((long long)st.st_size != it->size) {
        it->kind = R_SIZE;
        it->actual_size = (long long)st.st_size;
        goto done;
    }
    if ((e = injected(r, STAGE_READ, it->path, save)) != 0) {
        it->kind = R_READ;
        it->err = e;
        goto done;
    }
    /* Up to size + 1 bytes: a short read is legal (signals, network filesystems); more means it grew. */
    char *p = buf + it->offset;
    size_t want = (size_t)it->size + 1, n = 0;
    for (;;) {
        ssize_t got = read(fd, p + n, want - n);
        if (got < 0) {
            if (errno == EINTR) continue;
            it->kind = R_READ;
            it->err = errno;
            goto done;
        }
        if (got == 0) break;
        n += (size_t)got;
        if (n >= (size_t)it->size) break;
    }
    if (n != (size_t)it->size) {
        it->kind = R_CHANGED;
        goto done;
    }
    if (fstat(fd, &now) < 0) {
        it->kind = R_READ;
        it->err = errno;
        goto done;
    }
    it->kind = now.st_size != st.st_size || now.st_mtim.tv_sec != st.st_mtim.tv_sec ||
                       now.st_mtim.tv_nsec != st.st_mtim.tv_nsec || now.st_ctim.tv_sec != st.st_ctim.tv_sec ||
                       now.st_ctim.tv_nsec != st.st_ctim.tv_nsec
                   ? R_CHANGED
                   : R_OK_;
done:
    close(fd);
}

static PyObject *result_of(const Item *it) {
    PyObject *res;
    switch (it->kind) {
    case R_OK_:
        res = PyLong_FromSsize_t(it->offset);
        break;
    case R_OPEN:
        res = Py_BuildValue("(si)", "open", it->err);
        break;
    case R_READ:
        res = Py_BuildValue("(si)", "read", it->err);
        break;
    case R_REPLACED:
        return Py_BuildValue("(s)", "replaced"); /* the mode is not compared on another file */
    case R_SIZE:
        res = Py_BuildValue("(sL)", "size", it->actual_size);
        break;
    default: /* R_CHANGED */
        res = Py_BuildValue("(s)", "changed");
        break;
    }
    if (res && it->mode_differs) {
        PyObject *wrapped = Py_BuildValue("(sIN)", "mode", it->actual_mode, res);
        return wrapped;
    }
    return res;
}

/* A path as the file system takes it (bytes, filesystem encoding), or NULL with an exception set:
 * one with a NUL byte would name a shorter path to every system call. */
static PyObject *encode_path(PyObject *path) {
    PyObject *encoded = PyUnicode_EncodeFSDefault(path);
    if (encoded && (Py_ssize_t)strlen(PyBytes_AS_STRING(encoded)) != PyBytes_GET_SIZE(encoded)) {
        Py_DECREF(encoded);
        PyErr_SetString(PyExc_ValueError, "a path has a NUL byte");
        return NULL;
    }
    return encoded;
}

/* Drop the first n encoded paths of an array (NULL entries skipped) and the array itself. */
static void drop_encoded(PyObject **encoded, Py_ssize_t n) {
    if (encoded)
        for (Py_ssize_t k = 0; k < n; k++) Py_XDECREF(encoded[k]);
    PyMem_Free(encoded);
}

static int parse_job(PyObject *job, Item *it, PyObject **encoded) {
    if (!PyTuple_Check(job) || PyTuple_GET_SIZE(job) < 4) {
        PyErr_SetString(PyExc_TypeError, "a job is a (path, inode, size, mode, ...) tuple");
        return -1;
    }
    *encoded = encode_path(PyTuple_GET_ITEM(job, 0));
    if (!*encoded) return -1;
    it->path = PyBytes_AS_STRING(*encoded);
    it->len = PyBytes_GET_SIZE(*encoded);
    it->ino = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(job, 1));
    it->size = PyLong_AsLongLong(PyTuple_GET_ITEM(job, 2));
    it->mode = (unsigned int)PyLong_AsUnsignedLong(PyTuple_GET_ITEM(job, 3));
    if (PyErr_Occurred()) return -1;
    if (it->size < 0) {
        PyErr_SetString(PyExc_ValueError, "a size is negative");
        return -1;
    }
    return 0;
}

static PyObject *Reader_read(Reader *self, PyObject *args) {
    PyObject *jobs, *batch;
    Py_buffer view;
    if (!PyArg_ParseTuple(args, "OO!w*", &jobs, &PyList_Type, &batch, &view)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = PyList_GET_SIZE(batch);
    Item *items = NULL;
    PyObject **encoded = NULL;
    int claimed = 0;
    if (self->busy || self->root_fd < 0) {
        PyErr_SetString(PyExc_RuntimeError, "Reader closed or in use by another thread");
        goto out;
    }
    self->busy = claimed = 1; /* from here: parsing the jobs can run Python code (__index__), and so another thread */
    items = PyMem_Calloc((size_t)(n ? n : 1), sizeof(Item));
    encoded = PyMem_Calloc((size_t)(n ? n : 1), sizeof(PyObject *));
    if (!items || !encoded) {
        PyErr_NoMemory();
        goto out;
    }
    Py_ssize_t offset = 0;
    for (Py_ssize_t k = 0; k < n; k++) {
        Py_ssize_t i = PyLong_AsSsize_t(PyList_GET_ITEM(batch, k));
        if (i == -1 && PyErr_Occurred()) goto out;
        PyObject *job = PySequence_GetItem(jobs, i);
        if (!job) goto out;
        int bad = parse_job(job, &items[k], &encoded[k]);
        Py_DECREF(job);
        if (bad) goto out;
        if (items[k].size >= PY_SSIZE_T_MAX - offset - 1 || offset + items[k].size + 1 > view.len) {
            PyErr_SetString(PyExc_ValueError, "the buffer is too small for the batch");
            goto out;
        }
        items[k].offset = offset;
        offset += (Py_ssize_t)items[k].size + 1;
    }
    PyThreadState *save = PyEval_SaveThread();
    for (Py_ssize_t k = 0; k < n; k++) read_one(self, &items[k], view.buf, &save);
    PyEval_RestoreThread(save);
    result = PyList_New(n);
    if (!result) goto out;
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *res = result_of(&items[k]);
        if (!res) {
            Py_CLEAR(result);
            goto out;
        }
        PyList_SET_ITEM(result, k, res);
    }
out:
    if (claimed) self->busy = 0;
    drop_encoded(encoded, n);
    PyMem_Free(items);
    PyBuffer_Release(&view);
    return result;
}

/* settle.changed_since's look: each path (relative to the root; "" is the root) looked up again
 * through the directory chain, never following a symlink, and lstat-ed, all with the GIL released.
 * Only what the caller must look at comes back: (position, errno, 0) for a path that could not be
 * reached, (position, -1, 0) for one that is another inode than inodes[position] (0: not compared),
 * (position, 0, ctime_ns) for one whose ctime is at least `since`. */
static PyObject *Reader_ctimes(Reader *self, PyObject *args) {
    PyObject *paths, *inode_list;
    long long since;
    if (!PyArg_ParseTuple(args, "O!LO!", &PyList_Type, &paths, &since, &PyList_Type, &inode_list)) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(paths);
    if (PyList_GET_SIZE(inode_list) != n) {
        PyErr_SetString(PyExc_ValueError, "one inode (or 0) per path");
        return NULL;
    }
    PyObject *result = NULL, **encoded = NULL;
    long long *ctimes = NULL;
    unsigned long long *inodes = NULL;
    int *errs = NULL, claimed = 0;
    if (self->busy || self->root_fd < 0) {
        PyErr_SetString(PyExc_RuntimeError, "Reader closed or in use by another thread");
        return NULL;
    }
    self->busy = claimed = 1;
    encoded = PyMem_Calloc((size_t)(n ? n : 1), sizeof(PyObject *));
    ctimes = PyMem_Calloc((size_t)(n ? n : 1), sizeof(long long));
    errs = PyMem_Calloc((size_t)(n ? n : 1), sizeof(int));
    inodes = PyMem_Calloc((size_t)(n ? n : 1), sizeof *inodes);
    if (!encoded || !ctimes || !errs || !inodes) {
        PyErr_NoMemory();
        goto out;
    }
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *item = PyList_GET_ITEM(paths, k);
        if (!PyUnicode_Check(item)) {
            PyErr_SetString(PyExc_TypeError, "paths are str");
            goto out;
        }
        inodes[k] = PyLong_AsUnsignedLongLong(PyList_GET_ITEM(inode_list, k));
        if (PyErr_Occurred()) goto out;
        if (!(encoded[k] = encode_path(item))) goto out;
    }
    PyThreadState *save = PyEval_SaveThread();
    for (Py_ssize_t k = 0; k < n; k++) {
        const char *path = PyBytes_AS_STRING(encoded[k]);
        size_t len = (size_t)PyBytes_GET_SIZE(encoded[k]);
        const char *slash = memrchr(path, '/', len);
        const char *name = slash ? slash + 1 : path;
        struct stat st;
        int bad = len && (name[0] == '\0' || (name[0] == '.' && (name[1] == '\0' || (name[1] == '.' && name[2] == '\0'))));
        int e = injected(self, STAGE_CTIME, path, &save);
        int dirfd = bad || e ? -1 : enter(self, path, slash ? (size_t)(slash - path) : 0);
        int rc = e ? (errno = e, -1)
                 : bad ? (errno = EINVAL, -1)
                 : dirfd < 0 ? -1
                 : len ? fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW)
                       : fstat(self->root_fd, &st);
        if (rc < 0)
            errs[k] = errno ? errno : EIO;
        else if (inodes[k] && (unsigned long long)st.st_ino != inodes[k])
            errs[k] = -1;
        else
            ctimes[k] = (long long)st.st_ctim.tv_sec * 1000000000LL + st.st_ctim.tv_nsec;
    }
    PyEval_RestoreThread(save);
    if (!(result = PyList_New(0))) goto out;
    for (Py_ssize_t k = 0; k < n; k++) {
        if (!errs[k] && ctimes[k] < since) continue;
        PyObject *t = Py_BuildValue("(niL)", k, errs[k], errs[k] ? 0LL : ctimes[k]);
        if (!t || PyList_Append(result, t) < 0) {
            Py_XDECREF(t);
            Py_CLEAR(result);
            goto out;
        }
        Py_DECREF(t);
    }
out:
    if (claimed) self->busy = 0;
    drop_encoded(encoded, n);
    PyMem_Free(ctimes);
    PyMem_Free(errs);
    PyMem_Free(inodes);
    return result;
}

static void reader_release(Reader *self) {
    drop_to(self, 0);
    self->cur_valid = 0;
    free(self->failed);
    self->failed = NULL;
    self->failed_len = 0;
}

static PyObject *Reader_close(Reader *self, PyObject *Py_UNUSED(ignored)) {
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Reader in use by another thread");
        return NULL;
    }
    reader_release(self);
    self->root_fd = -1; /* not ours: the caller closes the root */
    Py_RETURN_NONE;
}

static int Reader_init(Reader *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"root_fd", "hook", NULL};
    int root_fd;
    PyObject *hook = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "i|O", kwlist, &root_fd, &hook)) return -1;
    if (root_fd < 0) {
        PyErr_SetString(PyExc_ValueError, "root_fd must be an open descriptor");
        return -1;
    }
    if (self->busy) { /* re-initialised while another thread reads through its descriptors */
        PyErr_SetString(PyExc_RuntimeError, "Reader in use by another thread");
        return -1;
    }
    reader_release(self);
    self->root_fd = root_fd;
    Py_XSETREF(self->hook, hook == Py_None ? NULL : Py_NewRef(hook));
    return 0;
}

static void Reader_dealloc(Reader *self) {
    reader_release(self);
    free(self->cur);
    free(self->fds);
    free(self->ends);
    Py_XDECREF(self->hook);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Reader_methods[] = {
    {"read", (PyCFunction)Reader_read, METH_VARARGS,
     "read(jobs, batch, buf) -> list: open, check and read the files jobs[i] for i in batch into buf."},
    {"ctimes", (PyCFunction)Reader_ctimes, METH_VARARGS,
     "ctimes(paths, since, inodes) -> list of (position, errno or -1 for another inode, ctime_ns): paths"
     " unreachable, replaced or with a ctime >= since."},
    {"close", (PyCFunction)Reader_close, METH_NOARGS, "Close the directory descriptors held."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "duri_integrity._speedups.Reader",
    .tp_basicsize = sizeof(Reader),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Reads batches of files beneath a root directory descriptor, without the GIL.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Reader_init,
    .tp_dealloc = (destructor)Reader_dealloc,
    .tp_methods = Reader_methods,
};


/* ---- Quick mode: walk and lstat in C, hand Python only what is not exactly as recorded ---- */

static PyObject *str_size, *str_mode, *str_blake3; /* interned attribute names of manifest.File */

typedef struct { /* one manifest entry as quick mode compares it (packed by compare.py) */
    uint64_t size;
    uint16_t mode;
    uint8_t kind; /* 0 file, 1 directory, 2 anything else */
    uint8_t pad[5];
} Expect;

typedef struct { /* the snapshot's record, struct "<QQQqq" */
    uint64_t dev, ino, size;
    int64_t mtime_ns, ctime_ns;
} Record;

typedef struct {
    DIR *dir;
    size_t rel_len;   /* length of this directory's relative path in the path buffer */
    char *names;      /* subdirectories still to enter: NUL-terminated names */
    size_t names_len, names_cap, next;
    size_t next_off;  /* offset in names of the next one (not re-walked: quadratic in siblings) */
    unsigned long long *inos;
    size_t n, cap;
} Frame;

/* ---- A second thread for the lstat calls: a directory's entries are listed a chunk at a time,
 * then both threads claim them one by one (an atomic counter) and lstat them. The caller keeps
 * the GIL, as it does for the whole scan; the helper is a plain thread that never touches a
 * Python object. Only then are the entries handled, in listing order, exactly as one at a time. lstat is most of
 * a quick-mode walk (the C program benchmarks/walk_floor.c: 8.6 ms on one thread, 5.1 on two).
 * The caller never waits for the helper to start: an entry it has not claimed the caller takes.
 * Bounded: a chunk holds at most CHUNK_ENTRIES entries, whatever the directory holds. */

#define CHUNK_ENTRIES 128

typedef struct {
    int dirfd;
    size_t n;
    char *names; /* NUL-terminated names, back to back */
    size_t names_len, names_cap;
    size_t off[CHUNK_ENTRIES];
    struct stat st[CHUNK_ENTRIES];
    int err[CHUNK_ENTRIES]; /* 0, or lstat's errno */
    atomic_size_t next;     /* the next entry to claim */
    unsigned long number;   /* counts the chunks offered to the helper */
} Chunk;

typedef struct {
    pthread_t thread;
    _Atomic(Chunk *) offered; /* the chunk on offer; whoever swaps it out for NULL shares it */
    atomic_ulong released;    /* the number of the last chunk the helper took and is done with */
    atomic_int stop;
} Helper;

static void lstat_claimed(Chunk *c) {
    size_t i;
    while ((i = atomic_fetch_add_explicit(&c->next, 1, memory_order_relaxed)) < c->n)
        c->err[i] = fstatat(c->dirfd, c->names + c->off[i], &c->st[i], AT_SYMLINK_NOFOLLOW) < 0 ? errno : 0;
}

static void *helper_main(void *arg) {
    Helper *h = arg;
    for (unsigned idle = 0; !atomic_load_explicit(&h->stop, memory_order_acquire);) {
        Chunk *c = atomic_exchange_explicit(&h->offered, NULL, memory_order_acq_rel);
        if (!c) {
            /* The caller is in Python or listing. Spin a little (the next chunk is usually a few
             * microseconds away), then give the core away; after ~1 ms of nothing, sleep in 0.1 ms
             * steps: a chunk offered meanwhile is lstat-ed by the caller alone, never waited for. */
            if (++idle > 4096) {
                struct timespec nap = {0, 100000};
                nanosleep(&nap, NULL);
            } else if (idle > 64) {
                sched_yield();
            }
            continue;
        }
        idle = 0;
        unsigned long number = c->number; /* read while the chunk is surely still this one */
        lstat_claimed(c);
        atomic_store_explicit(&h->released, number, memory_order_release);
    }
    return NULL;
}

/* lstat every entry of the chunk, beside the helper when there is one. */
static void lstat_chunk(Helper *h, Chunk *c) {
    atomic_store_explicit(&c->next, 0, memory_order_relaxed);
    if (!h || c->n < 2) {
        lstat_claimed(c);
        return;
    }
    c->number++;
    atomic_store_explicit(&h->offered, c, memory_order_release);
    lstat_claimed(c);
    if (atomic_exchange_explicit(&h->offered, NULL, memory_order_acq_rel) == c) return; /* not taken */
    /* Taken: the helper lstat-s at most the entry it holds, then lets the chunk go. */
    for (unsigned spins = 0; atomic_load_explicit(&h->released, memory_order_acquire) != c->number;)
        if (++spins > 64) sched_yield();
}

/* A helper thread, or NULL (one CPU to run on, or none could be started): the caller lstat-s alone. */
static Helper *helper_start(void) {
    cpu_set_t cpus;
    if (sched_getaffinity(0, sizeof cpus, &cpus) == 0 && CPU_COUNT(&cpus) < 2) return NULL;
    Helper *h = PyMem_Calloc(1, sizeof *h);
    if (!h) return NULL;
    atomic_init(&h->offered, NULL);
    atomic_init(&h->released, 0);
    atomic_init(&h->stop, 0);
    sigset_t all, old; /* signals stay with the threads Python knows: the helper starts with all blocked */
    sigfillset(&all);
    int blocked = pthread_sigmask(SIG_SETMASK, &all, &old) == 0;
    int started = pthread_create(&h->thread, NULL, helper_main, h) == 0;
    if (blocked) pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (!started) {
        PyMem_Free(h);
        return NULL;
    }
    return h;
}

static void helper_stop(Helper *h) {
    if (!h) return;
    atomic_store_explicit(&h->stop, 1, memory_order_release);
    pthread_join(h->thread, NULL);
    PyMem_Free(h);
}

typedef struct {
    PyObject *index, *skip, *excluded, *found, *error, *hook;
    unsigned long long *anchors; /* the trust anchors' inodes (a handful): compared without an int object per entry */
    Py_ssize_t n_anchors;
    PyObject *jobs, *job_index, *keys, *entry_list; /* full mode: the jobs for the hasher, as compare.py builds them */
    const Expect *expect;
    Py_ssize_t entries;
    const Record *old;
    int64_t settled;
    Record *records;
    unsigned char *seen;
    long long files_ok, dirs_ok, excluded_count;
    char *path;
    size_t path_cap;
    Chunk *chunk;   /* without the test hook: entries are listed a chunk at a time, then lstat-ed */
    Helper *helper; /* and, when a second thread could be started, lstat-ed on both */
} Scan;

static int path_reserve(Scan *s, size_t need) {
    if (need <= s->path_cap) return 0;
    size_t cap = s->path_cap ? s->path_cap : 256;
    while (cap < need) cap *= 2;
    char *p = PyMem_Realloc(s->path, cap);
    if (!p) {
        PyErr_NoMemory();
        return -1;
    }
    s->path = p;
    s->path_cap = cap;
    return 0;
}

static int call_error(Scan *s, const char *rel, size_t len, const char *what, int err, int listed) {
    PyObject *r = PyObject_CallFunction(s->error, "y#sii", rel, (Py_ssize_t)len, what, err, listed);
    Py_XDECREF(r);
    return r ? 0 : -1;
}

/* Tests only: the hook's errno for this stage and path (0: none), or -1 with an exception set. */
static int scan_hook(Scan *s, int stage, const char *rel, size_t len) {
    if (!s->hook) return 0;
    PyObject *r = PyObject_CallFunction(s->hook, "iy#", stage, rel, (Py_ssize_t)len);
    if (!r) return -1;
    long e = PyLong_AsLong(r);
    Py_DECREF(r);
    return e == -1 && PyErr_Occurred() ? -1 : (int)e;
}

/* Append name and its NUL to a growing buffer of names; where it starts, or -1 (no memory). */
static Py_ssize_t names_append(char **names, size_t *len, size_t *cap, const char *name) {
    size_t need = strlen(name) + 1;
    if (*len + need > *cap) {
        size_t grown = *cap ? *cap * 2 : 256;
        while (grown < *len + need) grown *= 2;
        char *p = PyMem_Realloc(*names, grown);
        if (!p) return -1;
        *names = p;
        *cap = grown;
    }
    memcpy(*names + *len, name, need);
    *len += need;
    return (Py_ssize_t)(*len - need);
}

static int frame_add_sub(Frame *f, const char *name, unsigned long long ino) {
    if (names_append(&f->names, &f->names_len, &f->names_cap, name) < 0) return -1;
    if (f->n == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 16;
        unsigned long long *p = PyMem_Realloc(f->inos, cap * sizeof *p);
        if (!p) return -1;
        f->inos = p;
        f->cap = cap;
    }
    f->inos[f->n++] = ino;
    return 0;
}

static int is_anchor(const Scan *s, unsigned long long ino) {
    for (Py_ssize_t k = 0; k < s->n_anchors; k++)
        if (s->anchors[k] == ino) return 1;
    return 0;
}

/* 1: handled here (exactly as recorded), 0: Python must look at it, -1: error. */
static int fast_entry(Scan *s, PyObject *rel, const struct stat *st) {
    PyObject *iobj = PyDict_GetItemWithError(s->index, rel);
    if (!iobj) return PyErr_Occurred() ? -1 : 0;
    Py_ssize_t i = PyLong_AsSsize_t(iobj);
    if (i < 0 || i >= s->entries) return PyErr_Occurred() ? -1 : 0;
    if (is_anchor(s, (unsigned long long)st->st_ino)) return 0; /* Python refuses it (after comparing devices) */
    const Expect *e = &s->expect[i];
    if ((st->st_mode & 07777) != e->mode) return 0;
    if (S_ISDIR(st->st_mode) && e->kind == 1) {
        s->seen[i] = 1;
        s->dirs_ok++;
        return 1;
    }
    /* Full mode hands files found by lstat (not by directory entry type) to Python, which adds the job. */
    if (s->jobs || !S_ISREG(st->st_mode) || e->kind != 0 || (uint64_t)st->st_size != e->size) return 0;
    Record r = {(uint64_t)st->st_dev, (uint64_t)st->st_ino, (uint64_t)st->st_size,
                (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec,
                (int64_t)st->st_ctim.tv_sec * 1000000000 + st->st_ctim.tv_nsec};
    s->records[i] = r;
    if (!s->old || memcmp(&s->old[i], &r, sizeof r) != 0 || r.mtime_ns >= s->settled || r.ctime_ns >= s->settled)
        return 0; /* to be hashed: Python adds the job (and redoes the record, identically) */
    s->seen[i] = 1;
    s->files_ok++;
    return 1;
}

/* Python's found(rel, ...) for an entry not settled here; rel is the str (decoded once), s->path its bytes. */
static int slow_entry(Scan *s, PyObject *rel, size_t rel_len, int dirfd, const char *name, const struct stat *st) {
    PyObject *target;
    if (S_ISLNK(st->st_mode)) {
        char buf[PATH_MAX + 1]; /* the kernel keeps symlink targets under PATH_MAX bytes */
        ssize_t n = readlinkat(dirfd, name, buf, sizeof buf);
        if (n < 0) return call_error(s, s->path, rel_len, "stat", errno, 0);
        target = PyBytes_FromStringAndSize(buf, n);
        if (!target) return -1;
    } else {
        target = Py_NewRef(Py_None);
    }
    PyObject *r = PyObject_CallFunction(
        s->found, "OKKKKLLO", rel, (unsigned long long)st->st_mode, (unsigned long long)st->st_ino,
        (unsigned long long)st->st_dev, (unsigned long long)st->st_size,
        (long long)st->st_mtim.tv_sec * 1000000000LL + st->st_mtim.tv_nsec,
        (long long)st->st_ctim.tv_sec * 1000000000LL + st->st_ctim.tv_nsec, target);
    Py_DECREF(target);
    Py_XDECREF(r);
    return r ? 0 : -1;
}

/* Append name to the frame's path in the path buffer; the relative path's length, or -1 (no memory). */
static Py_ssize_t put_name(Scan *s, const Frame *f, const char *name) {
    size_t base = f->rel_len, len = strlen(name), at = base ? base + 1 : 0;
    if (path_reserve(s, at + len + 1) < 0) return -1;
    if (base) s->path[base] = '/';
    memcpy(s->path + at, name, len + 1);
    return (Py_ssize_t)(at + len);
}

/* 1: the tool's own file (regular files only) or excluded, so left out; 0: look at it; -1: error. */
static int left_out(Scan *s, PyObject *rel, int is_reg, int is_dir) {
    if (is_reg) {
        int in = PySet_Contains(s->skip, rel);
        if (in) return in < 0 ? -1 : 1;
    }
    if (!s->excluded) return 0;
    PyObject *x = PyObject_CallFunction(s->excluded, "OO", rel, is_dir ? Py_True : Py_False);
    if (!x) return -1;
    int yes = PyObject_IsTrue(x);
    Py_DECREF(x);
    s->excluded_count += yes > 0;
    return yes;
}

static int looked_at(Scan *s, Frame *f, const char *name, const struct stat *st, int err);

/* One directory entry: lstat, skip/exclude, then the fast or the slow path; subdirectories queued. */
static int scan_entry(Scan *s, Frame *f, const char *name) {
    size_t base = f->rel_len;
    Py_ssize_t got = put_name(s, f, name);
    if (got < 0) return -1;
    struct stat st;
    int e = scan_hook(s, STAGE_ENTRY, s->path, (size_t)got);
    if (e < 0) return -1;
    if (!e && fstatat(dirfd(f->dir), name, &st, AT_SYMLINK_NOFOLLOW) < 0) e = errno;
    s->path[base] = '\0';
    return looked_at(s, f, name, &st, e);
}

/* An entry lstat-ed (err 0) or not (its errno): skip/exclude, then the fast or the slow path. */
static int looked_at(Scan *s, Frame *f, const char *name, const struct stat *st, int err) {
    size_t base = f->rel_len;
    Py_ssize_t got = put_name(s, f, name);
    if (got < 0) return -1;
    size_t rel_len = (size_t)got;
    if (err) {
        int rc = call_error(s, s->path, rel_len, "stat", err, 0);
        s->path[base] = '\0';
        return rc;
    }
    PyObject *rel = PyUnicode_DecodeFSDefaultAndSize(s->path, (Py_ssize_t)rel_len);
    if (!rel) return -1;
    int rc = -1, fast;
    int gone = left_out(s, rel, S_ISREG(st->st_mode), S_ISDIR(st->st_mode));
    if (gone) {
        rc = gone < 0 ? -1 : 0;
        goto out;
    }
    fast = fast_entry(s, rel, st);
    if (fast < 0) goto out;
    if (!fast && slow_entry(s, rel, rel_len, dirfd(f->dir), name, st) < 0) goto out;
    if (S_ISDIR(st->st_mode) && frame_add_sub(f, name, (unsigned long long)st->st_ino) < 0) {
        PyErr_NoMemory();
        goto out;
    }
    rc = 0;
out:
    Py_DECREF(rel);
    s->path[base] = '\0';
    return rc;
}

/* Full mode, a regular file by its directory entry (no lstat: the hasher fstat-s the open file):
 * a job for the hasher when the manifest lists a file there, else Python's Found(path, "file", ino, None). */
static int file_entry(Scan *s, Frame *f, const char *name, unsigned long long ino) {
    size_t base = f->rel_len;
    Py_ssize_t got = put_name(s, f, name);
    if (got < 0) return -1;
    size_t rel_len = (size_t)got;
    int rc = -1;
    PyObject *rel = NULL, *ino_obj = NULL;
    int e = scan_hook(s, STAGE_ENTRY, s->path, rel_len);
    if (e) { /* tests: the entry is treated as if its lstat had failed */
        rc = e < 0 ? -1 : call_error(s, s->path, rel_len, "stat", e, 0);
        goto out;
    }
    rel = PyUnicode_DecodeFSDefaultAndSize(s->path, (Py_ssize_t)rel_len);
    ino_obj = rel ? PyLong_FromUnsignedLongLong(ino) : NULL;
    if (!ino_obj) goto out;
    int gone = left_out(s, rel, 1, 0);
    if (gone) {
        rc = gone < 0 ? -1 : 0;
        goto out;
    }
    PyObject *iobj = PyDict_GetItemWithError(s->index, rel);
    Py_ssize_t i = iobj ? PyLong_AsSsize_t(iobj) : -1;
    if (PyErr_Occurred()) goto out;
    int fast = i >= 0 && i < s->entries && s->expect[i].kind == 0;
    if (fast && is_anchor(s, ino)) fast = 0;
    if (fast) {
        /* (path, inode, size, mode, blake3) with the manifest's own objects, as _full_consumer does:
         * no new int or str per file (100,000 of each would be ~7 MB more at the peak). */
        PyObject *entry = PyList_GET_ITEM(s->entry_list, i), *job = NULL;
        PyObject *size = PyObject_GetAttr(entry, str_size), *mode = size ? PyObject_GetAttr(entry, str_mode) : NULL;
        PyObject *digest = mode ? PyObject_GetAttr(entry, str_blake3) : NULL;
        if (digest) job = PyTuple_Pack(5, PyList_GET_ITEM(s->keys, i), ino_obj, size, mode, digest);
        Py_XDECREF(size);
        Py_XDECREF(mode);
        Py_XDECREF(digest);
        if (!job) goto out;
        int bad = PyList_Append(s->jobs, job);
        Py_DECREF(job);
        if (bad || PyList_Append(s->job_index, iobj) < 0) goto out;
        s->seen[i] = 1;
        s->files_ok++;
        rc = 0;
        goto out;
    }
    PyObject *r = PyObject_CallFunction(s->found, "OOOOOOOO", rel, Py_None, ino_obj, Py_None, Py_None, Py_None, Py_None,
                                        Py_None);
    Py_XDECREF(r);
    rc = r ? 0 : -1;
out:
    Py_XDECREF(rel);
    Py_XDECREF(ino_obj);
    s->path[base] = '\0';
    return rc;
}

static int is_dot(const char *name) {
    return name[0] == '.' && (name[1] == '\0' || (name[1] == '.' && name[2] == '\0'));
}

static int list_in_chunks(Scan *s, Frame *f);

static int list_dir(Scan *s, Frame *f) {
    const char *rel = f->rel_len ? s->path : ".";
    size_t rel_len = f->rel_len ? f->rel_len : 1;
    int e = scan_hook(s, STAGE_LIST, rel, rel_len);
    if (e) return e < 0 ? -1 : call_error(s, rel, rel_len, "list directory", e, 1);
    if (s->chunk) return list_in_chunks(s, f);
    for (;;) {
        errno = 0;
        struct dirent *d = readdir(f->dir);
        if (!d) {
            if (errno) return call_error(s, f->rel_len ? s->path : ".", f->rel_len ? f->rel_len : 1, "list directory", errno, 1);
            return 0;
        }
        if (is_dot(d->d_name)) continue;
        int rc = s->jobs && d->d_type == DT_REG ? file_entry(s, f, d->d_name, (unsigned long long)d->d_ino)
                                               : scan_entry(s, f, d->d_name);
        if (rc < 0) return -1;
    }
}

static int chunk_add(Chunk *c, const char *name) {
    Py_ssize_t at = names_append(&c->names, &c->names_len, &c->names_cap, name);
    if (at < 0) return -1;
    c->off[c->n++] = (size_t)at;
    return 0;
}

/* Quick mode and build's listing without the test hook: list up to CHUNK_ENTRIES entries, lstat
 * them all (on both threads), then handle them in listing order as scan_entry would one by one. */
static int list_in_chunks(Scan *s, Frame *f) {
    Chunk *c = s->chunk;
    for (;;) {
        int end = 0, err = 0;
        c->n = c->names_len = 0;
        c->dirfd = dirfd(f->dir);
        while (c->n < CHUNK_ENTRIES) {
            errno = 0;
            struct dirent *d = readdir(f->dir);
            if (!d) {
                end = 1;
                err = errno;
                break;
            }
            if (!is_dot(d->d_name) && chunk_add(c, d->d_name) < 0) {
                PyErr_NoMemory();
                return -1;
            }
        }
        lstat_chunk(s->helper, c);
        for (size_t i = 0; i < c->n; i++)
            if (looked_at(s, f, c->names + c->off[i], &c->st[i], c->err[i]) < 0) return -1;
        if (end)
            return err ? call_error(s, f->rel_len ? s->path : ".", f->rel_len ? f->rel_len : 1, "list directory", err, 1)
                       : 0;
    }
}

static void frame_free(Frame *f) {
    if (f->dir) closedir(f->dir);
    PyMem_Free(f->names);
    PyMem_Free(f->inos);
    memset(f, 0, sizeof *f);
}

static int enter_pushed(Scan *s, Frame **stack, size_t *depth, int fd, size_t rel_len) {
    DIR *dir = fdopendir(fd);
    if (!dir) {
        int e = errno;
        close(fd);
        int rc = call_error(s, s->path, rel_len, "list directory", e, 1);
        s->path[(*stack)[*depth - 1].rel_len] = '\0';
        return rc;
    }
    Frame *f = &(*stack)[(*depth)++];
    memset(f, 0, sizeof *f);
    f->dir = dir;
    f->rel_len = rel_len;
    return list_dir(s, f);
}

/* Open the top frame's next subdirectory beneath it, check it is the inode listed, then push and list it.
 * The path buffer holds the top frame's path: the child's while it is on the stack, else restored. */
static int enter_next(Scan *s, Frame **stack, size_t *depth, size_t *cap) {
    Frame *top = &(*stack)[*depth - 1];
    const char *name = top->names + top->next_off;
    unsigned long long ino = top->inos[top->next++];
    size_t base = top->rel_len;
    top->next_off += strlen(name) + 1;
    Py_ssize_t got = put_name(s, top, name);
    if (got < 0) return -1;
    size_t rel_len = (size_t)got;
    int fd = retry_openat(dirfd(top->dir), name, DIR_FLAGS);
    struct stat st;
    int rc;
    if (fd < 0) {
        rc = call_error(s, s->path, rel_len, "open directory", errno, 1);
    } else if (fstat(fd, &st) < 0 || (unsigned long long)st.st_ino != ino) {
        close(fd);
        rc = call_error(s, s->path, rel_len, "replaced", 0, 1);
    } else if (*depth == *cap) {
        size_t ncap = *cap * 2;
        Frame *p = PyMem_Realloc(*stack, ncap * sizeof(Frame));
        if (!p) {
            close(fd);
            PyErr_NoMemory();
            return -1;
        }
        *stack = p;
        *cap = ncap;
        return enter_pushed(s, stack, depth, fd, rel_len);
    } else {
        return enter_pushed(s, stack, depth, fd, rel_len);
    }
    s->path[base] = '\0';
    return rc;
}

/* The anchors' inode numbers (a set of int) into a C array; -1 with an exception set. */
static int load_anchors(Scan *s, PyObject *anchors) {
    PyObject *it = PyObject_GetIter(anchors), *item;
    Py_ssize_t n = PyObject_Length(anchors);
    if (!it || n < 0 || !(s->anchors = PyMem_Calloc((size_t)(n ? n : 1), sizeof *s->anchors))) {
        Py_XDECREF(it);
        if (!PyErr_Occurred()) PyErr_NoMemory();
        return -1;
    }
    while (s->n_anchors < n && (item = PyIter_Next(it))) {
        s->anchors[s->n_anchors++] = PyLong_AsUnsignedLongLong(item);
        Py_DECREF(item);
        if (PyErr_Occurred()) break;
    }
    Py_DECREF(it);
    return PyErr_Occurred() ? -1 : 0;
}

static PyObject *quick_scan(PyObject *Py_UNUSED(module), PyObject *args) {
    int root_fd;
    Scan s;
    memset(&s, 0, sizeof s);
    Py_buffer expect, records, seen, old;
    PyObject *oldobj, *excluded, *anchors;
    long long settled;
    PyObject *hook, *full;
    if (!PyArg_ParseTuple(args, "iO!y*OLw*w*O!OOOOOO", &root_fd, &PyDict_Type, &s.index, &expect, &oldobj, &settled,
                          &records, &seen, &PySet_Type, &s.skip, &excluded, &anchors, &s.found, &s.error, &full, &hook))
        return NULL;
    if (full != Py_None) { /* (jobs, job_index, keys, digests) */
        if (!PyArg_ParseTuple(full, "O!O!O!O!", &PyList_Type, &s.jobs, &PyList_Type, &s.job_index, &PyList_Type,
                              &s.keys, &PyList_Type, &s.entry_list)) {
            PyBuffer_Release(&expect);
            PyBuffer_Release(&records);
            PyBuffer_Release(&seen);
            return NULL;
        }
    }
    old.buf = NULL;
    PyObject *result = NULL;
    Frame *stack = NULL;
    size_t depth = 0, cap = 16;
    s.entries = expect.len / (Py_ssize_t)sizeof(Expect);
    if (oldobj != Py_None && PyObject_GetBuffer(oldobj, &old, PyBUF_SIMPLE) < 0) goto done_noold;
    if ((s.jobs ? records.len != 0 : records.len != s.entries * (Py_ssize_t)sizeof(Record)) || seen.len != s.entries ||
        (old.buf && old.len != records.len) ||
        (s.jobs && (PyList_GET_SIZE(s.keys) != s.entries || PyList_GET_SIZE(s.entry_list) != s.entries))) {
        PyErr_SetString(PyExc_ValueError, "expect, records, seen and old disagree on the number of entries");
        goto done;
    }
    s.expect = expect.buf;
    s.records = records.buf;
    s.seen = seen.buf;
    s.old = old.buf;
    s.settled = settled;
    s.excluded = excluded == Py_None ? NULL : excluded;
    s.hook = hook == Py_None ? NULL : hook;
    if (anchors != Py_None && load_anchors(&s, anchors) < 0) goto done;
    if (!s.hook && !s.jobs) { /* full mode lstat-s only directories and links: no helper for those */
        s.chunk = PyMem_Calloc(1, sizeof *s.chunk);
        if (!s.chunk) {
            PyErr_NoMemory();
            goto done;
        }
        atomic_init(&s.chunk->next, 0);
        s.helper = helper_start();
    }
    stack = PyMem_Malloc(cap * sizeof(Frame));
    if (!stack || path_reserve(&s, 256) < 0) {
        PyErr_NoMemory();
        goto done;
    }
    s.path[0] = '\0';
    int fd = retry_openat(root_fd, ".", DIR_FLAGS);
    DIR *dir = fd < 0 ? NULL : fdopendir(fd);
    if (!dir) {
        int e = errno;
        if (fd >= 0) close(fd);
        if (call_error(&s, ".", 1, "list directory", e, 1) < 0) goto done;
    } else {
        memset(&stack[0], 0, sizeof(Frame));
        stack[0].dir = dir;
        depth = 1;
        if (list_dir(&s, &stack[0]) < 0) goto done;
    }
    while (depth) {
        Frame *top = &stack[depth - 1];
        if (top->next >= top->n) {
            size_t base = depth > 1 ? stack[depth - 2].rel_len : 0;
            frame_free(top);
            depth--;
            s.path[base] = '\0';
            continue;
        }
        if (enter_next(&s, &stack, &depth, &cap) < 0) goto done;
    }
    result = Py_BuildValue("(LLL)", s.files_ok, s.dirs_ok, s.excluded_count);
done:
    if (old.buf) PyBuffer_Release(&old);
done_noold:
    helper_stop(s.helper);
    if (s.chunk) PyMem_Free(s.chunk->names);
    PyMem_Free(s.chunk);
    while (depth) frame_free(&stack[--depth]);
    PyMem_Free(stack);
    PyMem_Free(s.path);
    PyMem_Free(s.anchors);
    PyBuffer_Release(&expect);
    PyBuffer_Release(&records);
    PyBuffer_Release(&seen);
    return result;
}

/* find_key_line(buffer, start) -> int: the first offset from `start` where a minisign secret key's
 * base64 line starts, or -1: "RW", one of "QRST", two base64 characters, one of "EUk0", "Iy",
 * then 203 more base64 characters. That is keys._KEY_LINE, exactly the 211 characters that, with
 * an "=", decode to 158 bytes starting "Ed" with "B2" at bytes 4 and 5 (keys._is_key_line).
 * Build asks it of every file's head: a vectorised memchr for "R" takes ~0.1 us for 4 KiB, the
 * regular expression ~1.5 us, on the thread that hashes; both are linear in the head. */
static int is_b64(unsigned char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' || c == '/';
}

#define KEY_LINE_LEN 211 /* the line without its "=" */

/* How many characters from r (at most KEY_LINE_LEN) fit a key line's start. */
static Py_ssize_t key_line_fit(const unsigned char *r) {
    if (r[1] != 'W' || !memchr("QRST", r[2], 4) || !memchr("EUk0", r[5], 4) || r[6] != 'I' || r[7] != 'y')
        return 1;
    Py_ssize_t k = 2;
    while (k < KEY_LINE_LEN && is_b64(r[k])) k++;
    return k;
}

static PyObject *find_key_line(PyObject *Py_UNUSED(module), PyObject *args) {
    Py_buffer view;
    Py_ssize_t start;
    if (!PyArg_ParseTuple(args, "y*n", &view, &start)) return NULL;
    const unsigned char *base = view.buf, *end = base + view.len;
    const unsigned char *p = base + (start < 0 ? 0 : start > view.len ? view.len : start);
    Py_ssize_t found = -1;
    while (found < 0 && end - p >= KEY_LINE_LEN) {
        const unsigned char *r = memchr(p, 'R', (size_t)(end - p - KEY_LINE_LEN + 1)); /* a start that fits */
        if (!r) break;
        Py_ssize_t k = key_line_fit(r);
        if (k == KEY_LINE_LEN) {
            found = r - base;
        } else {
            /* A run of base64 broken at r[k] holds no line starting before r + k (it would cover
             * r[k]); a prefix that does not fit rules out r alone. */
            p = r + (k > 8 ? k : 1);
        }
    }
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(found);
}

static PyMethodDef module_methods[] = {
    {"find_key_line", find_key_line, METH_VARARGS,
     "find_key_line(buffer, start) -> int: where a minisign secret key's base64 line starts, or -1 (keys.py)."},
    {"quick_scan", quick_scan, METH_VARARGS,
     "quick_scan(root_fd, index, expect, old, settled_before, records, seen, skip, excluded, anchors, found, error,"
     " full, hook)"
     " -> (files_ok, dirs_ok, excluded): quick mode's walk; see compare.py."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_speedups", "Batched GIL-free file reading and quick-mode scanning for duri_integrity.",
    -1, module_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__speedups(void) {
    if (PyType_Ready(&ReaderType) < 0) return NULL;
    str_size = PyUnicode_InternFromString("size");
    str_mode = PyUnicode_InternFromString("mode");
    str_blake3 = PyUnicode_InternFromString("blake3");
    if (!str_size || !str_mode || !str_blake3) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    if (PyModule_AddObjectRef(m, "Reader", (PyObject *)&ReaderType) < 0 || add_warming(m) < 0 ||
        PyModule_AddIntConstant(m, "MAX_HELD", MAX_HELD) < 0 ||
        PyModule_AddIntConstant(m, "STAGE_OPEN", STAGE_OPEN) < 0 ||
        PyModule_AddIntConstant(m, "STAGE_FSTAT", STAGE_FSTAT) < 0 ||
        PyModule_AddIntConstant(m, "STAGE_READ", STAGE_READ) < 0 ||
        PyModule_AddIntConstant(m, "STAGE_ENTRY", STAGE_ENTRY) < 0 ||
        PyModule_AddIntConstant(m, "STAGE_LIST", STAGE_LIST) < 0 ||
        PyModule_AddIntConstant(m, "STAGE_CTIME", STAGE_CTIME) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

/* The normalisation's per-entry step in one pass (pipeline/pdata/normalize.py, ``_winners``):
 * for every attribute entry of a batch, each precedence row its key feeds (when the row's condition
 * holds on the entry's span) scores rank << entry_bits | entry, and the lowest score per (column, span)
 * wins.  numpy does the same in ~10 array passes over the entries (repeat, fancy indexing, minimum.at);
 * this is one loop and no temporaries.  Optional: without it the numpy path runs (same answers, tested).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    Py_buffer view;
    int held;
} Buf;

static int get(PyObject *obj, Buf *b, Py_ssize_t itemsize, int writable, const char *name) {
    if (PyObject_GetBuffer(obj, &b->view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) < 0)
        return -1;
    b->held = 1;
    if (b->view.itemsize != itemsize) {
        PyErr_Format(PyExc_TypeError, "%s: items of %zd bytes expected, got %zd", name, itemsize, b->view.itemsize);
        return -1;
    }
    return 0;
}

static void release(Buf *bufs, int n) {
    for (int i = 0; i < n; i++)
        if (bufs[i].held) PyBuffer_Release(&bufs[i].view);
}

/* winners(best, key_id, usable, owner, rows_start, rows_count, row_column, row_rank, row_condition, holds,
 *         n, n_span, n_real, n_matched_span, resource_rank_offset, entry_bits)
 * best: int64[columns * n], filled beforehand (the null slot at no rank), lowered in place.
 * key_id int32 (-1: no key of the table), usable bool, owner int64 per entry; per key: rows_start,
 * rows_count int64; per row: column, rank, condition int64; holds bool[conditions + 1][n] (C order; the
 * last row, condition -1, always holds). */
static PyObject *winners(PyObject *self, PyObject *args) {
    PyObject *objs[10];
    Py_ssize_t n, n_span, n_real, n_matched_span, offset, entry_bits;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOOnnnnnn", &objs[0], &objs[1], &objs[2], &objs[3], &objs[4], &objs[5],
                          &objs[6], &objs[7], &objs[8], &objs[9], &n, &n_span, &n_real, &n_matched_span, &offset,
                          &entry_bits))
        return NULL;
    static const Py_ssize_t sizes[10] = {8, 4, 1, 8, 8, 8, 8, 8, 8, 1};
    static const char *names[10] = {"best", "key_id", "usable", "owner", "rows_start", "rows_count",
                                    "row_column", "row_rank", "row_condition", "holds"};
    Buf b[10];
    memset(b, 0, sizeof(b));
    for (int i = 0; i < 10; i++) {
        if (get(objs[i], &b[i], sizes[i], i == 0, names[i]) < 0) {
            release(b, 10);
            return NULL;
        }
    }
    int64_t *best = (int64_t *)b[0].view.buf;
    const int32_t *key_id = (const int32_t *)b[1].view.buf;
    const uint8_t *usable = (const uint8_t *)b[2].view.buf;
    const int64_t *owner = (const int64_t *)b[3].view.buf;
    const int64_t *start = (const int64_t *)b[4].view.buf, *count = (const int64_t *)b[5].view.buf;
    const int64_t *column = (const int64_t *)b[6].view.buf, *rank = (const int64_t *)b[7].view.buf;
    const int64_t *condition = (const int64_t *)b[8].view.buf;
    const uint8_t *holds = (const uint8_t *)b[9].view.buf;
    Py_ssize_t entries = b[1].view.len / 4, keys = b[4].view.len / 8, rows = b[6].view.len / 8;
    Py_ssize_t cells = b[0].view.len / 8, conditions = n ? b[9].view.len / n : 0;
    if (b[2].view.len != entries || b[3].view.len / 8 != entries || b[5].view.len / 8 != keys
        || b[7].view.len / 8 != rows || b[8].view.len / 8 != rows || cells % (n ? n : 1)) {
        release(b, 10);
        PyErr_SetString(PyExc_ValueError, "winners: arrays of mismatched lengths");
        return NULL;
    }
    Py_ssize_t bad = -1;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t e = 0; e < entries && bad < 0; e++) {
        int32_t k = key_id[e];
        if (k < 0 || k >= keys || !usable[e] || count[k] <= 0) continue;
        int64_t span = owner[e];
        if (span < 0 || span >= n) { bad = e; break; }
        int resource = e >= n_span && (n_real < 0 || e < n_real || e >= n_matched_span);
        for (int64_t r = start[k]; r < start[k] + count[k]; r++) {
            if (r < 0 || r >= rows) { bad = e; break; }
            int64_t c = condition[r];
            Py_ssize_t hrow = c < 0 ? conditions - 1 : (Py_ssize_t)c;
            if (hrow < 0 || hrow >= conditions) { bad = e; break; }
            if (!holds[hrow * n + span]) continue;
            int64_t score = ((rank[r] + (resource ? offset : 0)) << entry_bits) | (int64_t)e;
            Py_ssize_t cell = (Py_ssize_t)(column[r] * n + span);
            if (cell < 0 || cell >= cells) { bad = e; break; }
            if (score < best[cell]) best[cell] = score;
        }
    }
    Py_END_ALLOW_THREADS
    release(b, 10);
    if (bad >= 0) {
        PyErr_Format(PyExc_ValueError, "winners: entry %zd indexes outside its arrays", bad);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"winners", winners, METH_VARARGS, "Lower best[column * n + span] to each usable entry's best score."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_normalize", NULL, -1, methods};

PyMODINIT_FUNC PyInit__normalize(void) { return PyModule_Create(&module); }

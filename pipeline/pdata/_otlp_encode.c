/* Canonical Arrow span columns straight to the protobuf wire bytes of each span's Span message.
 *
 * Why: the column-wise Python encoder (arrow_otlp.py: Arrow kernels and numpy) costs 8-13 us of CPU per
 * span, in the pipeline process whose GIL the receivers and the store also need; the first exporter of a
 * batch pays it.  This reads the columns' Arrow buffers (validity bitmaps, int32 offsets, data) once, with
 * the GIL released, and writes every span's fields in field order into one blob with int32 offsets (a
 * binary array for Python to wrap); the resource attributes and scopes likewise.  encode_request does
 * all of table_to_bytes in one call: every record batch's spans, resources and scopes, then the
 * ResourceSpans/ScopeSpans grouping of consecutive rows with equal resource and scope bytes, written into
 * the result's bytes object -- ~0.55 us of CPU per span against ~15 for the Python kernels and ~1.2 when
 * Python called the parts and grouped them (bench/encode.py, 512-span tables).
 *
 * What stays in Python (arrow_otlp.py) is rare and is handed in as a column: the encoded events and links
 * of the few spans that have them, spliced at their place (None when no span of a batch has any).  Kind
 * and status code are read by name here, as arrow_otlp._enum_codes reads them.  Typed attribute values (the keys the normalisation table reads as int, double
 * or bool) are parsed here by hand-written matchers of the Python path's regexes, doubles with strtod in
 * the "C" locale (correctly rounded, as Arrow's cast is).  Anything not handled exactly as the Python
 * path would (a column of another type, an id whose text is not 2 x width bytes, a null map key,
 * misaligned or short buffers, a blob past 2 GiB) makes the call return None, and Python encodes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h> /* defines _GNU_SOURCE: newlocale, strtod_l */
#include <locale.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { OK = 0, FALLBACK = 1, NOMEM = 2 };

/* ---- growable output ----------------------------------------------------------------------------- */

typedef struct {
    uint8_t *p;
    size_t len, cap;
} Buf;

static int buf_grow(Buf *b, size_t extra) {
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra) {
        if (cap > SIZE_MAX / 2) return NOMEM;
        cap *= 2;
    }
    uint8_t *p = realloc(b->p, cap);
    if (!p) return NOMEM;
    b->p = p;
    b->cap = cap;
    return OK;
}

static inline int reserve(Buf *b, size_t extra) { return b->len + extra <= b->cap ? OK : buf_grow(b, extra); }

static inline size_t varint_len(uint64_t v) {
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

/* The writers below assume room was reserved. */
static inline void put_varint(Buf *b, uint64_t v) {
    while (v >= 0x80) {
        b->p[b->len++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    b->p[b->len++] = (uint8_t)v;
}

static inline void put(Buf *b, const void *src, size_t n) {
    if (n) memcpy(b->p + b->len, src, n);
    b->len += n;
}

static inline void put_le(Buf *b, uint64_t v, int width) {
    for (int i = 0; i < width; i++) b->p[b->len++] = (uint8_t)(v >> (8 * i));
}

/* A length-delimited field: tag, length, bytes.  At most 10 + 10 bytes of framing. */
static inline int put_field(Buf *b, uint32_t field, const uint8_t *s, size_t n) {
    if (reserve(b, 20 + n)) return NOMEM;
    put_varint(b, ((uint64_t)field << 3) | 2);
    put_varint(b, n);
    put(b, s, n);
    return OK;
}

/* A varint field, left out when 0 (proto3). */
static inline int put_varint_field(Buf *b, uint32_t field, int64_t v) {
    if (!v) return OK;
    if (reserve(b, 20)) return NOMEM;
    put_varint(b, (uint64_t)field << 3);
    put_varint(b, (uint64_t)v);
    return OK;
}

/* ---- input columns: views of Arrow buffers ------------------------------------------------------- */

#define MAX_VIEWS 96  /* a request's batch: the span columns, resources and scopes */

typedef struct {
    Py_buffer views[MAX_VIEWS];
    int n;
} Views;

static void views_release(Views *v) {
    for (int i = 0; i < v->n; i++) PyBuffer_Release(&v->views[i]);
    v->n = 0;
}

/* One column: a string/binary array (offs, data) or a fixed-width one (data); validity NULL = all valid. */
typedef struct {
    int64_t off, len;
    const uint8_t *valid;
    const int32_t *offs;
    const uint8_t *data;
    size_t data_len;
} Col;

/* A map<string, string> column: offsets into the keys and items arrays (its validity is not read: the
 * Python path reads the offsets alone, and a null row has an empty range). */
typedef struct {
    int64_t off, len;
    const int32_t *offs;
    Col keys, items;
} MapCol;

/* A buffer object (or None) -> pointer and size; -1 with a Python error, 1 when unusable (fallback). */
static int view(PyObject *obj, Views *v, const uint8_t **p, size_t *n, size_t need, size_t align) {
    *p = NULL;
    *n = 0;
    if (obj == Py_None) return need ? 1 : 0;
    if (v->n >= MAX_VIEWS) return 1;
    Py_buffer *b = &v->views[v->n];
    if (PyObject_GetBuffer(obj, b, PyBUF_SIMPLE)) return -1;
    v->n++;
    *p = b->buf;
    *n = (size_t)b->len;
    if (*n < need || (align && (uintptr_t)b->buf % align)) return 1;
    return 0;
}

/* (offset, length, validity | None, offsets, data | None) or, fixed width, (offset, length, validity | None,
 * data) with `width` bytes per value. */
static int parse_col(PyObject *t, Views *v, Col *c, int width) {
    Py_ssize_t want = width ? 4 : 5;
    if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != want) {
        PyErr_SetString(PyExc_TypeError, "a column is (offset, length, validity, [offsets,] data)");
        return -1;
    }
    memset(c, 0, sizeof *c);
    c->off = PyLong_AsLongLong(PyTuple_GET_ITEM(t, 0));
    c->len = PyLong_AsLongLong(PyTuple_GET_ITEM(t, 1));
    if (PyErr_Occurred()) return -1;
    if (c->off < 0 || c->len < 0 || c->off > INT32_MAX || c->len > INT32_MAX) return 1;
    size_t end = (size_t)(c->off + c->len);
    const uint8_t *p;
    size_t n;
    int rc = view(PyTuple_GET_ITEM(t, 2), v, &c->valid, &n, 0, 0);
    if (rc) return rc;
    if (c->valid && n < (end + 7) / 8) return 1;
    if (width) {
        rc = view(PyTuple_GET_ITEM(t, 3), v, &c->data, &c->data_len, end * (size_t)width, (size_t)width);
        return rc;
    }
    rc = view(PyTuple_GET_ITEM(t, 3), v, &p, &n, (end + 1) * 4, 4);
    if (rc) return rc;
    c->offs = (const int32_t *)p;
    return view(PyTuple_GET_ITEM(t, 4), v, &c->data, &c->data_len, 0, 0);
}

/* (offset, length, offsets, keys column, items column) */
static int parse_map(PyObject *t, Views *v, MapCol *m) {
    if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 5) {
        PyErr_SetString(PyExc_TypeError, "a map column is (offset, length, offsets, keys, items)");
        return -1;
    }
    m->off = PyLong_AsLongLong(PyTuple_GET_ITEM(t, 0));
    m->len = PyLong_AsLongLong(PyTuple_GET_ITEM(t, 1));
    if (PyErr_Occurred()) return -1;
    if (m->off < 0 || m->len < 0 || m->off > INT32_MAX || m->len > INT32_MAX) return 1;
    const uint8_t *p;
    size_t n;
    int rc = view(PyTuple_GET_ITEM(t, 2), v, &p, &n, (size_t)(m->off + m->len + 1) * 4, 4);
    if (rc) return rc;
    m->offs = (const int32_t *)p;
    if ((rc = parse_col(PyTuple_GET_ITEM(t, 3), v, &m->keys, 0))) return rc;
    if ((rc = parse_col(PyTuple_GET_ITEM(t, 4), v, &m->items, 0))) return rc;
    return m->keys.len == m->items.len ? 0 : 1;
}

static inline int is_valid(const Col *c, int64_t i) {
    int64_t k = c->off + i;
    return !c->valid || ((c->valid[k >> 3] >> (k & 7)) & 1);
}

/* Element i of a string column: 1 valid, 0 null (s, n empty), -1 offsets out of range. */
static inline int str_at(const Col *c, int64_t i, const uint8_t **s, size_t *n) {
    int32_t a = c->offs[c->off + i], b = c->offs[c->off + i + 1];
    if (a < 0 || b < a || (size_t)b > c->data_len) return -1;
    if (!is_valid(c, i)) {
        *s = (const uint8_t *)"";
        *n = 0;
        return 0;
    }
    *s = c->data + a;
    *n = (size_t)(b - a);
    return 1;
}

static inline int64_t i64_at(const Col *c, int64_t i) {  /* null -> 0, as fill_null(0) */
    if (!is_valid(c, i)) return 0;
    int64_t v;
    memcpy(&v, c->data + 8 * (c->off + i), 8);
    return v;
}

/* ---- the typed keys: a small open-addressing table --------------------------------------------- */

enum { K_INT = 1, K_DOUBLE = 2, K_BOOL = 3, K_KIND = 3, K_COST = 4 };

typedef struct {
    const uint8_t *key;
    size_t len;
    int flags;
} Entry;

typedef struct {
    Entry *e;
    size_t mask;
} Keys;

static inline uint64_t key_hash(const uint8_t *k, size_t n) {
    uint64_t h = (uint64_t)n * 0x9E3779B97F4A7C15ULL;
    if (n >= 8) {
        uint64_t a, b;
        memcpy(&a, k, 8);
        memcpy(&b, k + n - 8, 8);
        h ^= a * 0xff51afd7ed558ccdULL;
        h = (h ^ (h >> 29)) + b * 0xc4ceb9fe1a85ec53ULL;
    } else {
        for (size_t i = 0; i < n; i++) h = (h ^ k[i]) * 0x100000001b3ULL;
    }
    return h ^ (h >> 32);
}

static inline int key_flags(const Keys *t, const uint8_t *k, size_t n) {
    for (size_t i = key_hash(k, n) & t->mask;; i = (i + 1) & t->mask) {
        const Entry *e = &t->e[i];
        if (!e->key) return 0;
        if (e->len == n && !memcmp(e->key, k, n)) return e->flags;
    }
}

static int keys_add(Keys *t, PyObject *key, int flags) {
    char *k;
    Py_ssize_t n;
    if (PyBytes_AsStringAndSize(key, &k, &n)) return -1;
    size_t i = key_hash((const uint8_t *)k, (size_t)n) & t->mask;
    for (;; i = (i + 1) & t->mask) {
        Entry *e = &t->e[i];
        if (!e->key) {
            e->key = (const uint8_t *)k;
            e->len = (size_t)n;
            e->flags = flags;
            return 0;
        }
        if (e->len == (size_t)n && !memcmp(e->key, k, (size_t)n)) {
            e->flags |= flags;
            return 0;
        }
    }
}

/* typed: ((key bytes, kind 1|2|3), ...); cost: (key bytes, ...).  The bytes stay owned by the arguments. */
static int keys_init(Keys *t, PyObject *typed, PyObject *cost) {
    if (!PyTuple_Check(typed) || (cost && !PyTuple_Check(cost))) {
        PyErr_SetString(PyExc_TypeError, "typed keys and cost keys are tuples");
        return -1;
    }
    size_t count = (size_t)PyTuple_GET_SIZE(typed) + (cost ? (size_t)PyTuple_GET_SIZE(cost) : 0), cap = 16;
    while (cap < 2 * count + 1) cap *= 2;
    t->e = calloc(cap, sizeof(Entry));
    t->mask = cap - 1;
    if (!t->e) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(typed); i++) {
        PyObject *pair = PyTuple_GET_ITEM(typed, i);
        long kind;
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2
            || (kind = PyLong_AsLong(PyTuple_GET_ITEM(pair, 1))) < K_INT || kind > K_BOOL) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "a typed key is (bytes, 1 | 2 | 3)");
            return -1;
        }
        if (keys_add(t, PyTuple_GET_ITEM(pair, 0), (int)kind)) return -1;
    }
    for (Py_ssize_t i = 0; cost && i < PyTuple_GET_SIZE(cost); i++)
        if (keys_add(t, PyTuple_GET_ITEM(cost, i), K_COST)) return -1;
    return 0;
}

/* ---- typed values, as arrow_otlp._TYPED's regexes and Arrow's casts read them ---------------------- */

static locale_t c_locale;

static inline int is_digit(uint8_t c) { return c >= '0' && c <= '9'; }

/* ^-?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?$ (a deterministic language: greedy is exact) */
static int is_decimal(const uint8_t *s, size_t n) {
    size_t i = 0, from;
    if (i < n && s[i] == '-') i++;
    from = i;
    while (i < n && is_digit(s[i])) i++;
    if (i > from) {
        if (i < n && s[i] == '.')
            for (i++; i < n && is_digit(s[i]); i++) {}
    } else {
        if (i >= n || s[i] != '.') return 0;
        from = ++i;
        while (i < n && is_digit(s[i])) i++;
        if (i == from) return 0;
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '+' || s[i] == '-')) i++;
        from = i;
        while (i < n && is_digit(s[i])) i++;
        if (i == from) return 0;
    }
    return i == n;
}

static int parse_double(const uint8_t *s, size_t n, uint64_t *bits) {
    double d;
    if (n == 3 && !memcmp(s, "nan", 3)) {
        *bits = 0x7ff8000000000000ULL;  /* Arrow's cast of "nan" */
        return 1;
    }
    if ((n == 3 && !memcmp(s, "inf", 3)) || (n == 4 && !memcmp(s, "-inf", 4))) {
        *bits = n == 3 ? 0x7ff0000000000000ULL : 0xfff0000000000000ULL;
        return 1;
    }
    if (!is_decimal(s, n)) return 0;
    char small[64], *text = n < sizeof small ? small : malloc(n + 1);
    if (!text) return -1;
    memcpy(text, s, n);
    text[n] = 0;
    d = strtod_l(text, NULL, c_locale);  /* correctly rounded; past the range: +-inf or (-)0, as Arrow */
    if (text != small) free(text);
    memcpy(bits, &d, 8);
    return 1;
}

/* The AnyValue of a value of a typed key into out (<= 11 bytes): its length, 0 when it stays a string
 * (the text does not parse), -1 out of memory. */
static int typed_value(int kind, const uint8_t *s, size_t n, uint8_t *out) {
    if (kind == K_INT) {  /* ^-?[0-9]{1,18}$ */
        size_t i = n && s[0] == '-';
        if (n - i < 1 || n - i > 18) return 0;
        int64_t v = 0;
        for (size_t j = i; j < n; j++) {
            if (!is_digit(s[j])) return 0;
            v = v * 10 + (s[j] - '0');
        }
        uint64_t u = (uint64_t)(i ? -v : v);
        int len = 0;
        out[len++] = 0x18;  /* AnyValue.int_value = 3 */
        while (u >= 0x80) {
            out[len++] = (uint8_t)(u | 0x80);
            u >>= 7;
        }
        out[len++] = (uint8_t)u;
        return len;
    }
    if (kind == K_DOUBLE) {
        uint64_t bits;
        int rc = parse_double(s, n, &bits);
        if (rc <= 0) return rc;
        out[0] = 0x21;  /* AnyValue.double_value = 4 */
        for (int i = 0; i < 8; i++) out[1 + i] = (uint8_t)(bits >> (8 * i));
        return 9;
    }
    if ((n == 4 && !memcmp(s, "true", 4)) || (n == 5 && !memcmp(s, "false", 5))) {
        out[0] = 0x10;  /* AnyValue.bool_value = 2 */
        out[1] = n == 4;
        return 2;
    }
    return 0;
}

/* ---- encoding -------------------------------------------------------------------------------------- */

/* Row `row` of a map column as repeated KeyValue fields numbered `field`; *cost_seen set when a key is
 * one the client's own cost arrives in. */
static int put_key_values(Buf *b, const MapCol *m, int64_t row, uint32_t field, const Keys *t, int *cost_seen) {
    int32_t from = m->offs[m->off + row], to = m->offs[m->off + row + 1];
    if (from < 0 || to < from || to > m->keys.len) return FALLBACK;
    uint64_t tag = ((uint64_t)field << 3) | 2;
    for (int32_t j = from; j < to; j++) {
        const uint8_t *k = NULL, *s = NULL;
        size_t kn = 0, sn = 0;
        uint8_t typed[16];
        int kr = str_at(&m->keys, j, &k, &kn), vr = str_at(&m->items, j, &s, &sn), tn = 0;
        if (kr <= 0 || vr < 0) return FALLBACK;  /* a null key: left to the Python path */
        int flags = key_flags(t, k, kn);
        if (flags & K_COST) *cost_seen = 1;
        if (vr && (flags & K_KIND) && (tn = typed_value(flags & K_KIND, s, sn, typed)) < 0) return NOMEM;
        size_t any = !vr ? 0 : tn ? (size_t)tn : 1 + varint_len(sn) + sn;
        size_t kv = 1 + varint_len(kn) + kn + 1 + varint_len(any) + any;
        if (reserve(b, 20 + kv)) return NOMEM;
        put_varint(b, tag);
        put_varint(b, kv);
        b->p[b->len++] = 0x0a;  /* KeyValue.key = 1 */
        put_varint(b, kn);
        put(b, k, kn);
        b->p[b->len++] = 0x12;  /* KeyValue.value = 2 */
        put_varint(b, any);
        if (tn) {
            put(b, typed, (size_t)tn);
        } else if (vr) {
            b->p[b->len++] = 0x0a;  /* AnyValue.string_value = 1 */
            put_varint(b, sn);
            put(b, s, sn);
        }
    }
    return OK;
}

static const uint8_t HEX[256] = {
    ['0'] = 0, ['1'] = 1, ['2'] = 2, ['3'] = 3, ['4'] = 4, ['5'] = 5, ['6'] = 6, ['7'] = 7, ['8'] = 8,
    ['9'] = 9, ['a'] = 10, ['b'] = 11, ['c'] = 12, ['d'] = 13, ['e'] = 14, ['f'] = 15, ['A'] = 10,
    ['B'] = 11, ['C'] = 12, ['D'] = 13, ['E'] = 14, ['F'] = 15,  /* anything else: 0, as _HEX */
};

/* An id field: hex text of 2 x width bytes -> width bytes; null -> absent (`optional`) or an empty field. */
static int put_id(Buf *b, uint32_t field, const Col *c, int64_t i, size_t width, int optional) {
    const uint8_t *s;
    size_t n;
    int r = str_at(c, i, &s, &n);
    if (r < 0 || (r && n != 2 * width)) return FALLBACK;
    if (!r) {
        if (optional) return OK;
        width = 0;
    }
    if (reserve(b, 2 + width)) return NOMEM;
    b->p[b->len++] = (uint8_t)((field << 3) | 2);
    b->p[b->len++] = (uint8_t)width;
    for (size_t j = 0; j < width; j++) b->p[b->len++] = (uint8_t)(HEX[s[2 * j]] << 4 | HEX[s[2 * j + 1]]);
    return OK;
}

/* A string field, left out when null or empty. */
static int put_string(Buf *b, uint32_t field, const Col *c, int64_t i) {
    const uint8_t *s;
    size_t n;
    int r = str_at(c, i, &s, &n);
    if (r < 0) return FALLBACK;
    return n ? put_field(b, field, s, n) : OK;
}

/* The span columns, in the order arrow_otlp._c_span_fields passes them. */
enum {
    C_TRACE, C_SPAN, C_STATE, C_PARENT, C_NAME, C_KIND, C_START, C_END, C_ATTRS, C_COST, C_DROPPED_A,
    C_EXTRA, C_DROPPED_E, C_DROPPED_L, C_STATUS_MSG, C_STATUS_CODE, C_FLAGS, N_COLS
};
static const int WIDTH[N_COLS] = {
    [C_START] = 8, [C_END] = 8, [C_COST] = 8, [C_DROPPED_A] = 8, [C_DROPPED_E] = 8, [C_DROPPED_L] = 8,
    [C_FLAGS] = 8,
};

/* The cost attribute's KeyValue up to its double's 8 bytes (key, value tag and length, double tag). */
typedef struct {
    const uint8_t *p;
    size_t n;
} Prefix;

/* An enum stored by name (kind, status code): its names in code order, and the prefix of the values
 * outside them, stored as prefix + number ("kind_7", "status_-1": proto3 enums are open). */
#define MAX_NAMES 16

typedef struct {
    const uint8_t *name[MAX_NAMES];
    size_t len[MAX_NAMES];
    int count;
    const uint8_t *prefix;
    size_t plen;
} Enum;

/* What every row of a call reads: the typed and cost keys, the cost attribute's prefix, the enums. */
typedef struct {
    Keys keys;
    Prefix cost;
    Enum kind, status;
} Ctx;

/* (names tuple of bytes, prefix bytes); the bytes stay owned by the arguments. */
static int enum_init(Enum *e, PyObject *names, PyObject *prefix) {
    char *p;
    Py_ssize_t n;
    if (!PyTuple_Check(names) || PyTuple_GET_SIZE(names) > MAX_NAMES) {
        PyErr_Format(PyExc_ValueError, "an enum's names are a tuple of at most %d bytes", MAX_NAMES);
        return -1;
    }
    e->count = (int)PyTuple_GET_SIZE(names);
    for (int k = 0; k < e->count; k++) {
        if (PyBytes_AsStringAndSize(PyTuple_GET_ITEM(names, k), &p, &n)) return -1;
        e->name[k] = (const uint8_t *)p;
        e->len[k] = (size_t)n;
    }
    if (PyBytes_AsStringAndSize(prefix, &p, &n)) return -1;
    e->prefix = (const uint8_t *)p;
    e->plen = (size_t)n;
    return 0;
}

/* enums: (kind names, kind prefix, status names, status prefix) */
static int ctx_init(Ctx *x, PyObject *typed, PyObject *cost, const Py_buffer *prefix, PyObject *enums) {
    x->cost.p = prefix->buf;
    x->cost.n = (size_t)prefix->len;
    if (!PyTuple_Check(enums) || PyTuple_GET_SIZE(enums) != 4) {
        PyErr_SetString(PyExc_TypeError, "enums are (kind names, kind prefix, status names, status prefix)");
        return -1;
    }
    if (enum_init(&x->kind, PyTuple_GET_ITEM(enums, 0), PyTuple_GET_ITEM(enums, 1))
        || enum_init(&x->status, PyTuple_GET_ITEM(enums, 2), PyTuple_GET_ITEM(enums, 3)))
        return -1;
    return keys_init(&x->keys, typed, cost);
}

/* Row i's code: its name's index, or the number after the prefix (-?[0-9]{1,18}); null -> 0, as
 * arrow_otlp._enum_codes reads the column.  Any other text: FALLBACK (the Python path's answer). */
static int enum_code(const Enum *e, const Col *c, int64_t i, int64_t *code) {
    const uint8_t *s;
    size_t n;
    int r = str_at(c, i, &s, &n);
    *code = 0;
    if (r <= 0) return r < 0 ? FALLBACK : OK;
    for (int k = 0; k < e->count; k++) {
        if (n == e->len[k] && !memcmp(s, e->name[k], n)) {
            *code = k;
            return OK;
        }
    }
    if (n <= e->plen || memcmp(s, e->prefix, e->plen)) return FALLBACK;
    s += e->plen;
    n -= e->plen;
    size_t j = s[0] == '-';
    if (n - j < 1 || n - j > 18) return FALLBACK;
    int64_t v = 0;
    for (size_t q = j; q < n; q++) {
        if (!is_digit(s[q])) return FALLBACK;
        v = v * 10 + (s[q] - '0');
    }
    *code = j ? -v : v;
    return OK;
}

static int encode_span(Buf *b, const Col *c, const MapCol *attrs, const Ctx *x, int64_t i) {
    int rc, cost_seen = 0;
    const uint8_t *s;
    size_t n;
    int64_t kind, code;
    const Prefix *cost = &x->cost;
    if ((rc = enum_code(&x->kind, &c[C_KIND], i, &kind)) || (rc = enum_code(&x->status, &c[C_STATUS_CODE], i, &code)))
        return rc;
    if ((rc = put_id(b, 1, &c[C_TRACE], i, 16, 0)) || (rc = put_id(b, 2, &c[C_SPAN], i, 8, 0))
        || (rc = put_string(b, 3, &c[C_STATE], i)) || (rc = put_id(b, 4, &c[C_PARENT], i, 8, 1))
        || (rc = put_string(b, 5, &c[C_NAME], i)) || (rc = put_varint_field(b, 6, kind)))
        return rc;
    if (reserve(b, 18)) return NOMEM;
    b->p[b->len++] = 0x39;  /* start_time_unix_nano = 7, fixed64 */
    put_le(b, (uint64_t)i64_at(&c[C_START], i), 8);
    b->p[b->len++] = 0x41;  /* end_time_unix_nano = 8 */
    put_le(b, (uint64_t)i64_at(&c[C_END], i), 8);
    if ((rc = put_key_values(b, attrs, i, 9, &x->keys, &cost_seen))) return rc;
    /* a cost the cost processor added, where the client sent none (a row with no attributes sent none) */
    if (is_valid(&c[C_COST], i) && !cost_seen) {
        uint64_t bits;
        memcpy(&bits, c[C_COST].data + 8 * (c[C_COST].off + i), 8);
        if (reserve(b, 20 + cost->n + 8)) return NOMEM;
        b->p[b->len++] = 0x4a;  /* attributes = 9 */
        put_varint(b, cost->n + 8);
        put(b, cost->p, cost->n);
        put_le(b, bits, 8);
    }
    if ((rc = put_varint_field(b, 10, i64_at(&c[C_DROPPED_A], i)))) return rc;
    if (c[C_EXTRA].offs) {  /* events (11) and links (13), encoded; no column: no span of the batch has any */
        if (str_at(&c[C_EXTRA], i, &s, &n) < 0) return FALLBACK;
        if (reserve(b, n)) return NOMEM;
        put(b, s, n);
    }
    if ((rc = put_varint_field(b, 12, i64_at(&c[C_DROPPED_E], i)))
        || (rc = put_varint_field(b, 14, i64_at(&c[C_DROPPED_L], i))))
        return rc;
    if (str_at(&c[C_STATUS_MSG], i, &s, &n) < 0) return FALLBACK;
    size_t status = (n ? 1 + varint_len(n) + n : 0) + (code ? 1 + varint_len((uint64_t)code) : 0);
    if (status) {
        if (reserve(b, 10 + status)) return NOMEM;
        b->p[b->len++] = 0x7a;  /* status = 15 */
        put_varint(b, status);
        if (n) {
            b->p[b->len++] = 0x12;  /* Status.message = 2 */
            put_varint(b, n);
            put(b, s, n);
        }
        if (code) {
            b->p[b->len++] = 0x18;  /* Status.code = 3 */
            put_varint(b, (uint64_t)code);
        }
    }
    int64_t flags = i64_at(&c[C_FLAGS], i);
    if (flags) {
        if (reserve(b, 6)) return NOMEM;
        b->p[b->len++] = 0x85;  /* flags = 16, fixed32 */
        b->p[b->len++] = 0x01;
        put_le(b, (uint64_t)flags, 4);  /* the low 32 bits, as astype("<u4") */
    }
    return OK;
}

/* ---- entry points ---------------------------------------------------------------------------------- */

typedef struct {
    Buf data;
    int32_t *offsets;
} Result;

/* (offsets, data) as bytes, or None for FALLBACK. */
static PyObject *result_tuple(Result *r, int64_t n, int rc) {
    PyObject *out = NULL;
    if (rc == NOMEM) {
        PyErr_NoMemory();
    } else if (rc == FALLBACK) {
        out = Py_NewRef(Py_None);
    } else {
        PyObject *offs = PyBytes_FromStringAndSize((const char *)r->offsets, (Py_ssize_t)(4 * (n + 1)));
        PyObject *data = PyBytes_FromStringAndSize(r->data.len ? (const char *)r->data.p : "",
                                                   (Py_ssize_t)r->data.len);
        if (offs && data) out = PyTuple_Pack(2, offs, data);
        Py_XDECREF(offs);
        Py_XDECREF(data);
    }
    free(r->offsets);
    free(r->data.p);
    return out;
}

/* After row i: its end offset; a blob past int32 offsets is left to the Python path. */
static inline int end_row(Result *r, int64_t i) {
    if (r->data.len > INT32_MAX) return FALLBACK;
    r->offsets[i + 1] = (int32_t)r->data.len;
    return OK;
}

/* Span i, framed as a length-delimited field numbered `field` when it is not 0: the fields are written
 * after room for the longest tag and length, then moved back behind the real ones (varints are minimal). */
static int encode_framed(Buf *b, uint32_t field, const Col *c, const MapCol *attrs, const Ctx *x, int64_t i) {
    if (!field) return encode_span(b, c, attrs, x, i);
    size_t start = b->len;
    if (reserve(b, 20)) return NOMEM;
    b->len += 20;
    int rc = encode_span(b, c, attrs, x, i);
    if (rc) return rc;
    size_t body = b->len - start - 20;
    b->len = start;
    put_varint(b, ((uint64_t)field << 3) | 2);
    put_varint(b, body);
    memmove(b->p + b->len, b->p + start + 20, body);
    b->len += body;
    return OK;
}

/* The span columns of one call or batch (the first N_COLS items of `cols`): 0, 1 (FALLBACK: a column the C path does not read exactly), or
 * -1 with a Python error.  *n: the rows.  The extra column (events and links) may be None: none has any. */
static int parse_span_cols(PyObject *cols, Views *v, Col *c, MapCol *attrs, int64_t *n) {
    for (int k = 0; k < N_COLS; k++) {
        PyObject *item = PyTuple_GET_ITEM(cols, k);
        int got;
        if (k == C_EXTRA && item == Py_None) {
            memset(&c[k], 0, sizeof c[k]);
            c[k].len = *n;
            continue;
        }
        got = k == C_ATTRS ? parse_map(item, v, attrs) : parse_col(item, v, &c[k], WIDTH[k]);
        if (got) return got;
        if (k == C_ATTRS) memset(&c[k], 0, sizeof c[k]);
        int64_t len = k == C_ATTRS ? attrs->len : c[k].len;
        if (k == 0) *n = len;
        else if (len != *n) return 1;
    }
    return 0;
}

static PyObject *encode_spans(PyObject *self, PyObject *args) {
    PyObject *cols, *typed, *cost, *enums;
    Py_buffer prefix;
    unsigned int field = 0;
    Col c[N_COLS];
    MapCol attrs;
    Views v = {.n = 0};
    Ctx x = {.keys = {NULL, 0}};
    Result r = {{NULL, 0, 0}, NULL};
    int rc = OK;
    int64_t n = 0;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!O!O!y*O!|I:encode_spans", &PyTuple_Type, &cols, &PyTuple_Type, &typed,
                          &PyTuple_Type, &cost, &prefix, &PyTuple_Type, &enums, &field))
        return NULL;
    if (field > 0x1FFFFFFF || PyTuple_GET_SIZE(cols) != N_COLS) {
        PyErr_Format(PyExc_ValueError, "encode_spans takes %d columns and a field number < 2**29 (0: no "
                     "framing)", N_COLS);
        goto error;
    }
    int got = parse_span_cols(cols, &v, c, &attrs, &n);
    if (got < 0 || ctx_init(&x, typed, cost, &prefix, enums)) goto error;
    rc = got ? FALLBACK : OK;
    r.offsets = calloc((size_t)(rc == OK ? n : 0) + 1, 4);
    if (!r.offsets) rc = NOMEM;
    Py_BEGIN_ALLOW_THREADS
    for (int64_t i = 0; i < n && rc == OK; i++) {
        rc = encode_framed(&r.data, field, c, &attrs, &x, i);
        if (rc == OK) rc = end_row(&r, i);
    }
    Py_END_ALLOW_THREADS
    views_release(&v);
    PyBuffer_Release(&prefix);
    free(x.keys.e);
    return result_tuple(&r, n, rc);
error:
    views_release(&v);
    PyBuffer_Release(&prefix);
    free(x.keys.e);
    return NULL;
}

static PyObject *encode_key_values(PyObject *self, PyObject *args) {
    PyObject *map, *typed;
    unsigned int field;
    MapCol m;
    Views v = {.n = 0};
    Keys t = {NULL, 0};
    Result r = {{NULL, 0, 0}, NULL};
    int rc, unused = 0;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!IO!:encode_key_values", &PyTuple_Type, &map, &field, &PyTuple_Type, &typed))
        return NULL;
    if (field < 1 || field > 0x1FFFFFFF) {
        PyErr_SetString(PyExc_ValueError, "field numbers are 1 .. 2**29 - 1");
        return NULL;
    }
    int got = parse_map(map, &v, &m);
    if (got < 0 || keys_init(&t, typed, NULL)) {
        views_release(&v);
        free(t.e);
        return NULL;
    }
    rc = got ? FALLBACK : OK;
    r.offsets = calloc((size_t)(rc == OK ? m.len : 0) + 1, 4);
    if (!r.offsets) rc = NOMEM;
    Py_BEGIN_ALLOW_THREADS
    for (int64_t i = 0; rc == OK && i < m.len; i++) {
        rc = put_key_values(&r.data, &m, i, field, &t, &unused);
        if (rc == OK) rc = end_row(&r, i);
    }
    Py_END_ALLOW_THREADS
    views_release(&v);
    free(t.e);
    return result_tuple(&r, rc == OK ? m.len : 0, rc);
}

/* Row i's InstrumentationScope: name (1), version (2), attributes (3). */
static int put_scope(Buf *b, const Col *name, const Col *version, const MapCol *attrs, const Keys *t, int64_t i) {
    int rc, unused = 0;
    if ((rc = put_string(b, 1, name, i)) || (rc = put_string(b, 2, version, i))) return rc;
    return put_key_values(b, attrs, i, 3, t, &unused);
}

/* Each row's InstrumentationScope: name (1), version (2), attributes (3). */
static PyObject *encode_scopes(PyObject *self, PyObject *args) {
    PyObject *name, *version, *map, *typed;
    Col c[2];
    MapCol m;
    Views v = {.n = 0};
    Keys t = {NULL, 0};
    Result r = {{NULL, 0, 0}, NULL};
    int rc = OK;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOO!O!:encode_scopes", &name, &version, &PyTuple_Type, &map, &PyTuple_Type,
                          &typed))
        return NULL;
    int got = parse_col(name, &v, &c[0], 0);
    if (!got) got = parse_col(version, &v, &c[1], 0);
    if (!got) got = parse_map(map, &v, &m);
    if (got < 0 || keys_init(&t, typed, NULL)) {
        views_release(&v);
        free(t.e);
        return NULL;
    }
    int64_t n = got ? 0 : m.len;
    if (got || c[0].len != n || c[1].len != n) rc = FALLBACK;
    r.offsets = calloc((size_t)(rc == OK ? n : 0) + 1, 4);
    if (!r.offsets) rc = NOMEM;
    Py_BEGIN_ALLOW_THREADS
    for (int64_t i = 0; rc == OK && i < n; i++) {
        if ((rc = put_scope(&r.data, &c[0], &c[1], &m, &t, i))) break;
        rc = end_row(&r, i);
    }
    Py_END_ALLOW_THREADS
    views_release(&v);
    free(t.e);
    return result_tuple(&r, rc == OK ? n : 0, rc);
}

/* ---- the whole request ------------------------------------------------------------------------------ */

/* Per row, where its bytes end in a blob (row i: ends[i] .. ends[i + 1]). */
typedef struct {
    Buf blob;
    size_t *ends;
} Rows;

static inline size_t row_len(const Rows *r, int64_t i) { return r->ends[i + 1] - r->ends[i]; }

static inline int same_row(const Rows *r, int64_t i, int64_t j) {
    size_t n = row_len(r, i);
    return n == row_len(r, j) && (!n || !memcmp(r->blob.p + r->ends[i], r->blob.p + r->ends[j], n));
}

/* The rows from `from` with row from's scope (and resource: all rows before `end` have it): their end. */
static int64_t scope_run(const Rows *scopes, int64_t from, int64_t end, size_t *spans_len, const Rows *spans) {
    int64_t k = from;
    size_t len = 0;
    while (k < end && same_row(scopes, k, from)) len += row_len(spans, k++);
    *spans_len = len;
    return k;
}

static inline void put_head(Buf *b, uint32_t field, size_t len) {
    put_varint(b, ((uint64_t)field << 3) | 2);
    put_varint(b, len);
}

/* The ExportTraceServiceRequest of n rows into out (NULL: only its size): a ResourceSpans per run of rows
 * with the same resource bytes, in it a ScopeSpans per run with the same scope bytes, rows in order -- as
 * arrow_otlp._python_request groups them. */
static size_t assemble(uint8_t *out, int64_t n, const Rows *spans, const Rows *res, const Rows *scopes) {
    Buf w = {out, 0, SIZE_MAX};
    size_t total = 0, spans_len;
    for (int64_t i = 0; i < n;) {
        int64_t end = i + 1;
        while (end < n && same_row(res, end, i)) end++;
        size_t body = 1 + varint_len(row_len(res, i)) + row_len(res, i);
        for (int64_t j = i; j < end;) {
            int64_t k = scope_run(scopes, j, end, &spans_len, spans);
            size_t ss = 1 + varint_len(row_len(scopes, j)) + row_len(scopes, j) + spans_len;
            body += 1 + varint_len(ss) + ss;
            j = k;
        }
        total += 1 + varint_len(body) + body;
        if (out) {
            put_head(&w, 1, body);  /* ExportTraceServiceRequest.resource_spans = 1 */
            put_head(&w, 1, row_len(res, i));  /* ResourceSpans.resource = 1 */
            put(&w, res->blob.p + res->ends[i], row_len(res, i));
            for (int64_t j = i; j < end;) {
                int64_t k = scope_run(scopes, j, end, &spans_len, spans);
                size_t scope = row_len(scopes, j);
                put_head(&w, 2, 1 + varint_len(scope) + scope + spans_len);  /* ResourceSpans.scope_spans = 2 */
                put_head(&w, 1, scope);  /* ScopeSpans.scope = 1 */
                put(&w, scopes->blob.p + scopes->ends[j], scope);
                put(&w, spans->blob.p + spans->ends[j], spans_len);  /* ScopeSpans.spans = 2, framed */
                j = k;
            }
        }
        i = end;
    }
    return total;
}

static int rows_init(Rows *r, int64_t n) {
    r->ends = calloc((size_t)n + 1, sizeof *r->ends);
    return r->ends ? OK : NOMEM;
}

enum { B_RESOURCE = N_COLS, B_SCOPE_NAME, B_SCOPE_VERSION, B_SCOPE_ATTRS, B_COLS };

/* batches: [(the 17 span columns, resource attributes, scope name, scope version, scope attributes), ...]
 * of n rows in all -> the request's bytes, or None (FALLBACK). */
static PyObject *encode_request(PyObject *self, PyObject *args) {
    PyObject *batches, *typed, *cost, *enums, *out = NULL;
    Py_buffer prefix;
    long long n_all;
    Ctx x = {.keys = {NULL, 0}};
    Rows spans = {{NULL, 0, 0}, NULL}, res = {{NULL, 0, 0}, NULL}, scopes = {{NULL, 0, 0}, NULL};
    int rc = OK;
    int64_t row = 0;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!LO!O!y*O!:encode_request", &PyList_Type, &batches, &n_all, &PyTuple_Type,
                          &typed, &PyTuple_Type, &cost, &prefix, &PyTuple_Type, &enums))
        return NULL;
    if (ctx_init(&x, typed, cost, &prefix, enums)) goto done;
    if (n_all < 0 || n_all > INT32_MAX) {
        rc = FALLBACK;
    } else if (rows_init(&spans, n_all) || rows_init(&res, n_all) || rows_init(&scopes, n_all)) {
        rc = NOMEM;
    }
    for (Py_ssize_t b = 0; rc == OK && b < PyList_GET_SIZE(batches); b++) {
        PyObject *cols = PyList_GET_ITEM(batches, b);
        Col c[N_COLS], name, version;
        MapCol attrs, resource, scope;
        Views v = {.n = 0};
        int64_t n = 0;
        if (!PyTuple_Check(cols) || PyTuple_GET_SIZE(cols) != B_COLS) {
            PyErr_Format(PyExc_TypeError, "a batch is a tuple of %d columns", B_COLS);
            goto done;
        }
        int got = parse_span_cols(cols, &v, c, &attrs, &n);
        if (!got) got = parse_map(PyTuple_GET_ITEM(cols, B_RESOURCE), &v, &resource);
        if (!got) got = parse_col(PyTuple_GET_ITEM(cols, B_SCOPE_NAME), &v, &name, 0);
        if (!got) got = parse_col(PyTuple_GET_ITEM(cols, B_SCOPE_VERSION), &v, &version, 0);
        if (!got) got = parse_map(PyTuple_GET_ITEM(cols, B_SCOPE_ATTRS), &v, &scope);
        if (got < 0) {
            views_release(&v);
            goto done;
        }
        if (got || resource.len != n || name.len != n || version.len != n || scope.len != n || n > n_all - row)
            rc = FALLBACK;
        Py_BEGIN_ALLOW_THREADS
        for (int64_t i = 0; i < n && rc == OK; i++, row++) {
            if ((rc = encode_framed(&spans.blob, 2, c, &attrs, &x, i))  /* ScopeSpans.spans = 2 */
                || (rc = put_key_values(&res.blob, &resource, i, 1, &x.keys, &(int){0}))  /* Resource.attributes */
                || (rc = put_scope(&scopes.blob, &name, &version, &scope, &x.keys, i)))
                break;
            spans.ends[row + 1] = spans.blob.len;
            res.ends[row + 1] = res.blob.len;
            scopes.ends[row + 1] = scopes.blob.len;
        }
        Py_END_ALLOW_THREADS
        views_release(&v);
    }
    if (rc == OK && row != n_all) rc = FALLBACK;
    if (rc == OK) {
        size_t size = assemble(NULL, row, &spans, &res, &scopes);
        if (size > PY_SSIZE_T_MAX) {
            rc = FALLBACK;
        } else if ((out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)size))) {
            uint8_t *p = (uint8_t *)PyBytes_AS_STRING(out);  /* not shared yet: filled without the GIL */
            Py_BEGIN_ALLOW_THREADS
            assemble(p, row, &spans, &res, &scopes);
            Py_END_ALLOW_THREADS
        }
    }
    if (rc == NOMEM) PyErr_NoMemory();
    else if (rc == FALLBACK) out = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&prefix);
    free(x.keys.e);
    free(spans.blob.p);
    free(spans.ends);
    free(res.blob.p);
    free(res.ends);
    free(scopes.blob.p);
    free(scopes.ends);
    return out;
}

static PyMethodDef methods[] = {
    {"encode_request", encode_request, METH_VARARGS,
     "encode_request(batches, rows, typed_keys, cost_keys, cost_prefix, enums) -> bytes | None\n\nThe "
     "ExportTraceServiceRequest of every row of the batches, grouped by resource and scope as the Python "
     "path groups them, or None when the Python path must encode."},
    {"encode_spans", encode_spans, METH_VARARGS,
     "encode_spans(columns, typed_keys, cost_keys, cost_prefix, enums, field=0) -> (offsets, data) | None\n\nEach span's Span "
     "message fields (framed as field `field` unless 0) as one blob with int32 offsets, or None when the "
     "Python path must encode (see pipeline/pdata/arrow_otlp.py for the columns' layout)."},
    {"encode_key_values", encode_key_values, METH_VARARGS,
     "encode_key_values(map_column, field, typed_keys) -> (offsets, data) | None\n\nEach row's map as "
     "repeated KeyValue fields numbered `field`."},
    {"encode_scopes", encode_scopes, METH_VARARGS,
     "encode_scopes(names, versions, attributes, typed_keys) -> (offsets, data) | None\n\nEach row's "
     "InstrumentationScope message."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_otlp_encode", "Canonical Arrow span columns to OTLP protobuf wire bytes, in C.",
    -1, methods,
};

PyMODINIT_FUNC PyInit__otlp_encode(void) {
    c_locale = newlocale(LC_ALL_MASK, "C", (locale_t)0);
    if (!c_locale) return PyErr_NoMemory();
    return PyModule_Create(&module);
}

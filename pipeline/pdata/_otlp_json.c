/* OTLP/JSON of an ExportTraceServiceRequest, written in C from its protobuf wire bytes.
 *
 * Why: the `file` exporter writes OTLP/JSON lines; built column-wise with Arrow string kernels
 * (otlp_json_columns.py) it cost ~13-20 us of CPU per span, ~15x the C protobuf encoder, in the pipeline
 * process whose GIL the receivers and the store also need (bench/fanout.py: one `file` exporter took
 * ~50 % of the store's throughput).  The batch's protobuf bytes are usually encoded already (the fan-out
 * encodes a batch once for every exporter, arrow_otlp.encoded), and their structure is the document's:
 * this walks them once, with the GIL released, and writes the JSON of the OTLP specification's mapping --
 * lowerCamelCase keys, trace and span ids as hex, enums as integers, 64-bit integers as strings, bytes
 * values as base64, default values left out (inside an AnyValue its one value is kept, "" and 0 too),
 * non-finite doubles as "NaN", "Infinity", "-Infinity".  `resource` and `scope` are always written ({}
 * when empty), a span's `status` only when it holds something, as the Python paths write them.
 *
 * Anything it does not handle as protobuf's own JSON printer would (a known field with another wire type,
 * a singular field twice, a repeated field whose elements are not consecutive, text that is not UTF-8,
 * truncated input) makes it return None, and the caller writes the JSON in Python.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h> /* defines _GNU_SOURCE: newlocale, strtod_l */
#include <locale.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { OK = 0, FALLBACK = 1, NOMEM = 2 };
enum { VARINT = 0, I64 = 1, LEN = 2, I32 = 5 };

static locale_t c_locale;

/* ---- output ---------------------------------------------------------------------------------------- */

typedef struct {
    char *p;
    size_t len, cap;
} Buf;

static int grow(Buf *b, size_t extra) {
    size_t cap = b->cap ? b->cap : 1 << 16;
    while (cap < b->len + extra) {
        if (cap > SIZE_MAX / 2) return NOMEM;
        cap *= 2;
    }
    char *p = realloc(b->p, cap);
    if (!p) return NOMEM;
    b->p = p;
    b->cap = cap;
    return OK;
}

static inline int put(Buf *b, const char *s, size_t n) {
    if (b->len + n > b->cap && grow(b, n)) return NOMEM;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    return OK;
}

#define PUTS(b, lit) put((b), (lit), sizeof(lit) - 1)

static int put_u64(Buf *b, uint64_t v) {
    char tmp[20];
    int i = 20;
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    return put(b, tmp + i, (size_t)(20 - i));
}

static int put_i64(Buf *b, int64_t v) {
    if (v >= 0) return put_u64(b, (uint64_t)v);
    return PUTS(b, "-") || put_u64(b, 0 - (uint64_t)v);
}

/* A double as the shortest of 15, 16 or 17 significant digits that reads back the same. */
static int put_double(Buf *b, double v) {
    if (isnan(v)) return PUTS(b, "\"NaN\"");
    if (isinf(v)) return v > 0 ? PUTS(b, "\"Infinity\"") : PUTS(b, "\"-Infinity\"");
    char tmp[40];
    int n = 0;
    for (int digits = 15; digits <= 17; digits++) {
        n = snprintf(tmp, sizeof tmp, "%.*g", digits, v);
        if (strtod_l(tmp, NULL, c_locale) == v) break;
    }
    /* "%g" writes integral values as 5 or -0: as 5.0 and -0.0, so that a reader keeps them doubles */
    if (!strpbrk(tmp, ".e")) tmp[n++] = '.', tmp[n++] = '0';
    return put(b, tmp, (size_t)n);
}

static const char HEX[] = "0123456789abcdef";

static int put_hex(Buf *b, const uint8_t *s, size_t n) {
    if (b->len + 2 * n + 2 > b->cap && grow(b, 2 * n + 2)) return NOMEM;
    char *o = b->p + b->len;
    *o++ = '"';
    for (size_t i = 0; i < n; i++) {
        *o++ = HEX[s[i] >> 4];
        *o++ = HEX[s[i] & 15];
    }
    *o++ = '"';
    b->len = (size_t)(o - b->p);
    return OK;
}

static int put_base64(Buf *b, const uint8_t *s, size_t n) {
    static const char A[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t need = 4 * ((n + 2) / 3) + 2;
    if (b->len + need > b->cap && grow(b, need)) return NOMEM;
    char *o = b->p + b->len;
    *o++ = '"';
    size_t i = 0;
    for (; i + 2 < n; i += 3) {
        uint32_t w = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8 | s[i + 2];
        *o++ = A[w >> 18];
        *o++ = A[(w >> 12) & 63];
        *o++ = A[(w >> 6) & 63];
        *o++ = A[w & 63];
    }
    if (i < n) {
        uint32_t w = (uint32_t)s[i] << 16 | (i + 1 < n ? (uint32_t)s[i + 1] << 8 : 0);
        *o++ = A[w >> 18];
        *o++ = A[(w >> 12) & 63];
        *o++ = i + 1 < n ? A[(w >> 6) & 63] : '=';
        *o++ = '=';
    }
    *o++ = '"';
    b->len = (size_t)(o - b->p);
    return OK;
}

/* The length of the UTF-8 sequence starting at s[0] (a lead byte >= 0x80) within n bytes, 0 when it is not
 * valid UTF-8 (overlong forms, surrogates, past U+10FFFF, cut short), as protobuf requires of a string. */
static size_t utf8_sequence(const uint8_t *s, size_t n) {
    uint8_t c = s[0];
    size_t k;
    uint32_t cp;
    if ((c & 0xE0) == 0xC0) k = 1, cp = c & 0x1F;
    else if ((c & 0xF0) == 0xE0) k = 2, cp = c & 0x0F;
    else if ((c & 0xF8) == 0xF0) k = 3, cp = c & 0x07;
    else return 0;
    if (n <= k) return 0;
    for (size_t j = 1; j <= k; j++) {
        if ((s[j] & 0xC0) != 0x80) return 0;
        cp = cp << 6 | (s[j] & 0x3F);
    }
    if ((k == 1 && cp < 0x80) || (k == 2 && cp < 0x800) || (k == 3 && cp < 0x10000) || cp > 0x10FFFF
        || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return k + 1;
}

/* A JSON string literal in one pass: '"' and '\' escaped, \n \r \t \b \f by name, other control
 * characters as \u00XX, UTF-8 checked and copied as is; FALLBACK when it is not UTF-8. */
static int put_string(Buf *b, const uint8_t *s, size_t n) {
    if (b->len + n + 2 > b->cap && grow(b, n + 2)) return NOMEM;
    b->p[b->len++] = '"';
    size_t run = 0; /* start of the bytes not copied yet */
    for (size_t i = 0; i < n;) {
        uint8_t c = s[i];
        if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
            i++;
            continue;
        }
        if (c >= 0x80) {
            size_t len = utf8_sequence(s + i, n - i);
            if (!len) return FALLBACK;
            i += len;
            continue;
        }
        if (put(b, (const char *)s + run, i - run)) return NOMEM;
        run = ++i;
        char esc[6] = {'\\', 0, 0, 0, 0, 0};
        size_t len = 2;
        switch (c) {
        case '"': esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        case '\b': esc[1] = 'b'; break;
        case '\f': esc[1] = 'f'; break;
        default:
            esc[1] = 'u', esc[2] = '0', esc[3] = '0', esc[4] = HEX[c >> 4], esc[5] = HEX[c & 15];
            len = 6;
        }
        if (put(b, esc, len)) return NOMEM;
    }
    if (put(b, (const char *)s + run, n - run)) return NOMEM;
    return PUTS(b, "\"");
}

/* ---- input ----------------------------------------------------------------------------------------- */

typedef struct {
    const uint8_t *p, *end;
} Rd;

static int rd_varint(Rd *r, uint64_t *v) {
    uint64_t x = 0;
    for (int shift = 0; shift < 70; shift += 7) {
        if (r->p >= r->end) return FALLBACK;
        uint8_t c = *r->p++;
        x |= (uint64_t)(c & 0x7F) << shift;
        if (!(c & 0x80)) {
            *v = x;
            return OK;
        }
    }
    return FALLBACK;
}

typedef struct {
    uint32_t field, wire;
    uint64_t num;         /* VARINT, I64, I32 */
    const uint8_t *data;  /* LEN */
    size_t len;
} Field;

/* The next field of a message; 0 at its end, FALLBACK on bad input. */
static int next(Rd *r, Field *f, int *more) {
    uint64_t tag;
    *more = 0;
    if (r->p >= r->end) return OK;
    if (rd_varint(r, &tag)) return FALLBACK;
    f->field = (uint32_t)(tag >> 3);
    f->wire = (uint32_t)(tag & 7);
    if (!f->field || tag >> 32) return FALLBACK;
    switch (f->wire) {
    case VARINT:
        if (rd_varint(r, &f->num)) return FALLBACK;
        break;
    case I64:
        if (r->end - r->p < 8) return FALLBACK;
        memcpy(&f->num, r->p, 8); /* little-endian hosts only: checked at import */
        r->p += 8;
        break;
    case I32: {
        uint32_t w;
        if (r->end - r->p < 4) return FALLBACK;
        memcpy(&w, r->p, 4);
        f->num = w;
        r->p += 4;
        break;
    }
    case LEN: {
        uint64_t n;
        if (rd_varint(r, &n) || n > (uint64_t)(r->end - r->p)) return FALLBACK;
        f->data = r->p;
        f->len = (size_t)n;
        r->p += n;
        break;
    }
    default:
        return FALLBACK; /* groups: not in OTLP */
    }
    *more = 1;
    return OK;
}

/* ---- one JSON object per message ------------------------------------------------------------------- */

/* How each known field of a message is written. */
typedef enum {
    STR,      /* string, left out when "" */
    HEXID,    /* bytes as hex, left out when empty */
    U32,      /* uint32 as a number, left out when 0 (a wider varint truncated, as protobuf parses it) */
    ENUM,     /* enum (int32) as a number, left out when 0 */
    FIX64,    /* fixed64 as a string, left out when 0 */
    FIX32,    /* fixed32 as a number, left out when 0 */
    MSG,      /* a message */
    REPEATED, /* repeated message: an array */
} Kind;

typedef struct Spec Spec;
typedef int (*Writer)(Buf *, const uint8_t *, size_t);

typedef struct {
    uint32_t field;
    const char *key; /* "\"name\":" */
    Kind kind;
    Writer write; /* MSG and REPEATED: the element's writer */
} FieldSpec;

struct Spec {
    const FieldSpec *fields;
    int n;
    const char *always; /* a MSG field written as {} when absent (resource, scope), or NULL */
    uint32_t always_field;
    uint32_t drop_if_empty; /* a MSG field left out when its object is {} (status), or 0 */
};

static int write_message(Buf *b, const Spec *spec, const uint8_t *data, size_t len);

static int write_message(Buf *b, const Spec *spec, const uint8_t *data, size_t len) {
    Rd r = {data, data + len};
    Field f;
    int more, rc, first = 1;
    uint64_t seen = 0;     /* singular fields written, by index in spec */
    int open = -1;         /* index of the repeated field whose array is open */
    uint64_t closed = 0;   /* repeated fields whose array was closed */
    if (PUTS(b, "{")) return NOMEM;
    for (;;) {
        if ((rc = next(&r, &f, &more))) return rc;
        if (!more) break;
        int k = -1;
        for (int i = 0; i < spec->n; i++)
            if (spec->fields[i].field == f.field) {
                k = i;
                break;
            }
        if (open >= 0 && k != open) {
            if (PUTS(b, "]")) return NOMEM;
            closed |= 1ull << open;
            open = -1;
        }
        if (k < 0) continue; /* unknown: left out, as protobuf's JSON printer does */
        const FieldSpec *fs = &spec->fields[k];
        uint32_t wire = fs->kind == FIX64 ? I64 : fs->kind == FIX32 ? I32 : fs->kind == U32 || fs->kind == ENUM ? VARINT : LEN;
        if (fs->kind == U32) f.num = (uint32_t)f.num;
        if (f.wire != wire) return FALLBACK;
        if (fs->kind == REPEATED) {
            if (closed >> k & 1) return FALLBACK; /* elements not consecutive */
            if (open == k) {
                if (PUTS(b, ",")) return NOMEM;
            } else {
                if ((!first && PUTS(b, ",")) || put(b, fs->key, strlen(fs->key)) || PUTS(b, "[")) return NOMEM;
                first = 0;
                open = k;
            }
            if ((rc = fs->write(b, f.data, f.len))) return rc;
            continue;
        }
        if (seen >> k & 1) return FALLBACK; /* a singular field twice: the last would win */
        seen |= 1ull << k;
        int empty = (fs->kind == STR || fs->kind == HEXID) ? f.len == 0
                  : (fs->kind == U32 || fs->kind == FIX64 || fs->kind == FIX32) ? f.num == 0
                  : fs->kind == ENUM ? (int32_t)f.num == 0
                  : 0;
        if (empty) continue;
        size_t mark = b->len;
        if ((!first && PUTS(b, ",")) || put(b, fs->key, strlen(fs->key))) return NOMEM;
        switch (fs->kind) {
        case STR: rc = put_string(b, f.data, f.len); break;
        case HEXID: rc = put_hex(b, f.data, f.len); break;
        case U32: rc = put_u64(b, f.num); break;
        case ENUM: rc = put_i64(b, (int32_t)f.num); break;
        case FIX64: rc = PUTS(b, "\"") || put_u64(b, f.num) || PUTS(b, "\""); break;
        case FIX32: rc = put_u64(b, f.num); break;
        default: rc = fs->write(b, f.data, f.len);
        }
        if (rc) return rc;
        if (f.field == spec->drop_if_empty && b->len >= 2 && b->p[b->len - 2] == '{' && b->p[b->len - 1] == '}') {
            b->len = mark; /* {} left out */
            continue;
        }
        first = 0;
    }
    if (open >= 0 && PUTS(b, "]")) return NOMEM;
    if (spec->always) {
        int k = -1;
        for (int i = 0; i < spec->n; i++)
            if (spec->fields[i].field == spec->always_field) k = i;
        if (k >= 0 && !(seen >> k & 1)) {
            if ((!first && PUTS(b, ",")) || put(b, spec->always, strlen(spec->always)) || PUTS(b, "{}"))
                return NOMEM;
        }
    }
    return PUTS(b, "}");
}

/* AnyValue: its one value, kept even when "" or 0; an AnyValue with none is {}. */
static int write_any(Buf *b, const uint8_t *data, size_t len);
static int write_key_value(Buf *b, const uint8_t *data, size_t len);

static const FieldSpec ANY_LIST_FIELDS[] = {{1, "\"values\":", REPEATED, write_any}};
static const Spec ANY_LIST = {ANY_LIST_FIELDS, 1, NULL, 0, 0};
static const FieldSpec KV_LIST_FIELDS[] = {{1, "\"values\":", REPEATED, write_key_value}};
static const Spec KV_LIST = {KV_LIST_FIELDS, 1, NULL, 0, 0};

/* Nesting of arrays and key-value lists, per thread (the walk runs without the GIL): past protobuf's own
 * recursion limit (about) the bytes are left to Python, which refuses them as protobuf does. */
static _Thread_local int nesting;
enum { MAX_NESTING = 40 }; /* each level is two messages (AnyValue, ArrayValue or KeyValueList): upb stops at 100 */

static int write_nested(Buf *b, const Spec *spec, const uint8_t *data, size_t len) {
    if (nesting >= MAX_NESTING) return FALLBACK;
    nesting++;
    int rc = write_message(b, spec, data, len);
    nesting--;
    return rc;
}

static int write_any(Buf *b, const uint8_t *data, size_t len) {
    Rd r = {data, data + len};
    Field f, last;
    int more, rc, have = 0;
    for (;;) {
        if ((rc = next(&r, &f, &more))) return rc;
        if (!more) break;
        if (f.field >= 1 && f.field <= 7) { /* the oneof: the last one wins, as in protobuf */
            last = f;
            have = 1;
        }
    }
    if (!have) return PUTS(b, "{}");
    f = last;
    static const uint32_t wire_of[8] = {0, LEN, VARINT, VARINT, I64, LEN, LEN, LEN};
    if (f.wire != wire_of[f.field]) return FALLBACK;
    switch (f.field) {
    case 1: rc = PUTS(b, "{\"stringValue\":") || put_string(b, f.data, f.len); break;
    case 2: rc = f.num ? PUTS(b, "{\"boolValue\":true") : PUTS(b, "{\"boolValue\":false"); break;
    case 3: rc = PUTS(b, "{\"intValue\":\"") || put_i64(b, (int64_t)f.num) || PUTS(b, "\""); break;
    case 4: {
        double d;
        memcpy(&d, &f.num, 8);
        rc = PUTS(b, "{\"doubleValue\":") || put_double(b, d);
        break;
    }
    case 5: rc = PUTS(b, "{\"arrayValue\":") || write_nested(b, &ANY_LIST, f.data, f.len); break;
    case 6: rc = PUTS(b, "{\"kvlistValue\":") || write_nested(b, &KV_LIST, f.data, f.len); break;
    default: rc = PUTS(b, "{\"bytesValue\":") || put_base64(b, f.data, f.len);
    }
    if (rc) return rc; /* chained with ||: out of memory reads as FALLBACK too, and Python then writes it */
    return PUTS(b, "}");
}

/* KeyValue: "key" left out when "", "value" when the field is there ({} for an AnyValue with nothing set). */
static int write_key_value(Buf *b, const uint8_t *data, size_t len) {
    Rd r = {data, data + len};
    Field f;
    int more, rc;
    const uint8_t *key = NULL, *value = NULL;
    size_t key_len = 0, value_len = 0;
    int have_value = 0;
    for (;;) {
        if ((rc = next(&r, &f, &more))) return rc;
        if (!more) break;
        if (f.field == 1) {
            if (f.wire != LEN || key) return FALLBACK;
            key = f.data, key_len = f.len;
        } else if (f.field == 2) {
            if (f.wire != LEN || have_value) return FALLBACK;
            value = f.data, value_len = f.len, have_value = 1;
        }
    }
    if (PUTS(b, "{")) return NOMEM;
    if (key && key_len) {
        if (PUTS(b, "\"key\":")) return NOMEM;
        if ((rc = put_string(b, key, key_len))) return rc;
        if (have_value && PUTS(b, ",")) return NOMEM;
    }
    if (have_value) {
        if (PUTS(b, "\"value\":")) return NOMEM;
        if ((rc = write_any(b, value, value_len))) return rc;
    }
    return PUTS(b, "}");
}

#define MESSAGE_WRITER(name, spec) \
    static int name(Buf *b, const uint8_t *data, size_t len) { return write_message(b, &(spec), data, len); }

static const FieldSpec STATUS_FIELDS[] = {{2, "\"message\":", STR, NULL}, {3, "\"code\":", ENUM, NULL}};
static const Spec STATUS = {STATUS_FIELDS, 2, NULL, 0, 0};
MESSAGE_WRITER(write_status, STATUS)

static const FieldSpec EVENT_FIELDS[] = {
    {1, "\"timeUnixNano\":", FIX64, NULL},
    {2, "\"name\":", STR, NULL},
    {3, "\"attributes\":", REPEATED, write_key_value},
    {4, "\"droppedAttributesCount\":", U32, NULL},
};
static const Spec EVENT = {EVENT_FIELDS, 4, NULL, 0, 0};
MESSAGE_WRITER(write_event, EVENT)

static const FieldSpec LINK_FIELDS[] = {
    {1, "\"traceId\":", HEXID, NULL},
    {2, "\"spanId\":", HEXID, NULL},
    {3, "\"traceState\":", STR, NULL},
    {4, "\"attributes\":", REPEATED, write_key_value},
    {5, "\"droppedAttributesCount\":", U32, NULL},
    {6, "\"flags\":", FIX32, NULL},
};
static const Spec LINK = {LINK_FIELDS, 6, NULL, 0, 0};
MESSAGE_WRITER(write_link, LINK)

static const FieldSpec SPAN_FIELDS[] = {
    {1, "\"traceId\":", HEXID, NULL},
    {2, "\"spanId\":", HEXID, NULL},
    {3, "\"traceState\":", STR, NULL},
    {4, "\"parentSpanId\":", HEXID, NULL},
    {16, "\"flags\":", FIX32, NULL},
    {5, "\"name\":", STR, NULL},
    {6, "\"kind\":", ENUM, NULL},
    {7, "\"startTimeUnixNano\":", FIX64, NULL},
    {8, "\"endTimeUnixNano\":", FIX64, NULL},
    {9, "\"attributes\":", REPEATED, write_key_value},
    {10, "\"droppedAttributesCount\":", U32, NULL},
    {11, "\"events\":", REPEATED, write_event},
    {12, "\"droppedEventsCount\":", U32, NULL},
    {13, "\"links\":", REPEATED, write_link},
    {14, "\"droppedLinksCount\":", U32, NULL},
    {15, "\"status\":", MSG, write_status},
};
static const Spec SPAN = {SPAN_FIELDS, 16, NULL, 0, 15};
MESSAGE_WRITER(write_span, SPAN)

static const FieldSpec SCOPE_FIELDS[] = {
    {1, "\"name\":", STR, NULL},
    {2, "\"version\":", STR, NULL},
    {3, "\"attributes\":", REPEATED, write_key_value},
    {4, "\"droppedAttributesCount\":", U32, NULL},
};
static const Spec SCOPE = {SCOPE_FIELDS, 4, NULL, 0, 0};
MESSAGE_WRITER(write_scope, SCOPE)

static const FieldSpec RESOURCE_FIELDS[] = {
    {1, "\"attributes\":", REPEATED, write_key_value},
    {2, "\"droppedAttributesCount\":", U32, NULL},
};
static const Spec RESOURCE = {RESOURCE_FIELDS, 2, NULL, 0, 0};
MESSAGE_WRITER(write_resource, RESOURCE)

static const FieldSpec SCOPE_SPANS_FIELDS[] = {
    {1, "\"scope\":", MSG, write_scope},
    {2, "\"spans\":", REPEATED, write_span},
    {3, "\"schemaUrl\":", STR, NULL},
};
static const Spec SCOPE_SPANS = {SCOPE_SPANS_FIELDS, 3, "\"scope\":", 1, 0};
MESSAGE_WRITER(write_scope_spans, SCOPE_SPANS)

static const FieldSpec RESOURCE_SPANS_FIELDS[] = {
    {1, "\"resource\":", MSG, write_resource},
    {2, "\"scopeSpans\":", REPEATED, write_scope_spans},
    {3, "\"schemaUrl\":", STR, NULL},
};
static const Spec RESOURCE_SPANS = {RESOURCE_SPANS_FIELDS, 3, "\"resource\":", 1, 0};
MESSAGE_WRITER(write_resource_spans, RESOURCE_SPANS)

static const FieldSpec REQUEST_FIELDS[] = {{1, "\"resourceSpans\":", REPEATED, write_resource_spans}};
static const Spec REQUEST = {REQUEST_FIELDS, 1, NULL, 0, 0};

/* ---- Python ---------------------------------------------------------------------------------------- */

static PyObject *traces_json(PyObject *self, PyObject *arg) {
    Py_buffer view;
    Buf b = {NULL, 0, 0};
    int rc;
    (void)self;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    Py_BEGIN_ALLOW_THREADS
    rc = write_message(&b, &REQUEST, (const uint8_t *)view.buf, (size_t)view.len);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    if (rc == NOMEM) {
        free(b.p);
        return PyErr_NoMemory();
    }
    if (rc) {
        free(b.p);
        Py_RETURN_NONE;
    }
    PyObject *out = PyBytes_FromStringAndSize(b.p, (Py_ssize_t)b.len);
    free(b.p);
    return out;
}

static PyMethodDef methods[] = {
    {"traces_json", traces_json, METH_O,
     "traces_json(request_bytes) -> bytes | None\n\nThe OTLP/JSON of a serialized ExportTraceServiceRequest, or "
     "None when the Python path must write it (see the file's comment)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_otlp_json", "OTLP protobuf trace requests to OTLP/JSON, in C.", -1, methods,
};

PyMODINIT_FUNC PyInit__otlp_json(void) {
    const uint16_t one = 1;
    if (*(const uint8_t *)&one != 1) { /* fixed64/fixed32/double are read with memcpy */
        PyErr_SetString(PyExc_ImportError, "_otlp_json reads little-endian wire values on little-endian hosts only");
        return NULL;
    }
    c_locale = newlocale(LC_ALL_MASK, "C", (locale_t)0);
    if (!c_locale) return PyErr_NoMemory();
    return PyModule_Create(&module);
}

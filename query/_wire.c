/* query._wire: an OTLP Export request split into span records, read off the wire;
 * and `valid_spans`, the ingest's span checks for the common case (see below,
 * "validation").
 *
 * The epoch builder turns every journalled request into one record per span: the
 * span with its resource and scope as a serialized `ResourceSpans`, and the span's
 * index keywords (query/_keywords.py). Through the protobuf runtime that costs
 * ~22 us a span, most of it creating Python objects for every attribute; here the
 * request's bytes are walked once and only the outputs become Python objects.
 *
 * `split_request(body, skip, max_value, record)` returns a list of `record`
 * (query._blocks.SpanRecord) instances, one per span, or None when the request uses
 * an encoding this walker leaves to the protobuf runtime: a wire type other than the
 * schema's for a known field, a group, a singular message (resource, scope, status, a
 * value) given twice, an attribute value with a field this walker does not know, or
 * text that is not UTF-8. The caller then takes the runtime path
 * (`records_from_request`), so both paths agree by construction where this one
 * answers; tests/query/test_wire.py checks that they give the same records and
 * keywords.
 *
 * Keywords follow query/_keywords.py exactly: the resource's `svc:` and `attr:`
 * words, then `name:`, `trace:`, `status:`, `kind:`, the span's `attr:` words (scalar
 * values of at most `max_value` code points, keys in `skip` left out), three `t:`
 * and three `dur:` words. A payload is what `ResourceSpans(resource=..., schema_url=
 * ...)` with one `ScopeSpans(scope=..., schema_url=...)` holding the span serializes
 * to: resource, scope and span are copied as they came, so on requests the SDKs
 * encode (fields in number order) the bytes are the runtime's own.
 *
 * Input is a request the ingest already parsed and validated (the journal holds
 * nothing else); every length is still checked against the buffer.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

enum { OK = 0, FALLBACK = 1, ERROR = 2 }; /* ERROR: a Python exception is set */

typedef struct {
    const uint8_t *p, *end;
} Cursor;

typedef struct {
    uint32_t number;
    int type;
    uint64_t value;       /* varint, fixed64, fixed32 */
    const uint8_t *data;  /* length-delimited */
    Py_ssize_t len;
} Field;

typedef struct {
    const uint8_t *data;
    Py_ssize_t len;
} Slice;

static int read_varint(Cursor *c, uint64_t *out) {
    uint64_t value = 0;
    for (int i = 0; i < 10 && c->p < c->end; i++) {
        uint8_t byte = *c->p++;
        if (i == 9 && byte > 1) return 0; /* past 64 bits: upb accepts, we decline */
        value |= (uint64_t)(byte & 0x7F) << (7 * i);
        if (byte < 0x80) {
            *out = value;
            return 1;
        }
    }
    return 0;
}

static uint64_t little_endian(const uint8_t *p, int n) {
    uint64_t value = 0;
    for (int i = n - 1; i >= 0; i--) value = value << 8 | p[i];
    return value;
}

/* 1: a field read; 0: the message ended; FALLBACK-worthy input gives -1. */
static int next_field(Cursor *c, Field *f) {
    uint64_t tag;
    if (c->p >= c->end) return 0;
    if (!read_varint(c, &tag) || (tag >> 3) == 0 || (tag >> 3) > 0x1FFFFFFF) return -1;
    f->number = (uint32_t)(tag >> 3);
    f->type = (int)(tag & 7);
    switch (f->type) {
    case 0:
        return read_varint(c, &f->value) ? 1 : -1;
    case 1:
        if (c->end - c->p < 8) return -1;
        f->value = little_endian(c->p, 8);
        c->p += 8;
        return 1;
    case 2: {
        uint64_t len;
        if (!read_varint(c, &len) || len > (uint64_t)(c->end - c->p)) return -1;
        f->data = c->p;
        f->len = (Py_ssize_t)len;
        c->p += len;
        return 1;
    }
    case 5:
        if (c->end - c->p < 4) return -1;
        f->value = little_endian(c->p, 4);
        c->p += 4;
        return 1;
    default: /* groups (3, 4) and invalid types */
        return -1;
    }
}

/* ------------------------------------------------------------------ keywords */

typedef struct {
    PyTypeObject *record; /* the record class */
    PyObject *skip;     /* a set of keys, or NULL when empty */
    Py_ssize_t max_value;
    PyObject *status[3];
    PyObject *kinds[6];
    PyObject *status_unset, *kind_unspecified, *unknown_service;
    /* caches over one request: spans of a trace, a minute, a duration bucket */
    uint8_t trace_id[16];
    PyObject *trace_word;
    uint64_t minute;
    PyObject *time_words[3];
    PyObject *duration_words[65][3];
    Slice name;
    PyObject *name_str, *name_word;
    /* a growable byte buffer for building one keyword */
    char *buf;
    Py_ssize_t cap;
} State;

static int reserve(State *s, Py_ssize_t need) {
    if (need <= s->cap) return OK;
    Py_ssize_t cap = s->cap ? s->cap : 256;
    while (cap < need) cap *= 2;
    char *grown = PyMem_Realloc(s->buf, (size_t)cap);
    if (grown == NULL) {
        PyErr_NoMemory();
        return ERROR;
    }
    s->buf = grown;
    s->cap = cap;
    return OK;
}

/* `prefix` + data, decoded as UTF-8; NULL with FALLBACK in *why on invalid text. */
static PyObject *word(State *s, const char *prefix, const char *data, Py_ssize_t len,
                      int *why) {
    Py_ssize_t plen = (Py_ssize_t)strlen(prefix);
    if (reserve(s, plen + len) != OK) {
        *why = ERROR;
        return NULL;
    }
    memcpy(s->buf, prefix, (size_t)plen);
    memcpy(s->buf + plen, data, (size_t)len);
    PyObject *out = PyUnicode_DecodeUTF8(s->buf, plen + len, NULL);
    if (out == NULL) {
        if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
            PyErr_Clear();
            *why = FALLBACK;
        } else {
            *why = ERROR;
        }
    }
    return out;
}

static PyObject *text(const uint8_t *data, Py_ssize_t len, int *why) {
    PyObject *out = PyUnicode_DecodeUTF8((const char *)data, len, NULL);
    if (out == NULL) {
        if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
            PyErr_Clear();
            *why = FALLBACK;
        } else {
            *why = ERROR;
        }
    }
    return out;
}

static Py_ssize_t code_points(const uint8_t *data, Py_ssize_t len) {
    Py_ssize_t n = 0;
    for (Py_ssize_t i = 0; i < len; i++) n += (data[i] & 0xC0) != 0x80;
    return n;
}

/* A KeyValue's key and its value as `render_value` gives it. `which` is the AnyValue
 * member set last (0: none): `string` holds a string_value, `scalar` the bits of a
 * bool, int or double. */
typedef struct {
    Slice key;
    int which;
    Slice string;
    uint64_t scalar;
} Attribute;

/* OK or FALLBACK. A field number past bytes_value (7) is a oneof member in newer
 * schemas (string_value_strindex, 8) and unknown in older ones: which member is set
 * last then depends on the runtime's schema, so the runtime decides. */
static int read_any_value(Slice raw, Attribute *a) {
    Cursor c = {raw.data, raw.data + raw.len};
    Field f;
    int r;
    while ((r = next_field(&c, &f)) == 1) {
        int expected;
        switch (f.number) {
        case 1: case 5: case 6: case 7: expected = 2; break;
        case 2: case 3: expected = 0; break;
        case 4: expected = 1; break;
        default: return FALLBACK;
        }
        if (f.type != expected) return FALLBACK;
        a->which = (int)f.number;
        if (f.number == 1) {
            a->string.data = f.data;
            a->string.len = f.len;
        } else {
            a->scalar = f.value;
        }
    }
    return r == 0 ? OK : FALLBACK;
}

static int read_attribute(Slice raw, Attribute *a) {
    Cursor c = {raw.data, raw.data + raw.len};
    Field f;
    int r, values = 0;
    a->key.data = raw.data;
    a->key.len = 0;
    a->which = 0;
    while ((r = next_field(&c, &f)) == 1) {
        if (f.number == 1) {
            if (f.type != 2) return FALLBACK;
            a->key.data = f.data;
            a->key.len = f.len;
        } else if (f.number == 2) {
            if (f.type != 2 || ++values > 1) return FALLBACK; /* merged twice: runtime */
            Slice v = {f.data, f.len};
            if (read_any_value(v, a) != OK) return FALLBACK;
        }
    }
    return r == 0 ? OK : FALLBACK;
}

/* `attr:<key>=<rendered>` for an indexed scalar attribute; Py_None when not indexed
 * (a borrowed None); NULL with *why set. */
static PyObject *attribute_word(State *s, const Attribute *a, int *why) {
    if (s->skip != NULL) {
        PyObject *key = text(a->key.data, a->key.len, why);
        if (key == NULL) return NULL;
        int skipped = PySet_Contains(s->skip, key);
        Py_DECREF(key);
        if (skipped < 0) {
            *why = ERROR;
            return NULL;
        }
        if (skipped) return Py_None;
    }
    char scratch[32];
    const char *value;
    Py_ssize_t len;
    PyObject *repr = NULL;
    switch (a->which) {
    case 1:
        if (code_points(a->string.data, a->string.len) > s->max_value) return Py_None;
        value = (const char *)a->string.data;
        len = a->string.len;
        break;
    case 2:
        value = a->scalar ? "true" : "false";
        len = (Py_ssize_t)strlen(value);
        break;
    case 3:
        len = snprintf(scratch, sizeof scratch, "%lld", (long long)(int64_t)a->scalar);
        value = scratch;
        break;
    case 4: { /* repr(float), as Python writes it */
        double d;
        memcpy(&d, &a->scalar, 8);
        PyObject *f = PyFloat_FromDouble(d);
        if (f == NULL) {
            *why = ERROR;
            return NULL;
        }
        repr = PyObject_Repr(f);
        Py_DECREF(f);
        if (repr == NULL) {
            *why = ERROR;
            return NULL;
        }
        value = PyUnicode_AsUTF8AndSize(repr, &len);
        if (value == NULL) {
            Py_DECREF(repr);
            *why = ERROR;
            return NULL;
        }
        break;
    }
    default:
        return Py_None;
    }
    if (a->which != 1 && len > s->max_value) { /* ASCII: a byte a code point */
        Py_XDECREF(repr);
        return Py_None;
    }
    Py_ssize_t need = 5 + a->key.len + 1 + len;
    if (reserve(s, need) != OK) {
        Py_XDECREF(repr);
        *why = ERROR;
        return NULL;
    }
    memcpy(s->buf, "attr:", 5);
    memcpy(s->buf + 5, a->key.data, (size_t)a->key.len);
    s->buf[5 + a->key.len] = '=';
    memcpy(s->buf + 6 + a->key.len, value, (size_t)len);
    Py_XDECREF(repr);
    PyObject *out = PyUnicode_DecodeUTF8(s->buf, need, NULL);
    if (out == NULL) {
        if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
            PyErr_Clear();
            *why = FALLBACK;
        } else {
            *why = ERROR;
        }
    }
    return out;
}

/* Appends the attribute words of the KeyValues in `raw` (a Resource or a Span) with
 * field number `number` to `out`. For a resource, also finds the service name. */
static int attribute_words(State *s, Slice raw, uint32_t number, PyObject *out,
                           Slice *service, int *has_service) {
    Cursor c = {raw.data, raw.data + raw.len};
    Field f;
    int r, why = OK;
    while ((r = next_field(&c, &f)) == 1) {
        if (f.number != number) continue;
        if (f.type != 2) return FALLBACK;
        Attribute a = {{NULL, 0}, 0, {NULL, 0}, 0};
        Slice kv = {f.data, f.len};
        if (read_attribute(kv, &a) != OK) return FALLBACK;
        if (service != NULL && !*has_service && a.which == 1 && a.key.len == 12 &&
            memcmp(a.key.data, "service.name", 12) == 0) {
            *service = a.string;
            *has_service = 1;
        }
        PyObject *w = attribute_word(s, &a, &why);
        if (w == NULL) return why;
        if (w == Py_None) continue;
        int failed = PyList_Append(out, w);
        Py_DECREF(w);
        if (failed) return ERROR;
    }
    return r == 0 ? OK : FALLBACK;
}

static PyObject *decimal_word(const char *prefix, uint64_t value) {
    char scratch[48];
    int n = snprintf(scratch, sizeof scratch, "%s%llu", prefix, (unsigned long long)value);
    return PyUnicode_FromStringAndSize(scratch, n);
}

static int time_words(State *s, uint64_t start_ns) {
    uint64_t minute = start_ns / 60000000000ULL;
    if (s->time_words[0] != NULL && s->minute == minute) return OK;
    for (int i = 0; i < 3; i++) Py_CLEAR(s->time_words[i]);
    s->minute = minute;
    s->time_words[0] = decimal_word("t:d:", minute / 1440);
    s->time_words[1] = decimal_word("t:h:", minute / 60);
    s->time_words[2] = decimal_word("t:m:", minute);
    for (int i = 0; i < 3; i++)
        if (s->time_words[i] == NULL) return ERROR;
    return OK;
}

static PyObject **duration_words(State *s, uint64_t start_ns, uint64_t end_ns) {
    uint64_t us = end_ns > start_ns ? (end_ns - start_ns) / 1000 : 0;
    int bucket = 0;
    while (us) {
        bucket++;
        us >>= 1;
    }
    PyObject **words = s->duration_words[bucket];
    if (words[0] == NULL) {
        words[0] = decimal_word("dur:4:", (uint64_t)bucket / 16);
        words[1] = decimal_word("dur:2:", (uint64_t)bucket / 4);
        words[2] = decimal_word("dur:0:", (uint64_t)bucket);
        if (words[0] == NULL || words[1] == NULL || words[2] == NULL) {
            for (int i = 0; i < 3; i++) Py_CLEAR(words[i]);
            return NULL;
        }
    }
    return words;
}

static PyObject *trace_word(State *s, Slice id) {
    static const char hex[] = "0123456789abcdef";
    if (s->trace_word != NULL && id.len == 16 && memcmp(s->trace_id, id.data, 16) == 0) {
        Py_INCREF(s->trace_word);
        return s->trace_word;
    }
    char scratch[6 + 2 * 64];
    if (id.len > 64) { /* validated ids are 16 bytes; keep anything else exact */
        PyObject *raw = PyBytes_FromStringAndSize((const char *)id.data, id.len);
        if (raw == NULL) return NULL;
        PyObject *digits = PyObject_CallMethod(raw, "hex", NULL);
        Py_DECREF(raw);
        if (digits == NULL) return NULL;
        PyObject *out = PyUnicode_FromFormat("trace:%U", digits);
        Py_DECREF(digits);
        return out;
    }
    memcpy(scratch, "trace:", 6);
    for (Py_ssize_t i = 0; i < id.len; i++) {
        scratch[6 + 2 * i] = hex[id.data[i] >> 4];
        scratch[7 + 2 * i] = hex[id.data[i] & 15];
    }
    PyObject *out = PyUnicode_FromStringAndSize(scratch, 6 + 2 * id.len);
    if (out != NULL && id.len == 16) {
        Py_XDECREF(s->trace_word);
        s->trace_word = out;
        Py_INCREF(out);
        memcpy(s->trace_id, id.data, 16);
    }
    return out;
}

/* ------------------------------------------------------------------- records */

static Py_ssize_t varint_size(uint64_t v) {
    Py_ssize_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static uint8_t *put_field(uint8_t *out, uint8_t tag, Slice data) {
    uint64_t v = (uint64_t)data.len;
    *out++ = tag;
    while (v >= 0x80) {
        *out++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *out++ = (uint8_t)v;
    memcpy(out, data.data, (size_t)data.len);
    return out + data.len;
}

static Py_ssize_t field_size(Slice data) { return 1 + varint_size((uint64_t)data.len) + data.len; }

/* ResourceSpans{resource, [ScopeSpans{scope, [span], ss_schema}], rs_schema} */
static PyObject *payload(Slice resource, Slice rs_schema, Slice scope, Slice ss_schema,
                         Slice span) {
    Py_ssize_t inner = field_size(scope) + field_size(span) +
                       (ss_schema.len ? field_size(ss_schema) : 0);
    Py_ssize_t total = field_size(resource) + 1 + varint_size((uint64_t)inner) + inner +
                       (rs_schema.len ? field_size(rs_schema) : 0);
    PyObject *out = PyBytes_FromStringAndSize(NULL, total);
    if (out == NULL) return NULL;
    uint8_t *p = (uint8_t *)PyBytes_AS_STRING(out);
    p = put_field(p, 0x0A, resource);
    uint64_t v = (uint64_t)inner;
    *p++ = 0x12;
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    p = put_field(p, 0x0A, scope);
    p = put_field(p, 0x12, span);
    if (ss_schema.len) p = put_field(p, 0x1A, ss_schema);
    if (rs_schema.len) p = put_field(p, 0x1A, rs_schema);
    return out;
}

typedef struct {
    Slice trace_id, span_id, name;
    uint64_t kind, start, end, status_code;
} SpanFields;

static int read_status(Slice raw, uint64_t *code) {
    Cursor c = {raw.data, raw.data + raw.len};
    Field f;
    int r;
    while ((r = next_field(&c, &f)) == 1) {
        if (f.number == 3) {
            if (f.type != 0) return FALLBACK;
            *code = f.value;
        } else if (f.number == 2 && f.type != 2) {
            return FALLBACK;
        }
    }
    return r == 0 ? OK : FALLBACK;
}

static int read_span(Slice raw, SpanFields *sf) {
    static const int types[17] = {-1, 2, 2, 2, 2, 2, 0, 1, 1, 2, 0, 2, 0, 2, 0, 2, 5};
    Cursor c = {raw.data, raw.data + raw.len};
    Field f;
    int r, statuses = 0;
    memset(sf, 0, sizeof *sf);
    sf->trace_id.data = sf->span_id.data = sf->name.data = raw.data;
    while ((r = next_field(&c, &f)) == 1) {
        if (f.number > 16) continue;
        if (f.type != types[f.number]) return FALLBACK;
        Slice data = {f.data, f.len};
        switch (f.number) {
        case 1: sf->trace_id = data; break;
        case 2: sf->span_id = data; break;
        case 5: sf->name = data; break;
        case 6: sf->kind = f.value; break;
        case 7: sf->start = f.value; break;
        case 8: sf->end = f.value; break;
        case 15:
            if (++statuses > 1) return FALLBACK;
            sf->status_code = 0;
            if (read_status(data, &sf->status_code) != OK) return FALLBACK;
            break;
        default: break;
        }
    }
    return r == 0 ? OK : FALLBACK;
}

static PyObject *FIELD_NAMES[6]; /* SpanRecord's fields, in the order set below */
static PyObject *NO_ARGS;         /* () */

/* A `record` instance (query._blocks.SpanRecord) with its slots set as the frozen
 * dataclass's own __init__ sets them (object.__setattr__), without running it. The
 * instance comes from the type's tp_new (object.__new__ for SpanRecord): tp_alloc
 * alone leaves any other type's instance half made (`type` gave a class the
 * collector crashed on). */
static PyObject *new_record(State *s, const SpanFields *sf, PyObject *body, PyObject *words,
                            PyObject *service) {
    PyObject *values[6] = {
        PyBytes_FromStringAndSize((const char *)sf->trace_id.data, sf->trace_id.len),
        PyBytes_FromStringAndSize((const char *)sf->span_id.data, sf->span_id.len),
        body,
        words,
        PyLong_FromUnsignedLongLong(sf->start),
        PyTuple_Pack(2, service, s->name_str),
    };
    PyObject *record = NULL;
    int failed = 0;
    for (int i = 0; i < 6; i++) failed |= values[i] == NULL;
    if (!failed && s->record->tp_new == NULL)
        PyErr_Format(PyExc_TypeError, "cannot create '%s' instances", s->record->tp_name);
    else if (!failed)
        record = s->record->tp_new(s->record, NO_ARGS, NULL);
    failed = record == NULL;
    for (int i = 0; !failed && i < 6; i++)
        failed = PyObject_GenericSetAttr(record, FIELD_NAMES[i], values[i]) != 0;
    for (int i = 0; i < 6; i++)
        if (i != 2 && i != 3) Py_XDECREF(values[i]);
    if (failed) {
        Py_XDECREF(record);
        return NULL;
    }
    return record;
}

/* One record for the span `raw`; `shared` the resource's words. */
static int span_record(State *s, PyObject *out, Slice raw, PyObject *shared,
                       PyObject *service, Slice resource, Slice rs_schema, Slice scope,
                       Slice ss_schema) {
    SpanFields sf;
    int why = OK;
    if (read_span(raw, &sf) != OK) return FALLBACK;
    if (s->name_str == NULL || s->name.len != sf.name.len ||
        memcmp(s->name.data, sf.name.data, (size_t)sf.name.len) != 0) {
        Py_CLEAR(s->name_str);
        Py_CLEAR(s->name_word);
        s->name_str = text(sf.name.data, sf.name.len, &why);
        if (s->name_str == NULL) return why;
        s->name_word = word(s, "name:", (const char *)sf.name.data, sf.name.len, &why);
        if (s->name_word == NULL) return why;
        s->name = sf.name;
    }
    PyObject *own = PyList_New(0);
    if (own == NULL) return ERROR;
    int status = attribute_words(s, raw, 9, own, NULL, NULL);
    if (status != OK) {
        Py_DECREF(own);
        return status;
    }
    PyObject **durations = duration_words(s, sf.start, sf.end);
    if (durations == NULL || time_words(s, sf.start) != OK) {
        Py_DECREF(own);
        return ERROR;
    }
    Py_ssize_t n_shared = PyList_GET_SIZE(shared), n_own = PyList_GET_SIZE(own);
    PyObject *words = PyTuple_New(n_shared + 4 + n_own + 6);
    PyObject *trace = trace_word(s, sf.trace_id);
    if (words == NULL || trace == NULL) {
        Py_XDECREF(words);
        Py_XDECREF(trace);
        Py_DECREF(own);
        return ERROR;
    }
    Py_ssize_t i = 0;
    for (Py_ssize_t j = 0; j < n_shared; j++) {
        PyObject *w = PyList_GET_ITEM(shared, j);
        Py_INCREF(w);
        PyTuple_SET_ITEM(words, i++, w);
    }
    int32_t code = (int32_t)sf.status_code, kind = (int32_t)sf.kind;
    PyObject *status_word = code >= 0 && code < 3 ? s->status[code] : s->status_unset;
    PyObject *kind_word = kind >= 0 && kind < 6 ? s->kinds[kind] : s->kind_unspecified;
    Py_INCREF(s->name_word);
    PyTuple_SET_ITEM(words, i++, s->name_word);
    PyTuple_SET_ITEM(words, i++, trace);
    Py_INCREF(status_word);
    PyTuple_SET_ITEM(words, i++, status_word);
    Py_INCREF(kind_word);
    PyTuple_SET_ITEM(words, i++, kind_word);
    for (Py_ssize_t j = 0; j < n_own; j++) {
        PyObject *w = PyList_GET_ITEM(own, j);
        Py_INCREF(w);
        PyTuple_SET_ITEM(words, i++, w);
    }
    Py_DECREF(own);
    for (int j = 0; j < 3; j++) {
        Py_INCREF(s->time_words[j]);
        PyTuple_SET_ITEM(words, i++, s->time_words[j]);
    }
    for (int j = 0; j < 3; j++) {
        Py_INCREF(durations[j]);
        PyTuple_SET_ITEM(words, i++, durations[j]);
    }
    PyObject *body = payload(resource, rs_schema, scope, ss_schema, raw);
    PyObject *record = body == NULL ? NULL : new_record(s, &sf, body, words, service);
    Py_XDECREF(body);
    Py_DECREF(words);
    if (record == NULL) return ERROR;
    int failed = PyList_Append(out, record);
    Py_DECREF(record);
    return failed ? ERROR : OK;
}

/* A ResourceSpans or a ScopeSpans, which share a shape: its singular message (1:
 * resource or scope) and schema_url (3), read before its repeated field 2, which they
 * may follow on the wire. OK or FALLBACK. */
static int read_envelope(Slice raw, Slice *head, Slice *schema) {
    Cursor c = {raw.data, raw.data + raw.len};
    Field f;
    int r, heads = 0;
    *head = *schema = (Slice){raw.data, 0};
    while ((r = next_field(&c, &f)) == 1) {
        if (f.number > 3) continue;
        if (f.type != 2) return FALLBACK;
        if (f.number == 1) {
            if (++heads > 1) return FALLBACK; /* merged twice: the runtime's */
            *head = (Slice){f.data, f.len};
        } else if (f.number == 3) {
            *schema = (Slice){f.data, f.len};
        }
    }
    return r == 0 ? OK : FALLBACK;
}

static int scope_spans(State *s, PyObject *out, Slice raw, PyObject *shared,
                       PyObject *service, Slice resource, Slice rs_schema) {
    Slice scope, schema;
    if (read_envelope(raw, &scope, &schema) != OK) return FALLBACK;
    Cursor c = {raw.data, raw.data + raw.len};
    Field f;
    while (next_field(&c, &f) == 1) {
        if (f.number != 2) continue;
        Slice span = {f.data, f.len};
        int status = span_record(s, out, span, shared, service, resource, rs_schema, scope,
                                 schema);
        if (status != OK) return status;
    }
    return OK;
}

static int resource_spans(State *s, PyObject *out, Slice raw) {
    Slice resource, schema;
    if (read_envelope(raw, &resource, &schema) != OK) return FALLBACK;
    Cursor c = {raw.data, raw.data + raw.len};
    Field f;
    int why = OK;
    PyObject *attrs = PyList_New(0);
    if (attrs == NULL) return ERROR;
    Slice name = {NULL, 0};
    int has_service = 0;
    int status = attribute_words(s, resource, 1, attrs, &name, &has_service);
    PyObject *service = NULL, *shared = NULL;
    if (status != OK) goto done;
    if (has_service && name.len > 0) {
        service = text(name.data, name.len, &why);
    } else {
        service = s->unknown_service;
        Py_INCREF(service);
    }
    if (service == NULL) {
        status = why;
        goto done;
    }
    PyObject *svc = PyUnicode_FromFormat("svc:%U", service);
    if (svc == NULL) {
        status = ERROR;
        goto done;
    }
    shared = PyList_New(0);
    if (shared == NULL || PyList_Append(shared, svc) != 0) {
        Py_DECREF(svc);
        status = ERROR;
        goto done;
    }
    Py_DECREF(svc);
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(attrs); i++) {
        if (PyList_Append(shared, PyList_GET_ITEM(attrs, i)) != 0) {
            status = ERROR;
            goto done;
        }
    }
    c.p = raw.data;
    while (next_field(&c, &f) == 1) {
        if (f.number != 2) continue;
        Slice ss = {f.data, f.len};
        status = scope_spans(s, out, ss, shared, service, resource, schema);
        if (status != OK) goto done;
    }
done:
    Py_DECREF(attrs);
    Py_XDECREF(service);
    Py_XDECREF(shared);
    return status;
}

/* ---------------------------------------------------------------- validation */

/* `valid_spans` answers for the common case of the ingest's validation
 * (collector/_otlp.py `validate`): a request the runtime has parsed whose spans all
 * pass. It never judges a problem: anything that might be one, or an encoding it does
 * not follow, gives FALLBACK, and `validate` decides on the parsed message. Sizes are
 * compared as wire lengths, which bound the runtime's `ByteSize()` from above (it
 * re-encodes minimally and merges repeated singular fields), so a length within a
 * limit means the size is too. */
typedef struct {
    Py_ssize_t attributes, attribute_bytes, span_bytes, name_bytes;
} Limits;

/* A Resource or InstrumentationScope within the limits; `attributes` is its field. */
static int context_ok(Slice raw, uint32_t attributes, const Limits *l) {
    if (raw.len > l->attribute_bytes) return FALLBACK;
    Cursor c = {raw.data, raw.data + raw.len};
    Field f;
    int r;
    Py_ssize_t n = 0;
    while ((r = next_field(&c, &f)) == 1) {
        if (f.number != attributes) continue;
        if (f.type != 2) return FALLBACK;
        n++;
    }
    return r == 0 && n <= l->attributes ? OK : FALLBACK;
}

/* A KeyValue whose value is at most `attribute_bytes` long on the wire. */
static int value_ok(Slice raw, const Limits *l) {
    Cursor c = {raw.data, raw.data + raw.len};
    Field f;
    int r, values = 0;
    while ((r = next_field(&c, &f)) == 1) {
        if (f.number != 2) continue;
        if (f.type != 2 || ++values > 1 || f.len > l->attribute_bytes) return FALLBACK;
    }
    return r == 0 ? OK : FALLBACK;
}

static int nonzero(Slice id) {
    for (Py_ssize_t i = 0; i < id.len; i++)
        if (id.data[i]) return 1;
    return 0;
}

/* `_span_problem(span) is None`, certainly. */
static int span_ok(Slice raw, const Limits *l) {
    if (raw.len > l->span_bytes) return FALLBACK;
    Slice ids[6] = {{NULL, 0}}; /* by field number: 1 trace_id, 2 span_id, 4 parent, 5 name */
    int sized = raw.len > l->attribute_bytes; /* only then can a value be too big */
    Py_ssize_t attributes = 0;
    Cursor c = {raw.data, raw.data + raw.len};
    Field f;
    int r;
    while ((r = next_field(&c, &f)) == 1) {
        switch (f.number) {
        case 1: case 2: case 4: case 5:
            if (f.type != 2) return FALLBACK;
            ids[f.number] = (Slice){f.data, f.len}; /* the last one given, as the runtime */
            break;
        case 9:
            if (f.type != 2) return FALLBACK;
            attributes++;
            if (sized && value_ok((Slice){f.data, f.len}, l) != OK) return FALLBACK;
            break;
        default:
            break;
        }
    }
    if (r != 0) return FALLBACK;
    if (ids[1].len != 16 || !nonzero(ids[1]) || ids[2].len != 8 || !nonzero(ids[2]))
        return FALLBACK;
    if ((ids[4].len != 0 && ids[4].len != 8) || ids[5].len > l->name_bytes) return FALLBACK;
    return attributes <= l->attributes ? OK : FALLBACK;
}

/* Adds the spans of a ResourceSpans (`scopes` 0) or a ScopeSpans (`scopes` 1) to `count`. */
static int envelope_ok(Slice raw, int scopes, const Limits *l, Py_ssize_t *count) {
    Slice head, schema;
    if (read_envelope(raw, &head, &schema) != OK) return FALLBACK; /* also checks field 2 */
    if (context_ok(head, scopes ? 3 : 1, l) != OK) return FALLBACK;
    Cursor c = {raw.data, raw.data + raw.len};
    Field f;
    while (next_field(&c, &f) == 1) {
        if (f.number != 2) continue;
        Slice inner = {f.data, f.len};
        int status = scopes ? span_ok(inner, l) : envelope_ok(inner, 1, l, count);
        if (status != OK) return FALLBACK;
        *count += scopes;
    }
    return OK;
}

static PyObject *valid_spans(PyObject *Py_UNUSED(module), PyObject *args) {
    Py_buffer body;
    Limits l;
    if (!PyArg_ParseTuple(args, "y*nnnn:valid_spans", &body, &l.attributes, &l.attribute_bytes,
                          &l.span_bytes, &l.name_bytes))
        return NULL;
    Cursor c = {body.buf, (const uint8_t *)body.buf + body.len};
    Field f;
    int r, status = OK;
    Py_ssize_t count = 0;
    while (status == OK && (r = next_field(&c, &f)) == 1) {
        if (f.number != 1) continue;
        status = f.type == 2 ? envelope_ok((Slice){f.data, f.len}, 0, &l, &count) : FALLBACK;
    }
    PyBuffer_Release(&body);
    if (status != OK || r != 0) Py_RETURN_NONE;
    return PyLong_FromSsize_t(count);
}

/* ------------------------------------------------------------------- module */

static PyObject *STATUS_WORDS[3], *KIND_WORDS[6], *STATUS_UNSET, *KIND_UNSPECIFIED,
    *UNKNOWN_SERVICE;

static void state_clear(State *s) {
    Py_CLEAR(s->trace_word);
    for (int i = 0; i < 3; i++) Py_CLEAR(s->time_words[i]);
    for (int b = 0; b < 65; b++)
        for (int i = 0; i < 3; i++) Py_CLEAR(s->duration_words[b][i]);
    Py_CLEAR(s->name_str);
    Py_CLEAR(s->name_word);
    PyMem_Free(s->buf);
}

static PyObject *split_request(PyObject *Py_UNUSED(module), PyObject *args) {
    Py_buffer body;
    PyObject *skip;
    Py_ssize_t max_value;
    PyTypeObject *record;
    if (!PyArg_ParseTuple(args, "y*OnO!:split_request", &body, &skip, &max_value, &PyType_Type,
                          &record))
        return NULL;
    if (!PyAnySet_Check(skip)) {
        PyBuffer_Release(&body);
        PyErr_SetString(PyExc_TypeError, "skip must be a set or frozenset of keys");
        return NULL;
    }
    State s;
    memset(&s, 0, sizeof s);
    s.record = record;
    s.skip = PySet_GET_SIZE(skip) ? skip : NULL;
    s.max_value = max_value;
    memcpy(s.status, STATUS_WORDS, sizeof s.status);
    memcpy(s.kinds, KIND_WORDS, sizeof s.kinds);
    s.status_unset = STATUS_UNSET;
    s.kind_unspecified = KIND_UNSPECIFIED;
    s.unknown_service = UNKNOWN_SERVICE;
    PyObject *out = PyList_New(0);
    int status = out == NULL ? ERROR : OK;
    Cursor c = {body.buf, (const uint8_t *)body.buf + body.len};
    Field f;
    int r = 0;
    while (status == OK && (r = next_field(&c, &f)) == 1) {
        if (f.number != 1) continue;
        if (f.type != 2) {
            status = FALLBACK;
            break;
        }
        Slice rs = {f.data, f.len};
        status = resource_spans(&s, out, rs);
    }
    if (status == OK && r != 0) status = FALLBACK;
    state_clear(&s);
    PyBuffer_Release(&body);
    if (status == OK) return out;
    Py_XDECREF(out);
    if (status == ERROR) return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"split_request", split_request, METH_VARARGS,
     "split_request(body, skip, max_value, record) -> a list of `record` (SpanRecord), "
     "one per span, or None to use the protobuf runtime."},
    {"valid_spans", valid_spans, METH_VARARGS,
     "valid_spans(body, max_attributes, max_attribute_bytes, max_span_bytes, max_name_bytes) "
     "-> the number of spans when every one certainly passes the ingest's checks, else None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "query._wire",
    "OTLP Export requests split into span records off the wire (see query/_wire.c).",
    -1,
    methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC PyInit__wire(void) {
    static const char *status[3] = {"status:unset", "status:ok", "status:error"};
    static const char *kinds[6] = {"kind:unspecified", "kind:internal", "kind:server",
                                   "kind:client",      "kind:producer", "kind:consumer"};
    for (int i = 0; i < 3; i++)
        if ((STATUS_WORDS[i] = PyUnicode_InternFromString(status[i])) == NULL) return NULL;
    for (int i = 0; i < 6; i++)
        if ((KIND_WORDS[i] = PyUnicode_InternFromString(kinds[i])) == NULL) return NULL;
    STATUS_UNSET = STATUS_WORDS[0];
    KIND_UNSPECIFIED = KIND_WORDS[0];
    if ((UNKNOWN_SERVICE = PyUnicode_InternFromString("unknown_service")) == NULL) return NULL;
    static const char *fields[6] = {"trace_id", "span_id",  "payload",
                                    "keywords", "start_ns", "operation"};
    for (int i = 0; i < 6; i++)
        if ((FIELD_NAMES[i] = PyUnicode_InternFromString(fields[i])) == NULL) return NULL;
    if ((NO_ARGS = PyTuple_New(0)) == NULL) return NULL;
    return PyModule_Create(&module);
}

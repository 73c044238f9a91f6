/* query._buckets: EDB bucket bodies, and the compaction merge of segments' postings.
 *
 * A bucket body (query/_edb.py) is `count u32`, then per keyword `trapdoor (32) |
 * length u32 | posting list`, zero-padded to a power of two of at least `min_value`
 * bytes. A posting list (query/_postings.py) is `0x00 | delta varints` or `0x01 |
 * base varint | bitmap`, and `BlockSet.encode` picks the bitmap when the list has
 * more than one block and spans at most 16 bits a block.
 *
 * A compaction merge (query/_index.py) reads every bucket of `fanout` segments and
 * writes each keyword once with its postings moved to the merged segment's first
 * block and, for a keyword in several segments, united. In Python that was ~13-20 us
 * a merged span, most of it creating and looking up objects per keyword (~4 a span);
 * here the decrypted bodies are walked once and only the outputs become objects.
 *
 *   bucket_entries(body) -> [(trapdoor, postings)]
 *   merge_postings(bodies, shifts) -> [(trapdoor, postings)]   first-seen order
 *   pack_buckets(entries, locators, count, min_value) -> [body]  count bodies
 *
 * Layout errors raise ValueError (the caller reports them as IntegrityError): bodies
 * come from authenticated rows, so they mean rows this code did not write.
 * tests/query/test_buckets.py checks the results against `BlockSet`, the reference.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define DOOR 32
#define HEAD (DOOR + 4) /* an entry's trapdoor and length */
#define LOCATOR 16      /* bytes of locator PRF output a keyword */
enum { LIST = 0, BITMAP = 1 };
#define BITMAP_BITS_PER_BLOCK 16

static uint32_t get_u32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get_u64(const uint8_t *p) {
    return (uint64_t)get_u32(p) | (uint64_t)get_u32(p + 4) << 32;
}

static void put_u32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static int layout_error(const char *what) {
    PyErr_Format(PyExc_ValueError, "an encrypted index row has %s", what);
    return -1;
}

/* ------------------------------------------------------------------ varints */

/* Reads a varint at p[*at..n); 0 when truncated or wider than 63 bits. */
static int read_varint(const uint8_t *p, Py_ssize_t n, Py_ssize_t *at, uint64_t *out) {
    uint64_t value = 0;
    for (int shift = 0; *at < n && shift < 63; shift += 7) {
        uint8_t byte = p[(*at)++];
        value |= (uint64_t)(byte & 0x7F) << shift;
        if (byte < 0x80) {
            *out = value;
            return 1;
        }
    }
    return 0;
}

static Py_ssize_t varint_size(uint64_t v) {
    Py_ssize_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static uint8_t *put_varint(uint8_t *out, uint64_t v) {
    while (v >= 0x80) {
        *out++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *out++ = (uint8_t)v;
    return out;
}

/* ------------------------------------------------------------------ bucket bodies */

typedef struct {
    const uint8_t *door;
    const uint8_t *raw;
    Py_ssize_t len;
    int64_t shift;
    Py_ssize_t next; /* the next entry of the same trapdoor, -1 at the last */
} Entry;

typedef struct {
    Entry *at;
    Py_ssize_t len, cap;
} Entries;

/* The array `at` of `*cap` items of `size` bytes reallocated to twice as many (to
 * `first` when empty); NULL with MemoryError set, `at` and `*cap` then unchanged. */
static void *grown(void *at, Py_ssize_t *cap, size_t size, Py_ssize_t first) {
    Py_ssize_t more = *cap ? 2 * *cap : first;
    void *out = PyMem_Realloc(at, (size_t)more * size);
    if (out == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    *cap = more;
    return out;
}

static int push(Entries *v, Entry e) {
    if (v->len == v->cap) {
        Entry *at = grown(v->at, &v->cap, sizeof(Entry), 1024);
        if (at == NULL) return -1;
        v->at = at;
    }
    v->at[v->len++] = e;
    return 0;
}

/* Appends a body's entries to `v`; -1 with ValueError set when it does not parse. */
static int read_body(const uint8_t *p, Py_ssize_t n, int64_t shift, Entries *v) {
    if (n < 4) return layout_error("an unknown layout");
    uint32_t count = get_u32(p);
    Py_ssize_t at = 4;
    for (uint32_t i = 0; i < count; i++) {
        if (n - at < HEAD) return layout_error("an unknown layout");
        Py_ssize_t len = (Py_ssize_t)get_u32(p + at + DOOR);
        if (len > n - at - HEAD) return layout_error("an unknown layout");
        Entry e = {p + at, p + at + HEAD, len, shift, -1};
        if (push(v, e) < 0) return -1;
        at += HEAD + len;
    }
    return 0;
}

static PyObject *entry_tuple(const uint8_t *door, PyObject *raw) {
    if (raw == NULL) return NULL;
    PyObject *d = PyBytes_FromStringAndSize((const char *)door, DOOR);
    if (d == NULL) {
        Py_DECREF(raw);
        return NULL;
    }
    PyObject *t = PyTuple_New(2);
    if (t == NULL) {
        Py_DECREF(d);
        Py_DECREF(raw);
        return NULL;
    }
    PyTuple_SET_ITEM(t, 0, d);
    PyTuple_SET_ITEM(t, 1, raw);
    return t;
}

static PyObject *bucket_entries(PyObject *Py_UNUSED(module), PyObject *arg) {
    Py_buffer body;
    if (PyObject_GetBuffer(arg, &body, PyBUF_SIMPLE) < 0) return NULL;
    Entries v = {NULL, 0, 0};
    PyObject *out = NULL;
    if (read_body(body.buf, body.len, 0, &v) == 0 && (out = PyList_New(v.len)) != NULL) {
        for (Py_ssize_t i = 0; i < v.len; i++) {
            PyObject *raw = PyBytes_FromStringAndSize((const char *)v.at[i].raw, v.at[i].len);
            PyObject *t = entry_tuple(v.at[i].door, raw);
            if (t == NULL) {
                Py_CLEAR(out);
                break;
            }
            PyList_SET_ITEM(out, i, t);
        }
    }
    PyMem_Free(v.at);
    PyBuffer_Release(&body);
    return out;
}

/* ------------------------------------------------------------------ postings */

/* `BlockSet.rebase`: the list with its first number (the lowest block, in both
 * encodings) moved by `shift`, the rest copied. */
static PyObject *rebased(const Entry *e) {
    if (e->len == 0 || e->raw[0] > BITMAP) {
        layout_error(e->len ? "an unknown posting layout" : "an empty posting list");
        return NULL;
    }
    if (e->shift == 0 || (e->len == 1 && e->raw[0] == LIST)) /* unmoved, or empty */
        return PyBytes_FromStringAndSize((const char *)e->raw, e->len);
    Py_ssize_t at = 1;
    uint64_t first;
    if (!read_varint(e->raw, e->len, &at, &first)) {
        layout_error("a truncated posting list");
        return NULL;
    }
    uint64_t moved = first + (uint64_t)e->shift;
    Py_ssize_t rest = e->len - at;
    PyObject *out = PyBytes_FromStringAndSize(NULL, 1 + varint_size(moved) + rest);
    if (out == NULL) return NULL;
    uint8_t *w = (uint8_t *)PyBytes_AS_STRING(out);
    *w++ = e->raw[0];
    w = put_varint(w, moved);
    memcpy(w, e->raw + at, (size_t)rest);
    return out;
}

typedef struct {
    uint64_t *at;
    Py_ssize_t len, cap;
} Numbers;

static int add_number(Numbers *v, uint64_t x) {
    if (v->len == v->cap) {
        uint64_t *at = grown(v->at, &v->cap, sizeof(uint64_t), 256);
        if (at == NULL) return -1;
        v->at = at;
    }
    v->at[v->len++] = x;
    return 0;
}

/* `BlockSet.decode(raw).shifted(shift).blocks()`, appended to `v` (maybe unsorted). */
static int decode_into(const Entry *e, Numbers *v) {
    const uint8_t *p = e->raw;
    Py_ssize_t n = e->len, at = 1;
    uint64_t value = 0;
    if (n == 0) return layout_error("an empty posting list");
    if (p[0] == LIST) {
        while (at < n) {
            uint64_t delta;
            if (!read_varint(p, n, &at, &delta)) return layout_error("a truncated posting list");
            value += delta;
            if (add_number(v, value + (uint64_t)e->shift) < 0) return -1;
        }
        return 0;
    }
    if (p[0] != BITMAP) return layout_error("an unknown posting layout");
    if (!read_varint(p, n, &at, &value)) return layout_error("a truncated posting list");
    value += (uint64_t)e->shift;
    for (Py_ssize_t byte = 0; at + byte < n; byte++) {
        for (unsigned bits = p[at + byte]; bits; bits &= bits - 1) {
            uint64_t bit = (uint64_t)__builtin_ctz(bits);
            if (add_number(v, value + 8 * (uint64_t)byte + bit) < 0) return -1;
        }
    }
    return 0;
}

static int ascending(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* `BlockSet.encode` of the numbers in `v` (sorted and deduplicated here). */
static PyObject *encoded(Numbers *v) {
    Py_ssize_t n = 0;
    for (Py_ssize_t i = 1; i < v->len; i++)
        if (v->at[i] < v->at[i - 1]) {
            qsort(v->at, (size_t)v->len, sizeof(uint64_t), ascending);
            break;
        }
    for (Py_ssize_t i = 0; i < v->len; i++)
        if (n == 0 || v->at[i] != v->at[n - 1]) v->at[n++] = v->at[i];
    v->len = n;
    if (n > 1 && v->at[n - 1] - v->at[0] < (uint64_t)BITMAP_BITS_PER_BLOCK * (uint64_t)n) {
        uint64_t base = v->at[0];
        Py_ssize_t width = (Py_ssize_t)(v->at[n - 1] - base) + 1;
        Py_ssize_t head = 1 + varint_size(base);
        PyObject *out = PyBytes_FromStringAndSize(NULL, head + (width + 7) / 8);
        if (out == NULL) return NULL;
        uint8_t *w = (uint8_t *)PyBytes_AS_STRING(out);
        w[0] = BITMAP;
        put_varint(w + 1, base);
        memset(w + head, 0, (size_t)((width + 7) / 8));
        for (Py_ssize_t i = 0; i < n; i++) {
            uint64_t bit = v->at[i] - base;
            w[head + (Py_ssize_t)(bit >> 3)] |= (uint8_t)(1u << (bit & 7));
        }
        return out;
    }
    Py_ssize_t size = 1;
    for (Py_ssize_t i = 0; i < n; i++) size += varint_size(v->at[i] - (i ? v->at[i - 1] : 0));
    PyObject *out = PyBytes_FromStringAndSize(NULL, size);
    if (out == NULL) return NULL;
    uint8_t *w = (uint8_t *)PyBytes_AS_STRING(out);
    *w++ = LIST;
    for (Py_ssize_t i = 0; i < n; i++) w = put_varint(w, v->at[i] - (i ? v->at[i - 1] : 0));
    return out;
}

/* The union of a trapdoor's entries, each moved by its shift, encoded. */
static PyObject *united(const Entries *all, Py_ssize_t first, Numbers *scratch) {
    scratch->len = 0;
    for (Py_ssize_t i = first; i >= 0; i = all->at[i].next)
        if (decode_into(&all->at[i], scratch) < 0) return NULL;
    return encoded(scratch);
}

/* ------------------------------------------------------------------ the merge */

static uint64_t door_hash(const uint8_t *door) {
    uint64_t h; /* trapdoors are PRF outputs: their first bytes are a hash already */
    memcpy(&h, door, sizeof h);
    return h;
}

static PyObject *merge_postings(PyObject *Py_UNUSED(module), PyObject *args) {
    PyObject *bodies, *shifts;
    if (!PyArg_ParseTuple(args, "O!O!:merge_postings", &PyList_Type, &bodies, &PyList_Type,
                          &shifts))
        return NULL;
    Py_ssize_t count = PyList_GET_SIZE(bodies);
    if (PyList_GET_SIZE(shifts) != count) {
        PyErr_SetString(PyExc_ValueError, "merge_postings needs one shift a body");
        return NULL;
    }
    Entries all = {NULL, 0, 0};
    Numbers scratch = {NULL, 0, 0};
    Py_ssize_t *table = NULL, *keys = NULL, *last = NULL;
    PyObject *out = NULL;
    for (Py_ssize_t b = 0; b < count; b++) {
        PyObject *body = PyList_GET_ITEM(bodies, b);
        long long shift = PyLong_AsLongLong(PyList_GET_ITEM(shifts, b));
        if (shift == -1 && PyErr_Occurred()) goto done;
        if (shift < 0) {
            PyErr_SetString(PyExc_ValueError, "a merge shift is negative");
            goto done;
        }
        if (!PyBytes_Check(body)) {
            PyErr_SetString(PyExc_TypeError, "bucket bodies must be bytes");
            goto done;
        }
        if (read_body((const uint8_t *)PyBytes_AS_STRING(body), PyBytes_GET_SIZE(body), shift,
                      &all) < 0)
            goto done;
    }
    /* Open addressing over the entries' trapdoors, at most half full. */
    Py_ssize_t size = 1;
    while (size < 2 * all.len) size <<= 1;
    table = PyMem_Malloc((size_t)size * sizeof(Py_ssize_t));
    keys = PyMem_Malloc((size_t)(all.len + 1) * sizeof(Py_ssize_t)); /* first entries */
    last = PyMem_Malloc((size_t)(all.len + 1) * sizeof(Py_ssize_t)); /* by first entry */
    if (table == NULL || keys == NULL || last == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    memset(table, 0xFF, (size_t)size * sizeof(Py_ssize_t)); /* -1: empty */
    Py_ssize_t distinct = 0;
    for (Py_ssize_t i = 0; i < all.len; i++) {
        const uint8_t *door = all.at[i].door;
        Py_ssize_t slot = (Py_ssize_t)(door_hash(door) & (uint64_t)(size - 1));
        while (table[slot] >= 0 && memcmp(all.at[table[slot]].door, door, DOOR) != 0)
            slot = (slot + 1) & (size - 1);
        if (table[slot] < 0) {
            table[slot] = i;
            keys[distinct++] = i;
            last[i] = i;
        } else {
            Py_ssize_t head = table[slot];
            all.at[last[head]].next = i;
            last[head] = i;
        }
    }
    if ((out = PyList_New(distinct)) == NULL) goto done;
    for (Py_ssize_t k = 0; k < distinct; k++) {
        const Entry *e = &all.at[keys[k]];
        PyObject *raw = e->next < 0 ? rebased(e) : united(&all, keys[k], &scratch);
        PyObject *t = entry_tuple(e->door, raw);
        if (t == NULL) {
            Py_CLEAR(out);
            goto done;
        }
        PyList_SET_ITEM(out, k, t);
    }
done:
    PyMem_Free(all.at);
    PyMem_Free(scratch.at);
    PyMem_Free(table);
    PyMem_Free(keys);
    PyMem_Free(last);
    return out;
}

/* ------------------------------------------------------------------ packing */

static PyObject *pack_buckets(PyObject *Py_UNUSED(module), PyObject *args) {
    PyObject *entries;
    Py_buffer located;
    Py_ssize_t count, min_value;
    if (!PyArg_ParseTuple(args, "O!y*nn:pack_buckets", &PyList_Type, &entries, &located, &count,
                          &min_value))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(entries);
    Py_ssize_t *sizes = NULL, *keywords = NULL;
    uint32_t *bucket_of = NULL;
    PyObject *out = NULL;
    if (count < 1 || (count & (count - 1)) || count > ((Py_ssize_t)1 << 32)) {
        PyErr_SetString(PyExc_ValueError, "a segment's bucket count is a power of two");
        goto done;
    }
    if (min_value < 4 || (min_value & (min_value - 1))) {
        PyErr_SetString(PyExc_ValueError, "a bucket's smallest size is a power of two >= 4");
        goto done;
    }
    if (located.len != LOCATOR * n) {
        PyErr_SetString(PyExc_ValueError, "pack_buckets needs 16 locator bytes a keyword");
        goto done;
    }
    sizes = PyMem_Calloc((size_t)count, sizeof(Py_ssize_t));
    keywords = PyMem_Calloc((size_t)count, sizeof(Py_ssize_t));
    bucket_of = PyMem_Malloc((size_t)(n + 1) * sizeof(uint32_t));
    if (sizes == NULL || keywords == NULL || bucket_of == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *t = PyList_GET_ITEM(entries, i);
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 2 ||
            !PyBytes_Check(PyTuple_GET_ITEM(t, 0)) ||
            PyBytes_GET_SIZE(PyTuple_GET_ITEM(t, 0)) != DOOR ||
            !PyBytes_Check(PyTuple_GET_ITEM(t, 1)) ||
            PyBytes_GET_SIZE(PyTuple_GET_ITEM(t, 1)) > (Py_ssize_t)UINT32_MAX) {
            PyErr_SetString(PyExc_TypeError,
                            "entries are (32-byte trapdoor, postings) pairs of bytes");
            goto done;
        }
        uint64_t locator = get_u64((const uint8_t *)located.buf + LOCATOR * i);
        uint32_t b = (uint32_t)(locator & (uint64_t)(count - 1));
        bucket_of[i] = b;
        sizes[b] += HEAD + PyBytes_GET_SIZE(PyTuple_GET_ITEM(t, 1));
        keywords[b]++;
    }
    if ((out = PyList_New(count)) == NULL) goto done;
    for (Py_ssize_t b = 0; b < count; b++) {
        Py_ssize_t used = 4 + sizes[b], size = min_value;
        while (size < used) size <<= 1;
        PyObject *body = PyBytes_FromStringAndSize(NULL, size);
        if (body == NULL) {
            Py_CLEAR(out);
            goto done;
        }
        uint8_t *w = (uint8_t *)PyBytes_AS_STRING(body);
        put_u32(w, (uint32_t)keywords[b]);
        memset(w + used, 0, (size_t)(size - used));
        PyList_SET_ITEM(out, b, body);
        sizes[b] = 4; /* from here on: where the bucket's next entry goes */
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *t = PyList_GET_ITEM(entries, i);
        PyObject *raw = PyTuple_GET_ITEM(t, 1);
        Py_ssize_t len = PyBytes_GET_SIZE(raw);
        uint8_t *w = (uint8_t *)PyBytes_AS_STRING(PyList_GET_ITEM(out, bucket_of[i]));
        w += sizes[bucket_of[i]];
        memcpy(w, PyBytes_AS_STRING(PyTuple_GET_ITEM(t, 0)), DOOR);
        put_u32(w + DOOR, (uint32_t)len);
        memcpy(w + HEAD, PyBytes_AS_STRING(raw), (size_t)len);
        sizes[bucket_of[i]] += HEAD + len;
    }
done:
    PyMem_Free(sizes);
    PyMem_Free(keywords);
    PyMem_Free(bucket_of);
    PyBuffer_Release(&located);
    return out;
}

/* ------------------------------------------------------------------ epochs */

/* Appends block `index` to what `seen` holds for `word`: an int while the keyword is
 * in one block (most are: ids), a list of ints once it is in more. Blocks come in
 * ascending order and each uses one `index` object, so a repeat within the block is
 * the list's last item, by identity. */
static int note_keyword(PyObject *seen, PyObject *word, PyObject *index) {
    if (!PyUnicode_CheckExact(word)) {
        PyErr_SetString(PyExc_TypeError, "keywords must be str");
        return -1;
    }
    PyObject *held = PyDict_GetItemWithError(seen, word); /* borrowed */
    if (held == NULL) return PyErr_Occurred() ? -1 : PyDict_SetItem(seen, word, index);
    if (held == index) return 0;
    if (PyList_CheckExact(held)) {
        Py_ssize_t n = PyList_GET_SIZE(held);
        return PyList_GET_ITEM(held, n - 1) == index ? 0 : PyList_Append(held, index);
    }
    PyObject *list = PyList_New(2);
    if (list == NULL) return -1;
    Py_INCREF(held);
    Py_INCREF(index);
    PyList_SET_ITEM(list, 0, held);
    PyList_SET_ITEM(list, 1, index);
    int failed = PyDict_SetItem(seen, word, list);
    Py_DECREF(list);
    return failed;
}

static int note_block(PyObject *seen, PyObject *records, Py_ssize_t i) {
    PyObject *fast = PySequence_Fast(records, "a block's records must be a sequence");
    if (fast == NULL) return -1;
    PyObject *index = PyLong_FromSsize_t(i);
    int failed = index == NULL;
    for (Py_ssize_t r = 0; !failed && r < PySequence_Fast_GET_SIZE(fast); r++) {
        PyObject *words = PySequence_Fast(PySequence_Fast_GET_ITEM(fast, r),
                                          "a record's keywords must be a sequence");
        if (words == NULL) {
            failed = 1;
            break;
        }
        for (Py_ssize_t w = 0; !failed && w < PySequence_Fast_GET_SIZE(words); w++)
            failed = note_keyword(seen, PySequence_Fast_GET_ITEM(words, w), index) < 0;
        Py_DECREF(words);
    }
    Py_XDECREF(index);
    Py_DECREF(fast);
    return failed ? -1 : 0;
}

/* The encoded postings of what `note_keyword` held; one-block postings are made once
 * per block and shared (`single`). */
static PyObject *postings_of(PyObject *held, PyObject **single, Numbers *scratch) {
    scratch->len = 0;
    if (PyLong_CheckExact(held)) {
        Py_ssize_t b = PyLong_AsSsize_t(held);
        if (single[b] == NULL) {
            if (add_number(scratch, (uint64_t)b) < 0) return NULL;
            single[b] = encoded(scratch);
            if (single[b] == NULL) return NULL;
        }
        Py_INCREF(single[b]);
        return single[b];
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(held); i++)
        if (add_number(scratch, (uint64_t)PyLong_AsSsize_t(PyList_GET_ITEM(held, i))) < 0)
            return NULL;
    return encoded(scratch);
}

static PyObject *keyword_postings(PyObject *Py_UNUSED(module), PyObject *arg) {
    PyObject *blocks = PySequence_Fast(arg, "blocks must be a sequence");
    if (blocks == NULL) return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(blocks);
    PyObject *seen = PyDict_New(), *out = NULL;
    PyObject **single = PyMem_Calloc((size_t)(count ? count : 1), sizeof(PyObject *));
    Numbers scratch = {NULL, 0, 0};
    if (seen == NULL || single == NULL) {
        if (single == NULL) PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < count; i++)
        if (note_block(seen, PySequence_Fast_GET_ITEM(blocks, i), i) < 0) goto done;
    out = PyList_New(PyDict_GET_SIZE(seen));
    if (out == NULL) goto done;
    Py_ssize_t pos = 0, k = 0;
    PyObject *word, *held;
    while (PyDict_Next(seen, &pos, &word, &held)) { /* insertion order: first seen */
        PyObject *raw = postings_of(held, single, &scratch);
        PyObject *pair = raw == NULL ? NULL : PyTuple_Pack(2, word, raw);
        Py_XDECREF(raw);
        if (pair == NULL) {
            Py_CLEAR(out);
            break;
        }
        PyList_SET_ITEM(out, k++, pair);
    }
done:
    if (single != NULL)
        for (Py_ssize_t i = 0; i < count; i++) Py_XDECREF(single[i]);
    PyMem_Free(single);
    PyMem_Free(scratch.at);
    Py_XDECREF(seen);
    Py_DECREF(blocks);
    return out;
}

static PyMethodDef methods[] = {
    {"bucket_entries", bucket_entries, METH_O,
     "bucket_entries(body) -> [(trapdoor, postings)]: a decrypted bucket's entries."},
    {"merge_postings", merge_postings, METH_VARARGS,
     "merge_postings(bodies, shifts) -> [(trapdoor, postings)]: every trapdoor of the "
     "bodies once, in first-seen order, its postings moved by its body's shift and united."},
    {"pack_buckets", pack_buckets, METH_VARARGS,
     "pack_buckets(entries, locators, count, min_value) -> [body]: the `count` bucket "
     "bodies, entry i in bucket (little-endian u64 of locators[16i:16i+8]) mod count."},
    {"keyword_postings", keyword_postings, METH_O,
     "keyword_postings(blocks) -> [(keyword, postings)]: blocks[i] holds the keyword "
     "sequences of block i's records; every keyword once, in first-seen order, with the "
     "encoded set of the block numbers (0..) it is in."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "query._buckets",
    "EDB bucket bodies and the compaction merge of postings (see query/_buckets.c).",
    -1,
    methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC PyInit__buckets(void) { return PyModule_Create(&module); }

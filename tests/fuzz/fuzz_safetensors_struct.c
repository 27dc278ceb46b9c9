/* libFuzzer target with a structure-aware mutator for safetensors files. The mutator
 * (LLVMFuzzerCustomMutator) decodes the input as an 8-byte header length, a JSON header and a
 * data buffer, changes one thing in the header's structure (a dtype, a shape dimension, a data
 * offset, a key, a value's type, the metadata, the padding, the declared length or the size of
 * the data buffer) and writes it back as valid JSON, so that the parser's checks on offsets,
 * shapes and dtypes are reached instead of its JSON errors. Inputs that do not decode are
 * mutated byte-wise by libFuzzer's own mutator. The target parses the file (lms_st_parse) and,
 * when it is accepted, checks what the parser promises: every tensor lies inside the data
 * buffer, its byte size matches its shape and dtype, and the tensors tile the buffer. */
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lms/alloc.h"
#include "lms/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int cmp_begin(const void *a, const void *b)
{
    const struct lms_st_entry *x = a, *y = b; /* zero-size tensors may share an offset */
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

static void check_accepted(struct lms_st_header *h, uint64_t file_size)
{
    uint64_t data_len = file_size - h->data_start;
    if (h->data_start > file_size)
        abort();
    for (size_t i = 0; i < h->n_entries; i++) {
        const struct lms_st_entry *e = &h->entries[i];
        uint64_t numel = 1;
        for (int k = 0; k < e->ndim; k++)
            numel *= (uint64_t)e->shape[k];
        unsigned bits = lms_dtype_bits(e->dtype);
        if (e->begin > e->end || e->end > data_len || (e->end - e->begin) * 8 != numel * bits) {
            fprintf(stderr, "accepted tensor '%s' violates its bounds or size\n", e->name);
            abort();
        }
    }
    qsort(h->entries, h->n_entries, sizeof(h->entries[0]), cmp_begin);
    uint64_t at = 0;
    for (size_t i = 0; i < h->n_entries; i++) {
        if (h->entries[i].begin != at) {
            fprintf(stderr, "accepted tensors leave a gap or overlap at %llu\n",
                    (unsigned long long)at);
            abort();
        }
        at = h->entries[i].end;
    }
    if (at != data_len) {
        fprintf(stderr, "accepted data buffer has bytes after the last tensor\n");
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct lms_error err;
    struct lms_st_header h = {0};
    if (lms_st_parse(data, size, size, &h, &err) == LMS_OK)
        check_accepted(&h, size);
    lms_st_header_release(&h);
    return 0;
}

#ifdef LMS_FUZZ_LIBFUZZER
size_t LLVMFuzzerMutate(uint8_t *data, size_t size, size_t max_size);
size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size, unsigned seed);

static unsigned next(unsigned *s)
{
    *s = *s * 1103515245u + 12345u;
    return (*s >> 8) & 0xffffff;
}

static const char *const dtypes[] = {"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8",
                                     "U8", "BOOL", "F8_E4M3", "F8_E5M2", "U16", "U32", "U64",
                                     "F4", "F6_E2M3", "E8M0", "F8_E8M0", "bf16", "", "F33"};

static json_t *interesting_int(unsigned *s)
{
    static const long long v[] = {0, 1, -1, 2, 3, 4, 7, 8, 255, 256, 4096, 65535, 1LL << 31,
                                  (1LL << 32) + 1, 1LL << 53, (1LL << 62), INT64_MAX, INT64_MIN};
    return json_integer(v[next(s) % (sizeof(v) / sizeof(v[0]))]);
}

static json_t *random_value(unsigned *s)
{
    switch (next(s) % 6) {
    case 0: return json_string("x");
    case 1: return json_real(1.5);
    case 2: return json_null();
    case 3: return json_true();
    case 4: return json_array();
    default: return interesting_int(s);
    }
}

/* Changes one element of an array of integers (shape or data_offsets). */
static void mutate_int_array(json_t *a, unsigned *s)
{
    size_t n = json_array_size(a);
    unsigned op = next(s) % 7;
    if (n == 0 || op == 0) {
        json_array_append_new(a, interesting_int(s));
        return;
    }
    size_t i = next(s) % n;
    json_t *v = json_array_get(a, i);
    long long x = json_integer_value(v);
    switch (op) {
    case 1: json_array_set_new(a, i, json_integer(x + 1)); break;
    case 2: json_array_set_new(a, i, json_integer(x - 1)); break;
    case 3: json_array_set_new(a, i, interesting_int(s)); break;
    case 4: json_array_remove(a, i); break;
    case 5: json_array_set_new(a, i, random_value(s)); break;
    default: json_array_set_new(a, i, json_integer(x * 2 + (long long)(next(s) % 9))); break;
    }
}

static void mutate_entry(json_t *root, const char *key, json_t *e, unsigned *s)
{
    if (!json_is_object(e)) {
        json_object_set_new(root, key, json_pack("{s:s,s:[i],s:[i,i]}", "dtype", "F32", "shape",
                                                 1, "data_offsets", 0, 4));
        return;
    }
    switch (next(s) % 9) {
    case 0:
    case 1:
        json_object_set_new(e, "dtype",
                            json_string(dtypes[next(s) % (sizeof(dtypes) / sizeof(dtypes[0]))]));
        break;
    case 2:
    case 3:
        if (json_is_array(json_object_get(e, "shape")))
            mutate_int_array(json_object_get(e, "shape"), s);
        else
            json_object_set_new(e, "shape", json_array());
        break;
    case 4:
    case 5:
        if (json_is_array(json_object_get(e, "data_offsets")))
            mutate_int_array(json_object_get(e, "data_offsets"), s);
        else
            json_object_set_new(e, "data_offsets", json_pack("[i,i]", 0, 0));
        break;
    case 6: {
        static const char *const fields[] = {"dtype", "shape", "data_offsets"};
        const char *f = fields[next(s) % 3];
        if (next(s) & 1)
            json_object_del(e, f);
        else
            json_object_set_new(e, f, random_value(s));
        break;
    }
    case 7: json_object_set_new(e, "extra", random_value(s)); break;
    default: { /* a copy of the entry under a new name: overlapping offsets */
        char name[32];
        snprintf(name, sizeof(name), "t%u", next(s) % 100);
        json_object_set_new(root, name, json_deep_copy(e));
        break;
    }
    }
}

static void mutate_header(json_t *root, unsigned *s)
{
    size_t n = json_object_size(root), pick = n ? next(s) % n : 0, i = 0;
    const char *key;
    json_t *val;
    unsigned op = next(s) % 10;
    json_object_foreach(root, key, val)
    {
        if (i++ != pick)
            continue;
        if (op == 0) {
            json_object_del(root, key);
        } else if (op == 1 || strcmp(key, "__metadata__") == 0) {
            json_t *md = json_object_get(root, "__metadata__");
            if (!json_is_object(md) || next(s) % 4 == 0)
                json_object_set_new(root, "__metadata__",
                                    next(s) & 1 ? json_pack("{s:s}", "format", "pt")
                                                : random_value(s));
            else
                json_object_set_new(md, next(s) & 1 ? "format" : "k", random_value(s));
        } else {
            mutate_entry(root, key, val, s);
        }
        return;
    }
    mutate_entry(root, "t", NULL, s); /* empty header: add a tensor */
}

size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size, unsigned seed)
{
    unsigned s = seed;
    uint64_t n = 0;
    if (size >= 8)
        memcpy(&n, data, 8);
    json_t *root = NULL;
    if (next(&s) % 8 != 0 && size >= 8 && n <= size - 8)
        root = json_loadb((const char *)data + 8, (size_t)n, JSON_DISABLE_EOF_CHECK, NULL);
    if (!json_is_object(root)) {
        json_decref(root);
        return LLVMFuzzerMutate(data, size, max_size);
    }
    size_t data_len = size - 8 - (size_t)n;
    mutate_header(root, &s);
    size_t tl = json_dumpb(root, NULL, 0, JSON_COMPACT), pad = 0;
    char *text = tl ? malloc(tl) : NULL;
    if (text && json_dumpb(root, text, tl, JSON_COMPACT) != tl) {
        free(text);
        text = NULL;
    }
    json_decref(root);
    if (!text)
        return LLVMFuzzerMutate(data, size, max_size);
    unsigned op = next(&s) % 8;
    if (op == 0)
        pad = next(&s) % 9; /* spaces after the JSON, as writers pad to 8 bytes */
    if (op == 1)
        data_len = data_len ? data_len - 1 - next(&s) % data_len : 0;
    if (op == 2)
        data_len += 1 + next(&s) % 64;
    uint64_t declared = tl + pad;
    if (op == 3)
        declared += (next(&s) & 1) ? 1 : (uint64_t)-1;
    if (8 + tl + pad + data_len > max_size) {
        free(text);
        return LLVMFuzzerMutate(data, size, max_size);
    }
    /* the old data buffer moves behind the new header (grown with a byte pattern) */
    uint8_t *old = malloc(size ? size : 1);
    if (!old) {
        free(text);
        return size;
    }
    memcpy(old, data, size);
    size_t old_data = 8 + (size_t)n, old_len = size - old_data;
    memcpy(data, &declared, 8);
    memcpy(data + 8, text, tl);
    memset(data + 8 + tl, ' ', pad);
    uint8_t *dst = data + 8 + tl + pad;
    for (size_t i = 0; i < data_len; i++)
        dst[i] = i < old_len ? old[old_data + i] : (uint8_t)i;
    free(old);
    free(text);
    return 8 + tl + pad + data_len;
}
#endif

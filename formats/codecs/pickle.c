/* Data-only pickle reader and protocol-2 writer (pickle.h).
 *
 * The reader is a stack machine over the protocol-2 opcodes torch writes (plus the few other
 * protocol 2-5 opcodes Python emits for plain data). It never executes anything: globals are
 * checked against a fixed allow-list and become symbolic nodes, calls become OBJ nodes. All
 * memory comes from an arena whose ceiling is a multiple of the input length. */
#include "formats/codecs/pickle.h"

#include <stdio.h>
#include <string.h>

#include "lms/alloc.h"
#include "lms/ir.h"

/* ---- arena ------------------------------------------------------------------------------- */

struct lms_pkl_block {
    struct lms_pkl_block *next;
    size_t used, cap; /* bytes of data[] */
    max_align_t data[];
};

enum { BLOCK_MIN = 64 * 1024 };

static void *arena_alloc(struct lms_pkl_doc *doc, size_t n)
{
    n = (n + sizeof(max_align_t) - 1) / sizeof(max_align_t) * sizeof(max_align_t);
    if (n > doc->limit || doc->used > doc->limit - n)
        return NULL;
    struct lms_pkl_block *b = doc->blocks;
    if (!b || b->cap - b->used < n) {
        size_t cap = n > BLOCK_MIN ? n : BLOCK_MIN;
        b = lms_malloc(sizeof(*b) + cap);
        if (!b)
            return NULL;
        b->used = 0;
        b->cap = cap;
        b->next = doc->blocks;
        doc->blocks = b;
    }
    void *p = (char *)b->data + b->used;
    b->used += n;
    doc->used += n;
    return p;
}

void lms_pkl_doc_release(struct lms_pkl_doc *doc)
{
    if (!doc)
        return;
    struct lms_pkl_block *b = doc->blocks;
    while (b) {
        struct lms_pkl_block *next = b->next;
        lms_free(b);
        b = next;
    }
    memset(doc, 0, sizeof(*doc));
}

/* ---- allow-list -------------------------------------------------------------------------- */

static const char *const allowed_globals[] = {
    /* DCP metadata and what other producers put beside it */
    "torch.distributed.checkpoint.metadata.Metadata",
    "torch.distributed.checkpoint.metadata.TensorStorageMetadata",
    "torch.distributed.checkpoint.metadata.ChunkStorageMetadata",
    "torch.distributed.checkpoint.metadata.BytesStorageMetadata",
    "torch.distributed.checkpoint.metadata.TensorProperties",
    "torch.distributed.checkpoint.metadata._MEM_FORMAT_ENCODING",
    "torch.distributed.checkpoint.metadata.MetadataIndex",
    "torch.distributed.checkpoint.metadata.StorageMeta",
    "torch.distributed.checkpoint.filesystem._StorageInfo",
    "torch.distributed.checkpoint.planner.SavePlan",
    "torch.distributed.checkpoint.planner.WriteItem",
    "torch.distributed.checkpoint.planner.WriteItemType",
    "torch.distributed.checkpoint.planner.TensorWriteData",
    "megatron.core.dist_checkpointing.strategies.torch.MCoreMetadata",
    "megatron.core.dist_checkpointing.strategies.torch.MCoreSavePlan",
    /* torch.save */
    "torch.Size",
    "torch.device",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_tensor_v3",
    "torch._utils._rebuild_parameter",
    "torch.serialization._get_layout",
    "torch.BFloat16Storage",
    "torch.HalfStorage",
    "torch.FloatStorage",
    "torch.DoubleStorage",
    "torch.LongStorage",
    "torch.IntStorage",
    "torch.ShortStorage",
    "torch.CharStorage",
    "torch.ByteStorage",
    "torch.BoolStorage",
    "torch.UntypedStorage",
    "torch.bfloat16",
    "torch.float16",
    "torch.float32",
    "torch.float64",
    "torch.int8",
    "torch.int16",
    "torch.int32",
    "torch.int64",
    "torch.uint8",
    "torch.bool",
    /* plain data */
    "collections.OrderedDict",
    "_codecs.encode",
    "_io.BytesIO",
    "io.BytesIO",
    "pathlib.PosixPath",
    "pathlib.PurePosixPath",
    "pathlib._local.PosixPath",
    "pathlib._local.PurePosixPath",
    "argparse.Namespace",
    /* enum members in Megatron-LM's saved args (symbols only; never called) */
    "megatron.core.transformer.enums.AttnBackend",
    "megatron.core.enums.ModelType",
};

bool lms_pkl_global_allowed(const char *module, const char *name)
{
    size_t ml = strlen(module);
    for (size_t i = 0; i < sizeof(allowed_globals) / sizeof(allowed_globals[0]); i++) {
        const char *a = allowed_globals[i];
        if (strncmp(a, module, ml) == 0 && a[ml] == '.' && strcmp(a + ml + 1, name) == 0)
            return true;
    }
    return false;
}

/* ---- machine ------------------------------------------------------------------------------ */

struct machine {
    struct lms_pkl_doc *doc;
    const unsigned char *p; /* input */
    size_t len, pos;
    size_t op_pos;          /* offset of the current opcode, for messages */
    int op;
    struct lms_pkl **stack; /* MARK entries are &mark_node; lms_malloc'd */
    size_t sp, stack_cap;
    struct lms_pkl **memo;  /* lms_malloc'd, n_memo entries (NULL = unset) */
    size_t n_memo;
    size_t memo_count;      /* distinct entries set: the index MEMOIZE uses */
    struct lms_error *err;
};

static struct lms_pkl mark_node; /* distinct address; never returned */
#define MARK (&mark_node)

static enum lms_status fail(struct machine *m, enum lms_status s, const char *what)
{
    return lms_error_set(m->err, s, "opcode 0x%02x at byte %zu: %s", m->op, m->op_pos, what);
}

static enum lms_status oom(struct machine *m)
{
    return fail(m, LMS_ENOMEM, "out of memory (pickle larger than its input allows)");
}

static struct lms_pkl *node(struct machine *m, enum lms_pkl_kind kind)
{
    struct lms_pkl *v = arena_alloc(m->doc, sizeof(*v));
    if (v) {
        memset(v, 0, sizeof(*v));
        v->kind = kind;
    }
    return v;
}

static enum lms_status push(struct machine *m, struct lms_pkl *v)
{
    if (!v)
        return oom(m);
    if (m->sp == m->stack_cap) {
        size_t cap = m->stack_cap ? m->stack_cap * 2 : 64;
        /* every push consumes at least one input byte, so the stack never exceeds len + 1 */
        if (cap > m->len + 64)
            cap = m->len + 64;
        if (cap <= m->sp)
            return fail(m, LMS_EFORMAT, "stack overflow");
        struct lms_pkl **s = lms_realloc(m->stack, cap * sizeof(*s));
        if (!s)
            return oom(m);
        m->stack = s;
        m->stack_cap = cap;
    }
    m->stack[m->sp++] = v;
    return LMS_OK;
}

static struct lms_pkl *pop(struct machine *m)
{
    if (m->sp == 0 || m->stack[m->sp - 1] == MARK)
        return NULL;
    return m->stack[--m->sp];
}

static struct lms_pkl *top(struct machine *m)
{
    if (m->sp == 0 || m->stack[m->sp - 1] == MARK)
        return NULL;
    return m->stack[m->sp - 1];
}

/* Index of the topmost MARK, or -1. */
static long find_mark(const struct machine *m)
{
    for (size_t i = m->sp; i > 0; i--)
        if (m->stack[i - 1] == MARK)
            return (long)(i - 1);
    return -1;
}

static bool need(struct machine *m, size_t n)
{
    return m->len - m->pos >= n;
}

static uint64_t rd_le(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static enum lms_status seq_append(struct machine *m, struct lms_pkl *seq, struct lms_pkl *item)
{
    if (seq->u.seq.n == seq->u.seq.cap) {
        size_t cap = seq->u.seq.cap ? seq->u.seq.cap * 2 : 4;
        struct lms_pkl **items = arena_alloc(m->doc, cap * sizeof(*items));
        if (!items)
            return oom(m);
        if (seq->u.seq.n)
            memcpy(items, seq->u.seq.items, seq->u.seq.n * sizeof(*items));
        seq->u.seq.items = items;
        seq->u.seq.cap = cap;
    }
    seq->u.seq.items[seq->u.seq.n++] = item;
    return LMS_OK;
}

static struct lms_pkl *make_str(struct machine *m, enum lms_pkl_kind kind, const void *s,
                                size_t n)
{
    struct lms_pkl *v = node(m, kind);
    char *d = v ? arena_alloc(m->doc, n + 1) : NULL;
    if (!d)
        return NULL;
    memcpy(d, s, n);
    d[n] = 0;
    v->u.s.data = d;
    v->u.s.len = n;
    return v;
}

/* Reads a length-prefixed string/bytes payload of an n_len-byte length. */
static enum lms_status op_string(struct machine *m, enum lms_pkl_kind kind, int n_len)
{
    if (!need(m, (size_t)n_len))
        return fail(m, LMS_EFORMAT, "truncated length");
    uint64_t n = rd_le(m->p + m->pos, n_len);
    m->pos += (size_t)n_len;
    if (n > m->len - m->pos)
        return fail(m, LMS_EFORMAT, "string length past the end of the data");
    struct lms_pkl *v = make_str(m, kind, m->p + m->pos, (size_t)n);
    m->pos += (size_t)n;
    return push(m, v);
}

static enum lms_status push_int(struct machine *m, int64_t i)
{
    struct lms_pkl *v = node(m, LMS_PKL_INT);
    if (v)
        v->u.i = i;
    return push(m, v);
}

/* LONG1/LONG4: little-endian two's complement of n bytes; must fit int64. */
static enum lms_status op_long(struct machine *m, int n_len)
{
    if (!need(m, (size_t)n_len))
        return fail(m, LMS_EFORMAT, "truncated length");
    uint64_t n = rd_le(m->p + m->pos, n_len);
    m->pos += (size_t)n_len;
    if (n_len == 4 && (n & 0x80000000u))
        return fail(m, LMS_EFORMAT, "negative LONG4 length");
    if (n > m->len - m->pos)
        return fail(m, LMS_EFORMAT, "integer past the end of the data");
    const unsigned char *b = m->p + m->pos;
    m->pos += (size_t)n;
    if (n == 0)
        return push_int(m, 0);
    /* drop redundant sign-extension bytes, then require at most 8 */
    size_t k = (size_t)n;
    bool neg = b[k - 1] & 0x80;
    while (k > 8 && b[k - 1] == (neg ? 0xff : 0x00) && ((b[k - 2] & 0x80) != 0) == neg)
        k--;
    if (k > 8)
        return fail(m, LMS_EUNSUPPORTED, "integer does not fit 64 bits");
    uint64_t u = rd_le(b, (int)k);
    if (neg && k < 8)
        u |= ~UINT64_C(0) << (8 * k);
    int64_t i;
    memcpy(&i, &u, sizeof(i));
    return push_int(m, i);
}

/* Pops the items above the topmost MARK (and the MARK) into items and n (pointer into the stack,
 * valid until the next push). */
static enum lms_status pop_mark(struct machine *m, struct lms_pkl ***items, size_t *n)
{
    long k = find_mark(m);
    if (k < 0)
        return fail(m, LMS_EFORMAT, "no MARK on the stack");
    *items = m->stack + k + 1;
    *n = m->sp - (size_t)k - 1;
    m->sp = (size_t)k;
    return LMS_OK;
}

static enum lms_status make_tuple(struct machine *m, struct lms_pkl **items, size_t n,
                                  struct lms_pkl **out)
{
    struct lms_pkl *t = node(m, LMS_PKL_TUPLE);
    if (!t)
        return oom(m);
    for (size_t i = 0; i < n; i++) {
        enum lms_status rc = seq_append(m, t, items[i]);
        if (rc)
            return rc;
    }
    *out = t;
    return LMS_OK;
}

static enum lms_status op_global(struct machine *m, const char *mod, size_t ml, const char *name,
                                 size_t nl)
{
    struct lms_pkl *mv = make_str(m, LMS_PKL_STR, mod, ml);
    struct lms_pkl *nv = mv ? make_str(m, LMS_PKL_STR, name, nl) : NULL;
    if (!nv)
        return oom(m);
    if (memchr(mod, 0, ml) || memchr(name, 0, nl) ||
        !lms_pkl_global_allowed(mv->u.s.data, nv->u.s.data)) {
        char what[300];
        snprintf(what, sizeof(what), "global '%.120s.%.120s' is not allowed", mv->u.s.data,
                 nv->u.s.data);
        return fail(m, LMS_EUNSUPPORTED, what);
    }
    struct lms_pkl *g = node(m, LMS_PKL_GLOBAL);
    if (!g)
        return oom(m);
    g->u.glob.module = mv->u.s.data;
    g->u.glob.name = nv->u.s.data;
    return push(m, g);
}

/* GLOBAL: "module\nname\n" in the stream. */
static enum lms_status op_global_text(struct machine *m)
{
    const char *s = (const char *)m->p + m->pos;
    size_t rest = m->len - m->pos;
    const char *nl1 = memchr(s, '\n', rest);
    if (!nl1)
        return fail(m, LMS_EFORMAT, "unterminated GLOBAL module");
    const char *nl2 = memchr(nl1 + 1, '\n', rest - (size_t)(nl1 + 1 - s));
    if (!nl2)
        return fail(m, LMS_EFORMAT, "unterminated GLOBAL name");
    m->pos += (size_t)(nl2 + 1 - s);
    return op_global(m, s, (size_t)(nl1 - s), nl1 + 1, (size_t)(nl2 - nl1 - 1));
}

/* REDUCE / NEWOBJ: callable + args tuple -> OBJ, with the two data-only folds. */
static enum lms_status op_call(struct machine *m, bool newobj)
{
    struct lms_pkl *args = pop(m), *cls = pop(m);
    if (!args || !cls)
        return fail(m, LMS_EFORMAT, "stack underflow");
    if (cls->kind != LMS_PKL_GLOBAL)
        return fail(m, LMS_EFORMAT, "call of a value that is not a global");
    if (args->kind != LMS_PKL_TUPLE)
        return fail(m, LMS_EFORMAT, "call arguments are not a tuple");
    if (lms_pkl_is_global(cls, "collections", "OrderedDict")) {
        if (args->u.seq.n != 0)
            return fail(m, LMS_EUNSUPPORTED, "OrderedDict with constructor arguments");
        return push(m, node(m, LMS_PKL_DICT));
    }
    if (lms_pkl_is_global(cls, "_codecs", "encode")) {
        struct lms_pkl *s = args->u.seq.n == 2 ? args->u.seq.items[0] : NULL;
        struct lms_pkl *enc = args->u.seq.n == 2 ? args->u.seq.items[1] : NULL;
        if (!s || s->kind != LMS_PKL_STR || !enc || enc->kind != LMS_PKL_STR ||
            strcmp(enc->u.s.data, "latin1") != 0)
            return fail(m, LMS_EUNSUPPORTED, "_codecs.encode other than (str, 'latin1')");
        /* UTF-8 text of code points < 256 -> one byte each */
        struct lms_pkl *b = make_str(m, LMS_PKL_BYTES, "", 0);
        char *d = b ? arena_alloc(m->doc, s->u.s.len + 1) : NULL;
        if (!d)
            return oom(m);
        size_t n = 0;
        const unsigned char *u = (const unsigned char *)s->u.s.data;
        for (size_t i = 0; i < s->u.s.len; i++) {
            if (u[i] < 0x80) {
                d[n++] = (char)u[i];
            } else if ((u[i] == 0xc2 || u[i] == 0xc3) && i + 1 < s->u.s.len &&
                       (u[i + 1] & 0xc0) == 0x80) {
                d[n++] = (char)(((u[i] & 0x03) << 6) | (u[i + 1] & 0x3f));
                i++;
            } else {
                return fail(m, LMS_EFORMAT, "latin1 text with a code point above 255");
            }
        }
        d[n] = 0;
        b->u.s.data = d;
        b->u.s.len = n;
        return push(m, b);
    }
    struct lms_pkl *o = node(m, LMS_PKL_OBJ);
    if (!o)
        return oom(m);
    o->u.obj.cls = cls;
    o->u.obj.args = args;
    o->u.obj.newobj = newobj;
    return push(m, o);
}

static enum lms_status op_build(struct machine *m)
{
    struct lms_pkl *state = pop(m), *obj = top(m);
    if (!state || !obj)
        return fail(m, LMS_EFORMAT, "stack underflow");
    if (obj->kind == LMS_PKL_DICT && state->kind == LMS_PKL_NONE)
        return LMS_OK; /* OrderedDict with no instance state */
    if (obj->kind != LMS_PKL_OBJ)
        return fail(m, LMS_EFORMAT, "BUILD on a value that is not an object");
    if (obj->u.obj.state)
        return fail(m, LMS_EUNSUPPORTED, "BUILD applied twice to one object");
    obj->u.obj.state = state;
    return LMS_OK;
}

static enum lms_status memo_put(struct machine *m, uint64_t idx)
{
    struct lms_pkl *v = top(m);
    if (!v)
        return fail(m, LMS_EFORMAT, "memoising an empty stack");
    /* Python numbers memo entries densely; each put costs an input byte, so a bound of the input
     * length keeps the table proportional to the data */
    if (idx > m->len + 64)
        return fail(m, LMS_EFORMAT, "memo index out of range");
    if (idx >= m->n_memo) {
        size_t n = (size_t)idx + 1 > m->n_memo * 2 ? (size_t)idx + 1 : m->n_memo * 2;
        struct lms_pkl **mm = lms_realloc(m->memo, n * sizeof(*mm));
        if (!mm)
            return oom(m);
        memset(mm + m->n_memo, 0, (n - m->n_memo) * sizeof(*mm));
        m->memo = mm;
        m->n_memo = n;
    }
    if (!m->memo[idx])
        m->memo_count++;
    m->memo[idx] = v;
    return LMS_OK;
}

static enum lms_status memo_get(struct machine *m, uint64_t idx)
{
    if (idx >= m->n_memo || !m->memo[idx])
        return fail(m, LMS_EFORMAT, "memo entry not set");
    return push(m, m->memo[idx]);
}

static enum lms_status op_setitems(struct machine *m, bool multi)
{
    struct lms_pkl **items = NULL;
    size_t n = 0;
    struct lms_pkl *kv[2];
    if (multi) {
        enum lms_status rc = pop_mark(m, &items, &n);
        if (rc)
            return rc;
        if (n % 2)
            return fail(m, LMS_EFORMAT, "odd number of items for SETITEMS");
    } else {
        kv[1] = pop(m);
        kv[0] = pop(m);
        if (!kv[0] || !kv[1])
            return fail(m, LMS_EFORMAT, "stack underflow");
        items = kv;
        n = 2;
    }
    struct lms_pkl *d = top(m);
    if (!d || d->kind != LMS_PKL_DICT)
        return fail(m, LMS_EFORMAT, "SETITEM on a value that is not a dict");
    for (size_t i = 0; i < n; i++) {
        enum lms_status rc = seq_append(m, d, items[i]);
        if (rc)
            return rc;
    }
    return LMS_OK;
}

static enum lms_status op_appends(struct machine *m, bool multi)
{
    struct lms_pkl **items = NULL;
    size_t n = 0;
    struct lms_pkl *one;
    if (multi) {
        enum lms_status rc = pop_mark(m, &items, &n);
        if (rc)
            return rc;
    } else {
        one = pop(m);
        if (!one)
            return fail(m, LMS_EFORMAT, "stack underflow");
        items = &one;
        n = 1;
    }
    struct lms_pkl *l = top(m);
    if (!l || l->kind != LMS_PKL_LIST)
        return fail(m, LMS_EFORMAT, "APPEND on a value that is not a list");
    for (size_t i = 0; i < n; i++) {
        enum lms_status rc = seq_append(m, l, items[i]);
        if (rc)
            return rc;
    }
    return LMS_OK;
}

static enum lms_status step(struct machine *m, bool *stop)
{
    struct lms_pkl **items = NULL;
    size_t n = 0;
    struct lms_pkl *v, *t;
    enum lms_status rc;
    m->op_pos = m->pos;
    m->op = m->p[m->pos++];
    switch (m->op) {
    case 0x80: /* PROTO */
        if (!need(m, 1))
            return fail(m, LMS_EFORMAT, "truncated PROTO");
        if (m->p[m->pos] < 2 || m->p[m->pos] > 5)
            return fail(m, LMS_EUNSUPPORTED, "protocol outside 2..5");
        m->pos++;
        return LMS_OK;
    case 0x95: /* FRAME: a length hint; the framed opcodes follow inline */
        if (!need(m, 8))
            return fail(m, LMS_EFORMAT, "truncated FRAME");
        if (rd_le(m->p + m->pos, 8) > m->len - m->pos - 8)
            return fail(m, LMS_EFORMAT, "FRAME past the end of the data");
        m->pos += 8;
        return LMS_OK;
    case '.': /* STOP */
        v = pop(m);
        if (!v)
            return fail(m, LMS_EFORMAT, "STOP with an empty stack");
        m->doc->root = v;
        *stop = true;
        return LMS_OK;
    case '(': /* MARK */
        return push(m, MARK);
    case '0': /* POP */
        if (m->sp == 0)
            return fail(m, LMS_EFORMAT, "stack underflow");
        m->sp--;
        return LMS_OK;
    case '1': /* POP_MARK */
        return pop_mark(m, &items, &n);
    case '2': /* DUP */
        v = top(m);
        if (!v)
            return fail(m, LMS_EFORMAT, "stack underflow");
        return push(m, v);
    case 'X': return op_string(m, LMS_PKL_STR, 4);      /* BINUNICODE */
    case 0x8c: return op_string(m, LMS_PKL_STR, 1);     /* SHORT_BINUNICODE */
    case 0x8d: return op_string(m, LMS_PKL_STR, 8);     /* BINUNICODE8 */
    case 'B': return op_string(m, LMS_PKL_BYTES, 4);    /* BINBYTES */
    case 'C': return op_string(m, LMS_PKL_BYTES, 1);    /* SHORT_BINBYTES */
    case 0x8e: return op_string(m, LMS_PKL_BYTES, 8);   /* BINBYTES8 */
    case 0x96: return op_string(m, LMS_PKL_BYTES, 8);   /* BYTEARRAY8 */
    case 'J': /* BININT */
        if (!need(m, 4))
            return fail(m, LMS_EFORMAT, "truncated BININT");
        {
            uint32_t u = (uint32_t)rd_le(m->p + m->pos, 4);
            int32_t i;
            memcpy(&i, &u, 4);
            m->pos += 4;
            return push_int(m, i);
        }
    case 'K': /* BININT1 */
        if (!need(m, 1))
            return fail(m, LMS_EFORMAT, "truncated BININT1");
        return push_int(m, m->p[m->pos++]);
    case 'M': /* BININT2 */
        if (!need(m, 2))
            return fail(m, LMS_EFORMAT, "truncated BININT2");
        m->pos += 2;
        return push_int(m, (int64_t)rd_le(m->p + m->pos - 2, 2));
    case 0x8a: return op_long(m, 1);
    case 0x8b: return op_long(m, 4);
    case 'G': /* BINFLOAT, big-endian */
        if (!need(m, 8))
            return fail(m, LMS_EFORMAT, "truncated BINFLOAT");
        {
            uint64_t u = 0;
            for (int i = 0; i < 8; i++)
                u = u << 8 | m->p[m->pos + (size_t)i];
            m->pos += 8;
            v = node(m, LMS_PKL_FLOAT);
            if (v)
                memcpy(&v->u.f, &u, 8);
            return push(m, v);
        }
    case 'N': return push(m, node(m, LMS_PKL_NONE));
    case 0x88:
    case 0x89:
        v = node(m, LMS_PKL_BOOL);
        if (v)
            v->u.b = m->op == 0x88;
        return push(m, v);
    case ')': return push(m, node(m, LMS_PKL_TUPLE));
    case 't':
        rc = pop_mark(m, &items, &n);
        if (!rc)
            rc = make_tuple(m, items, n, &t);
        return rc ? rc : push(m, t);
    case 0x85:
    case 0x86:
    case 0x87: {
        size_t k = (size_t)(m->op - 0x84);
        if (m->sp < k)
            return fail(m, LMS_EFORMAT, "stack underflow");
        for (size_t i = 0; i < k; i++)
            if (m->stack[m->sp - 1 - i] == MARK)
                return fail(m, LMS_EFORMAT, "MARK inside a TUPLEn");
        m->sp -= k;
        rc = make_tuple(m, m->stack + m->sp, k, &t);
        return rc ? rc : push(m, t);
    }
    case ']': return push(m, node(m, LMS_PKL_LIST));
    case '}': return push(m, node(m, LMS_PKL_DICT));
    case 'a': return op_appends(m, false);
    case 'e': return op_appends(m, true);
    case 's': return op_setitems(m, false);
    case 'u': return op_setitems(m, true);
    case 'c': return op_global_text(m);
    case 0x93: { /* STACK_GLOBAL */
        struct lms_pkl *name = pop(m), *mod = pop(m);
        if (!name || !mod || name->kind != LMS_PKL_STR || mod->kind != LMS_PKL_STR)
            return fail(m, LMS_EFORMAT, "STACK_GLOBAL needs two strings");
        return op_global(m, mod->u.s.data, mod->u.s.len, name->u.s.data, name->u.s.len);
    }
    case 'R': return op_call(m, false);
    case 0x81: return op_call(m, true);
    case 0x92: { /* NEWOBJ_EX: cls, args, kwargs; only empty kwargs */
        struct lms_pkl *kw = pop(m);
        if (!kw || kw->kind != LMS_PKL_DICT || kw->u.seq.n != 0)
            return fail(m, LMS_EUNSUPPORTED, "NEWOBJ_EX with keyword arguments");
        return op_call(m, true);
    }
    case 'b': return op_build(m);
    case 'q':
        if (!need(m, 1))
            return fail(m, LMS_EFORMAT, "truncated BINPUT");
        return memo_put(m, m->p[m->pos++]);
    case 'r':
        if (!need(m, 4))
            return fail(m, LMS_EFORMAT, "truncated LONG_BINPUT");
        m->pos += 4;
        return memo_put(m, rd_le(m->p + m->pos - 4, 4));
    case 0x94: /* MEMOIZE */
        return memo_put(m, m->memo_count);
    case 'h':
        if (!need(m, 1))
            return fail(m, LMS_EFORMAT, "truncated BINGET");
        return memo_get(m, m->p[m->pos++]);
    case 'j':
        if (!need(m, 4))
            return fail(m, LMS_EFORMAT, "truncated LONG_BINGET");
        m->pos += 4;
        return memo_get(m, rd_le(m->p + m->pos - 4, 4));
    case 'Q': /* BINPERSID */
        v = pop(m);
        if (!v)
            return fail(m, LMS_EFORMAT, "stack underflow");
        t = node(m, LMS_PKL_PERSID);
        if (t)
            t->u.persid.pid = v;
        return push(m, t);
    default:
        return fail(m, LMS_EUNSUPPORTED, "opcode not supported by the data-only reader");
    }
}

enum lms_status lms_pkl_parse(const void *src, size_t src_len, struct lms_pkl_doc *doc,
                              struct lms_error *err)
{
    memset(doc, 0, sizeof(*doc));
    /* every opcode byte creates at most a node, a string copy and a doubling of one container */
    doc->limit = src_len > (SIZE_MAX - (1u << 20)) / 16 ? SIZE_MAX : 16 * src_len + (1u << 20);
    struct machine m = {.doc = doc, .p = src, .len = src_len, .err = err};
    bool stop = false;
    enum lms_status rc = LMS_OK;
    while (!stop) {
        if (m.pos >= m.len) {
            m.op = 0;
            m.op_pos = m.pos;
            rc = lms_error_set(err, LMS_EFORMAT, "byte %zu: pickle ends without STOP", m.pos);
            break;
        }
        rc = step(&m, &stop);
        if (rc)
            break;
    }
    lms_free(m.stack);
    lms_free(m.memo);
    if (rc)
        doc->root = NULL;
    return rc;
}

/* ---- helpers ------------------------------------------------------------------------------ */

bool lms_pkl_is_global(const struct lms_pkl *v, const char *module, const char *name)
{
    return v && v->kind == LMS_PKL_GLOBAL && strcmp(v->u.glob.module, module) == 0 &&
           strcmp(v->u.glob.name, name) == 0;
}

bool lms_pkl_is_obj(const struct lms_pkl *v, const char *module, const char *name)
{
    return v && v->kind == LMS_PKL_OBJ && lms_pkl_is_global(v->u.obj.cls, module, name);
}

const struct lms_pkl *lms_pkl_dict_get(const struct lms_pkl *d, const char *key)
{
    if (!d || d->kind != LMS_PKL_DICT)
        return NULL;
    size_t kl = strlen(key);
    /* the last assignment wins, as in Python */
    for (size_t i = d->u.seq.n; i >= 2; i -= 2) {
        const struct lms_pkl *k = d->u.seq.items[i - 2];
        if (k->kind == LMS_PKL_STR && k->u.s.len == kl && memcmp(k->u.s.data, key, kl) == 0)
            return d->u.seq.items[i - 1];
    }
    return NULL;
}

int lms_pkl_int_tuple(const struct lms_pkl *v, int64_t *dst, int dst_cap)
{
    if (lms_pkl_is_obj(v, "torch", "Size")) {
        const struct lms_pkl *a = v->u.obj.args;
        if (a->u.seq.n != 1)
            return -1;
        v = a->u.seq.items[0];
    }
    if (!v || (v->kind != LMS_PKL_TUPLE && v->kind != LMS_PKL_LIST))
        return -1;
    if (v->u.seq.n > (size_t)dst_cap)
        return -1;
    for (size_t i = 0; i < v->u.seq.n; i++) {
        if (v->u.seq.items[i]->kind != LMS_PKL_INT)
            return -1;
        dst[i] = v->u.seq.items[i]->u.i;
    }
    return (int)v->u.seq.n;
}

/* torch dtype name, storage class and our dtype. */
static const struct {
    const char *dtype, *storage;
    enum lms_dtype dt;
} torch_types[] = {
    {"bfloat16", "BFloat16Storage", LMS_DTYPE_BF16}, {"float16", "HalfStorage", LMS_DTYPE_F16},
    {"float32", "FloatStorage", LMS_DTYPE_F32},      {"float64", "DoubleStorage", LMS_DTYPE_F64},
    {"int64", "LongStorage", LMS_DTYPE_I64},         {"int32", "IntStorage", LMS_DTYPE_I32},
    {"int16", "ShortStorage", LMS_DTYPE_I16},        {"int8", "CharStorage", LMS_DTYPE_I8},
    {"uint8", "ByteStorage", LMS_DTYPE_U8},          {"bool", "BoolStorage", LMS_DTYPE_BOOL},
};
#define N_TORCH_TYPES (sizeof(torch_types) / sizeof(torch_types[0]))

bool lms_pkl_torch_dtype(const struct lms_pkl *v, enum lms_dtype *out)
{
    for (size_t i = 0; i < N_TORCH_TYPES; i++)
        if (lms_pkl_is_global(v, "torch", torch_types[i].dtype)) {
            *out = torch_types[i].dt;
            return true;
        }
    return false;
}

bool lms_pkl_storage_dtype(const struct lms_pkl *v, enum lms_dtype *out)
{
    for (size_t i = 0; i < N_TORCH_TYPES; i++)
        if (lms_pkl_is_global(v, "torch", torch_types[i].storage)) {
            *out = torch_types[i].dt;
            return true;
        }
    return false;
}

/* ---- writer ------------------------------------------------------------------------------- */

void lms_pkl_w_init(struct lms_pkl_writer *w)
{
    memset(w, 0, sizeof(*w));
}

void lms_pkl_w_release(struct lms_pkl_writer *w)
{
    lms_free(w->data);
    memset(w, 0, sizeof(*w));
}

static void w_bytes(struct lms_pkl_writer *w, const void *src, size_t src_len)
{
    if (w->oom)
        return;
    if (w->cap - w->len < src_len) {
        size_t cap = w->cap ? w->cap : 256;
        while (cap - w->len < src_len)
            cap *= 2;
        unsigned char *d = lms_realloc(w->data, cap);
        if (!d) {
            w->oom = true;
            return;
        }
        w->data = d;
        w->cap = cap;
    }
    memcpy(w->data + w->len, src, src_len);
    w->len += src_len;
}

static void w_le(struct lms_pkl_writer *w, uint64_t v, int n)
{
    unsigned char b[8];
    for (int i = 0; i < n; i++)
        b[i] = (unsigned char)(v >> (8 * i));
    w_bytes(w, b, (size_t)n);
}

void lms_pkl_w_op(struct lms_pkl_writer *w, int op)
{
    unsigned char c = (unsigned char)op;
    w_bytes(w, &c, 1);
}

void lms_pkl_w_proto2(struct lms_pkl_writer *w)
{
    w_bytes(w, "\x80\x02", 2);
}

void lms_pkl_w_global(struct lms_pkl_writer *w, const char *module, const char *name)
{
    lms_pkl_w_op(w, 'c');
    w_bytes(w, module, strlen(module));
    w_bytes(w, "\n", 1);
    w_bytes(w, name, strlen(name));
    w_bytes(w, "\n", 1);
}

void lms_pkl_w_int(struct lms_pkl_writer *w, int64_t v)
{
    if (v >= 0 && v <= 0xff) {
        lms_pkl_w_op(w, 'K');
        w_le(w, (uint64_t)v, 1);
    } else if (v >= 0 && v <= 0xffff) {
        lms_pkl_w_op(w, 'M');
        w_le(w, (uint64_t)v, 2);
    } else if (v >= INT32_MIN && v <= INT32_MAX) {
        lms_pkl_w_op(w, 'J');
        w_le(w, (uint64_t)v, 4);
    } else {
        /* LONG1: minimal two's complement, as Python's encode_long */
        uint64_t u = (uint64_t)v;
        int n = 8;
        while (n > 1) {
            unsigned char hi = (unsigned char)(u >> (8 * (n - 1)));
            unsigned char next = (unsigned char)(u >> (8 * (n - 2)));
            if ((hi == 0x00 && !(next & 0x80)) || (hi == 0xff && (next & 0x80)))
                n--;
            else
                break;
        }
        lms_pkl_w_op(w, 0x8a);
        w_le(w, (uint64_t)n, 1);
        w_le(w, u, n);
    }
}

void lms_pkl_w_str(struct lms_pkl_writer *w, const char *s)
{
    size_t n = strlen(s);
    lms_pkl_w_op(w, 'X');
    w_le(w, n, 4);
    w_bytes(w, s, n);
}

void lms_pkl_w_bool(struct lms_pkl_writer *w, bool v)
{
    lms_pkl_w_op(w, v ? 0x88 : 0x89);
}

void lms_pkl_w_none(struct lms_pkl_writer *w)
{
    lms_pkl_w_op(w, 'N');
}

void lms_pkl_w_float(struct lms_pkl_writer *w, double v)
{
    uint64_t u;
    memcpy(&u, &v, 8);
    unsigned char b[8];
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)(u >> (8 * (7 - i)));
    lms_pkl_w_op(w, 'G');
    w_bytes(w, b, 8);
}

void lms_pkl_w_size(struct lms_pkl_writer *w, int ndim, const int64_t *shape)
{
    lms_pkl_w_global(w, "torch", "Size");
    lms_pkl_w_op(w, LMS_PKL_OP_MARK);
    for (int i = 0; i < ndim; i++)
        lms_pkl_w_int(w, shape[i]);
    lms_pkl_w_op(w, LMS_PKL_OP_TUPLE);
    lms_pkl_w_op(w, LMS_PKL_OP_TUPLE1);
    lms_pkl_w_op(w, LMS_PKL_OP_REDUCE);
}

bool lms_pkl_w_dtype(struct lms_pkl_writer *w, enum lms_dtype dt)
{
    for (size_t i = 0; i < N_TORCH_TYPES; i++)
        if (torch_types[i].dt == dt) {
            lms_pkl_w_global(w, "torch", torch_types[i].dtype);
            return true;
        }
    return false;
}

bool lms_pkl_w_tensor(struct lms_pkl_writer *w, enum lms_dtype dt, const char *key, int ndim,
                      const int64_t *shape)
{
    const char *storage = NULL;
    for (size_t i = 0; i < N_TORCH_TYPES; i++)
        if (torch_types[i].dt == dt)
            storage = torch_types[i].storage;
    if (!storage)
        return false;
    int64_t numel = 1, stride[LMS_MAX_DIMS];
    for (int i = ndim - 1; i >= 0; i--) {
        stride[i] = numel;
        numel *= shape[i];
    }
    lms_pkl_w_global(w, "torch._utils", "_rebuild_tensor_v2");
    lms_pkl_w_op(w, LMS_PKL_OP_MARK);
    lms_pkl_w_op(w, LMS_PKL_OP_MARK);
    lms_pkl_w_str(w, "storage");
    lms_pkl_w_global(w, "torch", storage);
    lms_pkl_w_str(w, key);
    lms_pkl_w_str(w, "cpu");
    lms_pkl_w_int(w, numel);
    lms_pkl_w_op(w, LMS_PKL_OP_TUPLE);
    lms_pkl_w_op(w, LMS_PKL_OP_BINPERSID);
    lms_pkl_w_int(w, 0);
    lms_pkl_w_op(w, LMS_PKL_OP_MARK);
    for (int i = 0; i < ndim; i++)
        lms_pkl_w_int(w, shape[i]);
    lms_pkl_w_op(w, LMS_PKL_OP_TUPLE);
    lms_pkl_w_op(w, LMS_PKL_OP_MARK);
    for (int i = 0; i < ndim; i++)
        lms_pkl_w_int(w, stride[i]);
    lms_pkl_w_op(w, LMS_PKL_OP_TUPLE);
    lms_pkl_w_bool(w, false);
    lms_pkl_w_global(w, "collections", "OrderedDict");
    lms_pkl_w_op(w, LMS_PKL_OP_EMPTY_TUPLE);
    lms_pkl_w_op(w, LMS_PKL_OP_REDUCE);
    lms_pkl_w_op(w, LMS_PKL_OP_TUPLE);
    lms_pkl_w_op(w, LMS_PKL_OP_REDUCE);
    return true;
}

enum lms_status lms_pkl_w_finish(struct lms_pkl_writer *w, struct lms_error *err)
{
    lms_pkl_w_op(w, LMS_PKL_OP_STOP);
    if (w->oom)
        return lms_error_set(err, LMS_ENOMEM, "out of memory building a pickle");
    return LMS_OK;
}

/* lmsurgeon: a data-only pickle reader and a small pickle writer, for torch DCP .metadata files,
 * torch.save data.pkl records and Megatron common.pt dicts.
 *
 * The reader is a subset of Python's pickle machine for protocols 2-5 that builds a tree of
 * values and never calls or imports anything. GLOBAL / STACK_GLOBAL may only name symbols on a
 * fixed allow-list (torch DCP metadata classes, torch.Size, dtypes, storage classes, layout and
 * memory-format helpers, tensor-rebuild functions, collections.OrderedDict, io.BytesIO, pathlib
 * paths, argparse.Namespace); anything else fails with LMS_EUNSUPPORTED naming the global.
 * REDUCE and NEWOBJ produce symbolic "instance of (module, name) with args" nodes; BUILD attaches
 * the state. Two calls are folded while parsing because they are pure data: OrderedDict() yields
 * an ordinary dict node (so SETITEMS can fill it) and _codecs.encode(str, 'latin1') - how
 * protocol 2 spells bytes - yields a bytes node.
 *
 * All nodes live in an arena owned by the document; the memo shares nodes, so the result is a
 * DAG (and may be cyclic: walk it with a depth limit). Every allocation is bounded by a multiple
 * of the input length, so hostile input cannot exhaust memory.
 *
 * The writer appends opcodes to a growable buffer (protocol 2, no memo, the opcode patterns
 * torch itself emits for these objects), which stock torch >= 2.6 accepts under weights_only. */
#ifndef LMS_PICKLE_H
#define LMS_PICKLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lms/dtype.h"
#include "lms/error.h"

enum lms_pkl_kind {
    LMS_PKL_NONE,
    LMS_PKL_BOOL,
    LMS_PKL_INT,    /* fits int64 (larger integers are rejected) */
    LMS_PKL_FLOAT,
    LMS_PKL_STR,    /* UTF-8 bytes as stored, NUL-terminated */
    LMS_PKL_BYTES,
    LMS_PKL_TUPLE,
    LMS_PKL_LIST,
    LMS_PKL_DICT,   /* items are key, value, key, value, ... (n = 2 * pairs) */
    LMS_PKL_GLOBAL, /* an allow-listed symbol */
    LMS_PKL_OBJ,    /* result of REDUCE / NEWOBJ, plus BUILD state */
    LMS_PKL_PERSID, /* BINPERSID: a persistent id (torch: the storage tuple) */
};

struct lms_pkl {
    enum lms_pkl_kind kind;
    union {
        bool b;
        int64_t i;
        double f;
        struct {
            const char *data; /* NUL-terminated, arena-owned */
            size_t len;       /* bytes, without the NUL */
        } s;                  /* STR, BYTES */
        struct {
            struct lms_pkl **items; /* arena-owned */
            size_t n;
            size_t cap;
        } seq;                /* TUPLE, LIST, DICT */
        struct {
            const char *module; /* "torch" */
            const char *name;   /* "Size" */
        } glob;
        struct {
            struct lms_pkl *cls;   /* the callable: a GLOBAL node */
            struct lms_pkl *args;  /* TUPLE */
            struct lms_pkl *state; /* BUILD argument, NULL when none */
            bool newobj;           /* created by NEWOBJ (cls.__new__) rather than REDUCE */
        } obj;
        struct {
            struct lms_pkl *pid;
        } persid;
    } u;
};

struct lms_pkl_block;

struct lms_pkl_doc {
    struct lms_pkl *root;          /* the value STOP returned */
    struct lms_pkl_block *blocks;  /* arena; private */
    size_t used;                   /* bytes allocated from the arena */
    size_t limit;                  /* arena ceiling in bytes */
};

/* Parses the pickle src[0..src_len). Errors name the opcode and its byte offset
 * ("opcode 0x63 at byte 12: global 'os.system' is not allowed"). OUT: doc (release it, also on
 * failure). */
enum lms_status lms_pkl_parse(const void *src, size_t src_len, struct lms_pkl_doc *doc,
                              struct lms_error *err);
void lms_pkl_doc_release(struct lms_pkl_doc *doc);

/* True when module.name is on the reader's allow-list. */
bool lms_pkl_global_allowed(const char *module, const char *name);

/* Helpers over parsed values (all tolerate NULL and return NULL/false on a type mismatch). */
bool lms_pkl_is_global(const struct lms_pkl *v, const char *module, const char *name);
/* True when v is an OBJ whose class is module.name. */
bool lms_pkl_is_obj(const struct lms_pkl *v, const char *module, const char *name);
/* Value of key (a STR) in a DICT. */
const struct lms_pkl *lms_pkl_dict_get(const struct lms_pkl *d, const char *key);
/* The elements of a torch.Size(...) object or of a plain tuple of ints, into dst (up to dst_cap).
 * Returns the count, or -1 when v is not such a value or has more than dst_cap elements. */
int lms_pkl_int_tuple(const struct lms_pkl *v, int64_t *dst, int dst_cap);
/* Maps a dtype global (torch.bfloat16) or a storage class (torch.BFloat16Storage). */
bool lms_pkl_torch_dtype(const struct lms_pkl *v, enum lms_dtype *out);
bool lms_pkl_storage_dtype(const struct lms_pkl *v, enum lms_dtype *out);

/* ---- writer ---------------------------------------------------------------------------- */

struct lms_pkl_writer {
    unsigned char *data; /* lms_malloc'd; may move while writing */
    size_t len;
    size_t cap;
    bool oom;            /* sticky: an append failed; checked by lms_pkl_w_finish */
};

/* Opcode bytes used by the writer (Python's pickle module names). */
enum {
    LMS_PKL_OP_MARK = '(',
    LMS_PKL_OP_STOP = '.',
    LMS_PKL_OP_EMPTY_TUPLE = ')',
    LMS_PKL_OP_TUPLE = 't',
    LMS_PKL_OP_TUPLE1 = 0x85,
    LMS_PKL_OP_EMPTY_LIST = ']',
    LMS_PKL_OP_APPEND = 'a',
    LMS_PKL_OP_APPENDS = 'e',
    LMS_PKL_OP_EMPTY_DICT = '}',
    LMS_PKL_OP_SETITEM = 's',
    LMS_PKL_OP_SETITEMS = 'u',
    LMS_PKL_OP_REDUCE = 'R',
    LMS_PKL_OP_NEWOBJ = 0x81,
    LMS_PKL_OP_BUILD = 'b',
    LMS_PKL_OP_BINPERSID = 'Q',
};

void lms_pkl_w_init(struct lms_pkl_writer *w);
void lms_pkl_w_release(struct lms_pkl_writer *w);
void lms_pkl_w_op(struct lms_pkl_writer *w, int op);
void lms_pkl_w_proto2(struct lms_pkl_writer *w);
void lms_pkl_w_global(struct lms_pkl_writer *w, const char *module, const char *name);
void lms_pkl_w_int(struct lms_pkl_writer *w, int64_t v);
void lms_pkl_w_str(struct lms_pkl_writer *w, const char *s);
void lms_pkl_w_bool(struct lms_pkl_writer *w, bool v);
void lms_pkl_w_none(struct lms_pkl_writer *w);
void lms_pkl_w_float(struct lms_pkl_writer *w, double v);
/* torch.Size((shape...)) */
void lms_pkl_w_size(struct lms_pkl_writer *w, int ndim, const int64_t *shape);
/* A torch dtype global (torch.bfloat16); false when torch has no name for dt. */
bool lms_pkl_w_dtype(struct lms_pkl_writer *w, enum lms_dtype dt);
/* The torch._utils._rebuild_tensor_v2 call for a contiguous tensor in storage record "key" (without
 * PROTO/STOP); false when dt has no torch storage class. */
bool lms_pkl_w_tensor(struct lms_pkl_writer *w, enum lms_dtype dt, const char *key, int ndim,
                      const int64_t *shape);
/* Appends STOP and checks the sticky error. */
enum lms_status lms_pkl_w_finish(struct lms_pkl_writer *w, struct lms_error *err);

#endif

/* Legacy NeMo 1.x ".nemo" tarballs, the "nemo1" format.
 *
 *   ./model_config.yaml           OmegaConf YAML of the MegatronGPTModel config (top-level keys)
 *   ./model_weights/              an mcore torch_dist checkpoint, keys prefixed "model.", or
 *   ./model_weights.ckpt          one torch.save state dict, keys "model.decoder.layers.N...."
 *                                 (or pre-mcore "model.language_model.encoder.layers.N....")
 *   ./hf_config.json              this tool's own artifact: the HF config.json, for exact round trips
 *   ./nemo_tokenizer/             the HF tokenizer files (this tool; NeMo 1 files may keep them at
 *                                 the root or in tokenizer/, which are searched too)
 *
 * Reading never loads tensor bytes. The archive is listed with libarchive (every tar dialect:
 * ustar, pax, GNU long names and base-256 sizes). An uncompressed tar stores each member
 * contiguously at a 512-byte aligned offset, so the whole tarball is mapped once and every tensor
 * becomes a view over the mapping, exactly as for a checkpoint directory; each member offset
 * libarchive reports is cross-checked against the ustar header block that precedes the data.
 * A compressed (gzip, pre-NeMo 1.7) tarball is instead extracted by streaming into a temporary
 * directory under $TMPDIR, which lives as long as the model (lms_scratch) and is then removed.
 * Only the tokenizer files are copied out of an uncompressed tarball (into such a directory).
 * Tensor- or pipeline-parallel NeMo 1 files (mp_rank_XX/, tp_rank_XX_pp_rank_YYY/) are refused.
 *
 * Writing produces the model_weights/ (torch_dist) variant, the one NeMo 1.23+ with mcore writes,
 * as a plain ustar archive written in one pass: the data file is streamed directly into its member
 * (its header is patched once the length is known), then the small files follow. The tarball is
 * written to a temporary file beside the destination and renamed into place when complete. */
#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "formats/codecs/dcp.h"
#include "formats/codecs/torch_save.h"
#include "lms/alloc.h"
#include "lms/format.h"
#include "lms/hf.h"
#include "lms/json.h"
#include "lms/nemo.h"
#include "lms/outdir.h"
#include "lms/scratch.h"

#include "formats/layouts/nemo_impl.h"

#define TAR_BLOCK 512
#define TAR_RECORD 10240                /* 20 blocks: what GNU tar and Python pad archives to */
#define SMALL_MAX (64u << 20)           /* ceiling for YAML/JSON members */
#define OCTAL_SIZE_MAX UINT64_C(077777777777) /* largest size an 11-digit octal field holds */

static const char *const tokenizer_dirs[] = {"nemo_tokenizer/", "tokenizer/", ""};

/* ---- listing and mapping the archive ------------------------------------------------------- */

struct tarball {
    const char *path;
    struct lms_storage *map;        /* the mapped tar when uncompressed, else NULL */
    struct lms_scratch *extracted;  /* compressed: where the members were extracted, else NULL */
    struct lms_dcp_member *members; /* regular members (uncompressed only); names owned */
    size_t n_members;
};

static void tarball_release(struct tarball *tb)
{
    for (size_t i = 0; i < tb->n_members; i++)
        lms_free((char *)tb->members[i].name);
    lms_free(tb->members);
    lms_storage_release(tb->map);
    lms_scratch_release(tb->extracted);
    memset(tb, 0, sizeof(*tb));
}

/* name without leading "./" and "/" segments; NULL when it escapes ("..") or is empty. */
static const char *clean_name(const char *name)
{
    while (name[0] == '.' && name[1] == '/')
        name += 2;
    while (name[0] == '/')
        name++;
    if (!name[0])
        return NULL;
    for (const char *p = name; *p;) {
        size_t n = strcspn(p, "/");
        if (n == 2 && p[0] == '.' && p[1] == '.')
            return NULL;
        p += n;
        p += *p == '/';
    }
    return name;
}

static uint64_t parse_octal(const unsigned char *f, size_t n, bool *ok)
{
    uint64_t v = 0;
    size_t i = 0;
    while (i < n && f[i] == ' ')
        i++;
    size_t digits = 0;
    for (; i < n && f[i] >= '0' && f[i] <= '7'; i++, digits++)
        v = v * 8 + (uint64_t)(f[i] - '0');
    for (; i < n; i++)
        if (f[i] != ' ' && f[i] != 0)
            *ok = false;
    if (!digits)
        *ok = false;
    return v;
}

/* The size field of a tar header: octal, or GNU base-256 (first byte 0x80). */
static uint64_t header_size(const unsigned char *h, bool *ok)
{
    if (h[124] == 0x80) {
        uint64_t v = 0;
        for (int i = 125; i < 136; i++) {
            if (v >> 56)
                *ok = false;
            v = (v << 8) | h[i];
        }
        return v;
    }
    return parse_octal(h + 124, 12, ok);
}

/* True when the 512 bytes before a member's data are a valid header block for size bytes. */
static bool header_matches(const unsigned char *h, uint64_t size)
{
    bool ok = true;
    uint64_t want = parse_octal(h + 148, 8, &ok), sum = 0;
    for (int i = 0; i < TAR_BLOCK; i++)
        sum += (i >= 148 && i < 156) ? ' ' : h[i];
    return ok && sum == want && header_size(h, &ok) == size && ok;
}

static enum lms_status make_parents(char *path, struct lms_error *err)
{
    for (char *p = strchr(path + 1, '/'); p; p = strchr(p + 1, '/')) {
        *p = 0;
        int r = mkdir(path, 0755);
        int e = errno;
        *p = '/';
        if (r != 0 && e != EEXIST)
            return lms_error_set(err, LMS_EIO, "creating '%s': %s", path, strerror(e));
    }
    return LMS_OK;
}

static enum lms_status extract_entry(struct archive *a, const char *dir, const char *name,
                                     void *buf, size_t buf_cap, struct lms_error *err)
{
    char path[PATH_MAX];
    if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, name) >= sizeof(path))
        return lms_error_set(err, LMS_EINVAL, "member '%s': path too long", name);
    enum lms_status rc = make_parents(path, err);
    if (rc)
        return rc;
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0)
        return lms_error_set(err, LMS_EIO, "creating '%s': %s", path, strerror(errno));
    for (;;) {
        la_ssize_t n = archive_read_data(a, buf, buf_cap);
        if (n == 0)
            break;
        if (n < 0) {
            rc = lms_error_set(err, LMS_EFORMAT, "member '%s': %s", name,
                               archive_error_string(a));
            break;
        }
        rc = lms_write_all(fd, buf, (size_t)n, path, err);
        if (rc)
            break;
    }
    if (close(fd) != 0 && !rc)
        rc = lms_error_set(err, LMS_EIO, "closing '%s': %s", path, strerror(errno));
    return rc;
}

static enum lms_status add_member(struct tarball *tb, const char *name, uint64_t off,
                                  uint64_t size, struct lms_error *err)
{
    for (size_t i = 0; i < tb->n_members; i++)
        if (strcmp(tb->members[i].name, name) == 0) { /* a later copy replaces it (tar rule) */
            tb->members[i].offset = off;
            tb->members[i].size = size;
            return LMS_OK;
        }
    struct lms_dcp_member *m = lms_realloc(tb->members, (tb->n_members + 1) * sizeof(*m));
    if (!m)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    tb->members = m;
    char *copy = lms_strdup(name);
    if (!copy)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    m[tb->n_members++] = (struct lms_dcp_member){.name = copy, .offset = off, .size = size};
    return LMS_OK;
}

/* Lists path with libarchive: an uncompressed tar is mapped with its member table, a compressed
 * one is extracted. Errors name the archive. */
static enum lms_status tarball_open(const char *path, struct tarball *tb, struct lms_error *err)
{
    enum { BUF = 1 << 20 };
    memset(tb, 0, sizeof(*tb));
    tb->path = path;
    struct archive *a = archive_read_new();
    void *buf = lms_malloc(BUF);
    enum lms_status rc = LMS_OK;
    if (!a || !buf) {
        rc = lms_error_set(err, LMS_ENOMEM, "out of memory");
        goto out;
    }
    archive_read_support_format_tar(a);
    archive_read_support_format_gnutar(a);
    archive_read_support_filter_all(a);
    if (archive_read_open_filename(a, path, 1 << 16) != ARCHIVE_OK) {
        rc = lms_error_set(err, LMS_EFORMAT, "'%s': not a tar archive: %s", path,
                           archive_error_string(a));
        goto out;
    }
    bool first = true, compressed = false;
    struct archive_entry *e;
    int r;
    while ((r = archive_read_next_header(a, &e)) == ARCHIVE_OK || r == ARCHIVE_WARN) {
        if (first) {
            first = false;
            compressed = archive_filter_count(a) > 1 ||
                         archive_filter_code(a, 0) != ARCHIVE_FILTER_NONE;
            if (compressed) {
                rc = lms_scratch_new("lms-nemo1-", &tb->extracted, err);
                if (rc)
                    goto out;
            }
        }
        const char *raw = archive_entry_pathname(e);
        const char *name = raw ? clean_name(raw) : NULL;
        if (archive_entry_filetype(e) != AE_IFREG || !name) {
            if (raw && !name && strcmp(raw, ".") && strcmp(raw, "./") && strcmp(raw, "/")) {
                rc = lms_error_set(err, LMS_EFORMAT, "'%s': member name '%s' escapes the "
                                   "archive", path, raw);
                goto out;
            }
            continue; /* directories, links and devices carry nothing we read */
        }
        if (archive_entry_sparse_count(e) > 0) {
            rc = lms_error_set(err, LMS_EUNSUPPORTED, "'%s': member '%s' is a sparse file", path,
                               name);
            goto out;
        }
        if (compressed) {
            rc = extract_entry(a, tb->extracted->path, name, buf, BUF, err);
            if (rc) {
                lms_error_wrap(err, "'%s': ", path);
                goto out;
            }
        } else {
            la_int64_t off = archive_filter_bytes(a, 0), size = archive_entry_size(e);
            if (off < TAR_BLOCK || size < 0) {
                rc = lms_error_set(err, LMS_EFORMAT, "'%s': member '%s': bad offset or size",
                                   path, name);
                goto out;
            }
            rc = add_member(tb, name, (uint64_t)off, (uint64_t)size, err);
            if (rc)
                goto out;
        }
    }
    if (r != ARCHIVE_EOF) {
        rc = lms_error_set(err, LMS_EFORMAT, "'%s': %s", path, archive_error_string(a));
        goto out;
    }
    if (first) {
        rc = lms_error_set(err, LMS_EFORMAT, "'%s': empty archive", path);
        goto out;
    }
    if (!compressed) {
        rc = lms_storage_map_file(path, &tb->map, err);
        for (size_t i = 0; i < tb->n_members && !rc; i++) {
            const struct lms_dcp_member *m = &tb->members[i];
            if (m->offset > tb->map->size || m->size > tb->map->size - m->offset ||
                !header_matches((const unsigned char *)tb->map->base + m->offset - TAR_BLOCK,
                                m->size))
                rc = lms_error_set(err, LMS_EFORMAT, "'%s': member '%s' is not stored "
                                   "contiguously at offset %llu", path, m->name,
                                   (unsigned long long)m->offset);
        }
    }
out:
    if (a)
        archive_read_free(a);
    lms_free(buf);
    if (rc)
        tarball_release(tb);
    return rc;
}

static const struct lms_dcp_member *tb_member(const struct tarball *tb, const char *name)
{
    for (size_t i = 0; i < tb->n_members; i++)
        if (strcmp(tb->members[i].name, name) == 0)
            return &tb->members[i];
    return NULL;
}

static bool tb_extracted_path(const struct tarball *tb, const char *name, char *dst,
                              size_t dst_cap)
{
    struct stat sb;
    return (size_t)snprintf(dst, dst_cap, "%s/%s", tb->extracted->path, name) < dst_cap &&
           lstat(dst, &sb) == 0 && (S_ISREG(sb.st_mode) || S_ISDIR(sb.st_mode));
}

static bool tb_has(const struct tarball *tb, const char *name)
{
    char p[PATH_MAX];
    if (tb->extracted)
        return tb_extracted_path(tb, name, p, sizeof(p));
    if (tb_member(tb, name))
        return true;
    size_t n = strlen(name); /* a folder: any member below it */
    for (size_t i = 0; i < tb->n_members; i++)
        if (strncmp(tb->members[i].name, name, n) == 0 && tb->members[i].name[n] == '/')
            return true;
    return false;
}

/* The bytes of member name as (storage, offset, length); the storage is a new reference. */
static enum lms_status tb_bytes(const struct tarball *tb, const char *name, struct lms_storage **s,
                                uint64_t *off, uint64_t *len, struct lms_error *err)
{
    if (tb->extracted) {
        char p[PATH_MAX];
        if (!tb_extracted_path(tb, name, p, sizeof(p)))
            return lms_error_set(err, LMS_EFORMAT, "'%s': no member '%s'", tb->path, name);
        enum lms_status rc = lms_storage_map_file(p, s, err);
        if (rc)
            return rc;
        *off = 0;
        *len = (*s)->size;
        return LMS_OK;
    }
    const struct lms_dcp_member *m = tb_member(tb, name);
    if (!m)
        return lms_error_set(err, LMS_EFORMAT, "'%s': no member '%s'", tb->path, name);
    *s = lms_storage_ref(tb->map);
    *off = m->offset;
    *len = m->size;
    return LMS_OK;
}

/* ---- reading ------------------------------------------------------------------------------ */

/* NeMo 1 model-config names -> the NeMo 2 names lms__nemo_hf_from_fields takes. */
static enum lms_status nemo2_fields(json_t *f, const struct lms_dcp *d, char *cls, size_t cls_cap,
                                    struct lms_error *err)
{
    const json_t *v = json_object_get(f, "override_vocab_size");
    if (json_is_integer(v))
        json_object_set(f, "vocab_size", (json_t *)v);
    else
        json_object_del(f, "vocab_size");
    v = json_object_get(f, "encoder_seq_length");
    if (json_is_integer(v))
        json_object_set(f, "seq_length", (json_t *)v);
    json_object_set_new(f, "add_qkv_bias", json_boolean(json_is_true(json_object_get(f, "qkv_bias"))));
    /* the stored dtype is what the tensors say, whatever precision the run trained in */
    const char *dt = NULL;
    bool qk_norm = false, bias = false;
    for (size_t i = 0; i < d->n_tensors; i++) {
        const char *k = d->tensors[i].key;
        if (strstr(k, LMS_MCORE_EMBED))
            dt = lms_dtype_torch_name(d->tensors[i].dtype);
        qk_norm |= strstr(k, LMS_MCORE_Q_NORM) != NULL;
        bias |= strstr(k, LMS_MCORE_QKV_BIAS) != NULL;
    }
    char ref[64];
    snprintf(ref, sizeof(ref), "torch.%s", dt ? dt : "bfloat16");
    json_object_set_new(f, "params_dtype", json_string(ref));
    snprintf(cls, cls_cap, "%s", lms_arch_desc_guess(qk_norm, bias)->nemo_config_cls);
    if (json_object_size(f) == 0)
        return lms_error_set(err, LMS_EFORMAT, "empty model config");
    return LMS_OK;
}

static enum lms_status load_json_member(const struct tarball *tb, const char *name, json_t **out,
                                        struct lms_error *err)
{
    struct lms_storage *s;
    uint64_t off, len;
    enum lms_status rc = tb_bytes(tb, name, &s, &off, &len, err);
    if (rc)
        return rc;
    char label[PATH_MAX];
    snprintf(label, sizeof(label), "%s:%s", tb->path, name);
    if (len > SMALL_MAX)
        rc = lms_error_set(err, LMS_EFORMAT, "'%s' is larger than %u bytes", label, SMALL_MAX);
    else
        rc = lms_json_load_buffer(label, (const char *)s->base + off, (size_t)len, out, err);
    lms_storage_release(s);
    return rc;
}

/* Copies the tokenizer files into a scratch directory the model keeps (or, for an extracted
 * tarball, lists them where they are). */
static enum lms_status add_aux(const struct tarball *tb, struct lms_model *m,
                               struct lms_error *err)
{
    enum lms_status rc = LMS_OK;
    if (tb->extracted)
        m->scratch = lms_scratch_ref(tb->extracted);
    for (int i = 0; lms_hf_aux_files[i] && !rc; i++) {
        for (size_t k = 0; k < sizeof(tokenizer_dirs) / sizeof(tokenizer_dirs[0]); k++) {
            char name[PATH_MAX], p[PATH_MAX];
            snprintf(name, sizeof(name), "%s%s", tokenizer_dirs[k], lms_hf_aux_files[i]);
            if (tb->extracted) {
                if (!tb_extracted_path(tb, name, p, sizeof(p)))
                    continue;
                rc = lms_model_add_aux_file(m, p, err);
                break;
            }
            const struct lms_dcp_member *mem = tb_member(tb, name);
            if (!mem)
                continue;
            if (!m->scratch)
                rc = lms_scratch_new("lms-nemo1-", &m->scratch, err);
            if (!rc && (size_t)snprintf(p, sizeof(p), "%s/%s", m->scratch->path,
                                        lms_hf_aux_files[i]) >= sizeof(p))
                rc = lms_error_set(err, LMS_EINVAL, "path too long");
            if (!rc)
                rc = lms_write_file(p, (const char *)tb->map->base + mem->offset,
                                    (size_t)mem->size, err);
            if (!rc)
                rc = lms_model_add_aux_file(m, p, err);
            break;
        }
    }
    return rc;
}

/* Renames a pre-mcore NeMo 1 / Megatron-LM key (language_model.encoder.layers.N.<old name>) to
 * its Megatron-Core key, into dst; false when key is not a legacy name. */
static bool legacy_key(const char *key, char *dst, size_t dst_cap)
{
    static const struct {
        const char *from, *to;
    } map[] = {
        {"self_attention.query_key_value.weight", LMS_MCORE_QKV_WEIGHT},
        {"self_attention.query_key_value.bias", LMS_MCORE_QKV_BIAS},
        {"self_attention.dense.weight", LMS_MCORE_PROJ},
        {"input_layernorm.weight", LMS_MCORE_ATTN_NORM},
        {"post_attention_layernorm.weight", LMS_MCORE_MLP_NORM},
        {"mlp.dense_h_to_4h.weight", LMS_MCORE_FC1_WEIGHT},
        {"mlp.dense_4h_to_h.weight", LMS_MCORE_FC2},
    };
    const char *lm = strstr(key, "language_model.");
    if (!lm)
        return false;
    int pl = (int)(lm - key);
    const char *rest = lm + strlen("language_model.");
    if (strcmp(rest, LMS_MCORE_EMBED) == 0 || strcmp(rest, LMS_MCORE_OUTPUT) == 0)
        return (size_t)snprintf(dst, dst_cap, "%.*s%s", pl, key, rest) < dst_cap;
    if (strcmp(rest, "encoder.final_layernorm.weight") == 0)
        return (size_t)snprintf(dst, dst_cap, "%.*s%s", pl, key, LMS_MCORE_FINAL_NORM) < dst_cap;
    long long l;
    int used = 0;
    if (sscanf(rest, "encoder.layers.%lld.%n", &l, &used) != 1 || used == 0)
        return false;
    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
        if (strcmp(rest + used, map[i].from) == 0)
            return (size_t)snprintf(dst, dst_cap, "%.*s%s%lld.%s", pl, key, LMS_MCORE_LAYERS, l,
                                    map[i].to) < dst_cap;
    return false;
}

static enum lms_status open_weights(const struct tarball *tb, struct lms_dcp *d,
                                    struct lms_error *err)
{
    memset(d, 0, sizeof(*d));
    if (tb_has(tb, "model_weights/metadata.json")) {
        if (tb->extracted) {
            char p[PATH_MAX];
            tb_extracted_path(tb, "model_weights", p, sizeof(p));
            return lms_dcp_open(p, d, err);
        }
        struct lms_dcp_source src = {.dir = "model_weights", .archive = tb->map,
                                     .members = tb->members, .n_members = tb->n_members};
        return lms_dcp_open_source(&src, d, err);
    }
    if (tb_has(tb, "model_weights.ckpt")) {
        struct lms_storage *s;
        uint64_t off, len;
        enum lms_status rc = tb_bytes(tb, "model_weights.ckpt", &s, &off, &len, err);
        if (rc)
            return rc;
        rc = lms_torch_state_dict_open(s, off, len, legacy_key, d, err);
        lms_storage_release(s);
        if (rc)
            lms_error_wrap(err, "'%s:model_weights.ckpt': ", tb->path);
        return rc;
    }
    if (tb_has(tb, "mp_rank_00") || tb_has(tb, "tp_rank_00_pp_rank_000"))
        return lms_error_set(err, LMS_EUNSUPPORTED, "'%s': tensor- or pipeline-parallel NeMo 1 "
                             "checkpoint (mp_rank_XX/ or tp_rank_XX_pp_rank_YYY/); convert it to "
                             "TP = PP = 1 or to a distributed checkpoint first", tb->path);
    return lms_error_set(err, LMS_EFORMAT, "'%s': neither model_weights/ nor "
                         "model_weights.ckpt in the archive", tb->path);
}

static enum lms_status nemo1_read(const char *path, struct lms_model *m, struct lms_error *err)
{
    lms_model_init(m);
    struct tarball tb;
    struct lms_dcp d = {0};
    json_t *hf = NULL, *fields = NULL;
    enum lms_status rc = tarball_open(path, &tb, err);
    if (rc)
        return rc;
    if (!tb_has(&tb, "model_config.yaml")) {
        rc = lms_error_set(err, LMS_EFORMAT, "'%s': no model_config.yaml (not a NeMo 1 "
                           "checkpoint)", path);
        goto out;
    }
    rc = open_weights(&tb, &d, err);
    if (rc)
        goto out;
    if (tb_has(&tb, "hf_config.json")) {
        rc = load_json_member(&tb, "hf_config.json", &hf, err);
    } else {
        struct lms_storage *s;
        uint64_t off, len;
        char cls[128];
        rc = tb_bytes(&tb, "model_config.yaml", &s, &off, &len, err);
        if (rc)
            goto out;
        rc = len > SMALL_MAX ? lms_error_set(err, LMS_EFORMAT, "model_config.yaml too large")
                             : lms__nemo_yaml_fields((const char *)s->base + off, (size_t)len,
                                                     NULL, &fields, cls, sizeof(cls), err);
        lms_storage_release(s);
        if (!rc)
            rc = nemo2_fields(fields, &d, cls, sizeof(cls), err);
        if (!rc)
            rc = lms__nemo_hf_from_fields(fields, cls, &d, &hf, err);
        if (rc) {
            lms_error_wrap(err, "'%s:model_config.yaml': ", path);
            goto out;
        }
    }
    if (rc)
        goto out;
    rc = lms__nemo_model_read(&d, hf, "nemo1", m, err);
    hf = NULL; /* m owns it */
    if (rc) {
        if (strncmp(err->msg, "'", 1) != 0)
            lms_error_wrap(err, "'%s': ", path);
        goto out;
    }
    rc = add_aux(&tb, m, err);
out:
    json_decref(fields);
    json_decref(hf);
    lms_dcp_release(&d);
    tarball_release(&tb);
    if (rc)
        lms_model_release(m);
    return rc;
}

/* An uncompressed tar (ustar magic) or a gzip file named *.nemo. */
static int nemo1_probe(const char *path)
{
    struct stat sb;
    if (stat(path, &sb) != 0 || !S_ISREG(sb.st_mode))
        return 0;
    unsigned char h[TAR_BLOCK];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, h, sizeof(h));
    close(fd);
    size_t pl = strlen(path);
    bool named = pl > 5 && strcmp(path + pl - 5, ".nemo") == 0;
    if (n == TAR_BLOCK && memcmp(h + 257, "ustar", 5) == 0)
        return named ? 95 : 80;
    if (n >= 2 && h[0] == 0x1f && h[1] == 0x8b && named)
        return 85;
    return 0;
}

/* ---- writing ------------------------------------------------------------------------------ */

struct tar_writer {
    int fd;
    const char *path; /* the temporary file, for messages */
    uint64_t pos;     /* bytes written */
};

static void put_octal(unsigned char *f, size_t n, uint64_t v)
{
    /* n - 1 digits, zero padded, then NUL */
    f[n - 1] = 0;
    for (size_t i = n - 1; i-- > 0; v >>= 3)
        f[i] = (unsigned char)('0' + (v & 7));
}

/* A ustar header block for name (without "./"; the archive roots members at "./"). */
static bool tar_header(unsigned char *h, const char *name, char type, uint64_t size)
{
    memset(h, 0, TAR_BLOCK);
    char full[256];
    int n = snprintf(full, sizeof(full), "./%s%s", name, type == '5' && name[0] ? "/" : "");
    if (n < 0 || n > 100 + 155)
        return false;
    if (n <= 100) {
        memcpy(h, full, (size_t)n);
    } else { /* split at a '/' into prefix (155) and name (100) */
        const char *cut = NULL;
        for (const char *p = full; *p; p++)
            if (*p == '/' && p - full <= 155 && n - (p - full) - 1 <= 100)
                cut = p;
        if (!cut)
            return false;
        memcpy(h + 345, full, (size_t)(cut - full));
        memcpy(h, cut + 1, (size_t)(n - (cut - full) - 1));
    }
    put_octal(h + 100, 8, type == '5' ? 0755 : 0644);
    put_octal(h + 108, 8, 0);
    put_octal(h + 116, 8, 0);
    if (size <= OCTAL_SIZE_MAX) {
        put_octal(h + 124, 12, size);
    } else { /* GNU base-256, read by Python's tarfile and libarchive */
        h[124] = 0x80;
        for (int i = 135; i >= 125; i--, size >>= 8)
            h[i] = (unsigned char)size;
    }
    put_octal(h + 136, 12, 0); /* mtime 0: the output is deterministic */
    h[156] = (unsigned char)type;
    memcpy(h + 257, "ustar", 6);
    memcpy(h + 263, "00", 2);
    memset(h + 148, ' ', 8);
    unsigned sum = 0;
    for (int i = 0; i < TAR_BLOCK; i++)
        sum += h[i];
    put_octal(h + 148, 7, sum);
    h[155] = ' ';
    return true;
}

static enum lms_status tar_pad(struct tar_writer *w, uint64_t multiple, struct lms_error *err)
{
    static const unsigned char zeros[TAR_BLOCK];
    while (w->pos % multiple) {
        uint64_t n = multiple - w->pos % multiple;
        if (n > TAR_BLOCK)
            n = TAR_BLOCK;
        enum lms_status rc = lms_pwrite_all(w->fd, zeros, (size_t)n, w->pos, w->path, err);
        if (rc)
            return rc;
        w->pos += n;
    }
    return LMS_OK;
}

static enum lms_status tar_add(struct tar_writer *w, const char *name, char type,
                               const void *src, size_t src_len, struct lms_error *err)
{
    unsigned char h[TAR_BLOCK];
    if (!tar_header(h, name, type, src_len))
        return lms_error_set(err, LMS_EINVAL, "member name '%s' is too long for ustar", name);
    enum lms_status rc = lms_pwrite_all(w->fd, h, TAR_BLOCK, w->pos, w->path, err);
    if (!rc && src_len)
        rc = lms_pwrite_all(w->fd, src, src_len, w->pos + TAR_BLOCK, w->path, err);
    if (rc)
        return rc;
    w->pos += TAR_BLOCK + src_len;
    return tar_pad(w, TAR_BLOCK, err);
}

/* Python's repr of d, with ".0" before an exponent that lacks a fraction, since YAML 1.1
 * (PyYAML, OmegaConf) reads "1e-06" as a string. */
static void yaml_float(double d, char *dst, size_t dst_cap)
{
    char r[32];
    lms_json_format_double(d, r, sizeof(r));
    const char *e = strchr(r, 'e');
    if (e && !memchr(r, '.', (size_t)(e - r)))
        snprintf(dst, dst_cap, "%.*s.0%s", (int)(e - r), r, e);
    else
        snprintf(dst, dst_cap, "%s", r);
}

/* model_config.yaml in NeMo 1 (MegatronGPTModel, mcore) names. */
static enum lms_status model_config_yaml(const struct lms_arch *a, struct lms_buf_str *y,
                                         struct lms_error *err)
{
    const struct lms_arch_desc *desc = lms_arch_desc_of(a->family);
    char eps[40], theta[40];
    yaml_float(a->norm_eps, eps, sizeof(eps));
    yaml_float(a->rope.theta, theta, sizeof(theta));
    int64_t div = 128;
    while (div > 1 && a->vocab % div)
        div /= 2;
    const char *prec = a->dtype == LMS_DTYPE_BF16 ? "bf16" : a->dtype == LMS_DTYPE_F16 ? "16"
                                                                                      : "32";
    return lms_buf_str_printf(
        y, err,
        "mcore_gpt: true\n"
        "transformer_engine: true\n"
        "dist_ckpt_format: torch_dist\n"
        "micro_batch_size: 1\n"
        "global_batch_size: 1\n"
        "tensor_model_parallel_size: 1\n"
        "pipeline_model_parallel_size: 1\n"
        "encoder_seq_length: %lld\n"
        "max_position_embeddings: %lld\n"
        "num_layers: %lld\n"
        "hidden_size: %lld\n"
        "ffn_hidden_size: %lld\n"
        "num_attention_heads: %lld\n"
        "num_query_groups: %lld\n"
        "kv_channels: %lld\n"
        "init_method_std: 0.02\n"
        "hidden_dropout: 0.0\n"
        "attention_dropout: 0.0\n"
        "ffn_dropout: 0.0\n"
        "normalization: %s\n"
        "layernorm_epsilon: %s\n"
        "bias: false\n"
        "qkv_bias: %s\n"
        "qk_layernorm: %s\n"
        "activation: %s\n"
        "position_embedding_type: rope\n"
        "rotary_percentage: 1.0\n"
        "rotary_base: %s\n"
        "share_embeddings_and_output_weights: %s\n"
        "make_vocab_size_divisible_by: %lld\n"
        "override_vocab_size: %lld\n"
        "precision: %s\n"
        "megatron_amp_O2: false\n"
        "tokenizer:\n"
        "  library: huggingface\n"
        "  type: nemo_tokenizer\n"
        "  use_fast: true\n"
        "target: nemo.collections.nlp.models.language_modeling.megatron_gpt_model."
        "MegatronGPTModel\n",
        (long long)a->max_position, (long long)a->max_position, (long long)a->n_layers,
        (long long)a->hidden, (long long)a->ffn, (long long)a->n_heads, (long long)a->n_groups,
        (long long)a->head_dim, lms_arch_norm_nemo1_name(desc->norm), eps,
        a->qkv_bias ? "true" : "false", a->qk_norm ? "true" : "false",
        lms_arch_act_nemo1_name(desc->act), theta, a->tie_embeddings ? "true" : "false",
        (long long)div, (long long)a->vocab, prec);
}

static enum lms_status tar_add_file(struct tar_writer *w, const char *name, const char *src_path,
                                    struct lms_error *err)
{
    struct lms_storage *s;
    enum lms_status rc = lms_storage_map_file(src_path, &s, err);
    if (rc)
        return rc;
    rc = tar_add(w, name, '0', s->base, s->size, err);
    lms_storage_release(s);
    return rc;
}

/* Everything of the tarball after the directory entries. */
static enum lms_status write_members(const struct lms_model *m, const struct lms_arch *a,
                                     struct tar_writer *w, const struct lms_write_opts *o,
                                     struct lms_write_result *r, struct lms_error *err)
{
    static const char data_name[] = "model_weights/__0_0.distcp";
    struct lms_dcp_w_files files = {0};
    struct lms_buf_str text = {0};
    json_t *hf = NULL;
    /* the data member first: its header is written once its length is known */
    uint64_t hdr_at = w->pos;
    enum lms_status rc = lms__nemo_write_weights_fd(m, w->fd, w->path, hdr_at + TAR_BLOCK,
                                                    "model.", o, &files, r, err);
    if (!rc) {
        unsigned char h[TAR_BLOCK];
        tar_header(h, data_name, '0', files.data_len);
        rc = lms_pwrite_all(w->fd, h, TAR_BLOCK, hdr_at, w->path, err);
        w->pos = hdr_at + TAR_BLOCK + files.data_len;
    }
    if (!rc)
        rc = tar_pad(w, TAR_BLOCK, err);
    if (!rc)
        rc = tar_add(w, "model_weights/.metadata", '0', files.metadata, files.metadata_len, err);
    if (!rc)
        rc = tar_add(w, "model_weights/common.pt", '0', files.common, files.common_len, err);
    if (!rc)
        rc = tar_add(w, "model_weights/metadata.json", '0', LMS_DCP_METADATA_JSON,
                     sizeof(LMS_DCP_METADATA_JSON) - 1, err);
    if (!rc)
        rc = model_config_yaml(a, &text, err);
    if (!rc)
        rc = tar_add(w, "model_config.yaml", '0', text.data, text.len, err);
    lms_buf_str_release(&text);
    if (!rc)
        rc = lms_hf_config_of_model(m, a, &hf, err);
    if (!rc)
        rc = lms_json_dump(hf, LMS_JSON_INDENT2, &text, err);
    if (!rc)
        rc = lms_buf_str_append(&text, "\n", 1, err);
    if (!rc)
        rc = tar_add(w, "hf_config.json", '0', text.data, text.len, err);
    if (!rc && m->n_aux_files)
        rc = tar_add(w, "nemo_tokenizer", '5', NULL, 0, err);
    for (size_t i = 0; i < m->n_aux_files && !rc; i++) {
        char name[PATH_MAX];
        snprintf(name, sizeof(name), "nemo_tokenizer/%s", lms_path_basename(m->aux_files[i]));
        rc = tar_add_file(w, name, m->aux_files[i], err);
        if (!rc)
            r->n_aux_files++;
    }
    if (!rc) { /* end of archive: two zero blocks, padded to a whole record */
        w->pos += 2 * TAR_BLOCK;
        rc = tar_pad(w, TAR_RECORD, err);
        if (!rc && ftruncate(w->fd, (off_t)w->pos) != 0)
            rc = lms_error_set(err, LMS_EIO, "writing '%s': %s", w->path, strerror(errno));
    }
    json_decref(hf);
    lms_buf_str_release(&text);
    lms_dcp_w_files_release(&files);
    return rc;
}

static enum lms_status nemo1_write(const struct lms_model *m, const char *path,
                                   const struct lms_write_opts *o, struct lms_write_result *res,
                                   struct lms_error *err)
{
    struct lms_write_result r = {0};
    struct lms_arch a;
    enum lms_status rc = lms__nemo_written_arch(m, o, &a, err);
    if (rc)
        return rc;
    struct stat sb;
    if (stat(path, &sb) == 0) {
        if (S_ISDIR(sb.st_mode))
            return lms_error_set(err, LMS_EEXIST, "'%s' is a directory (a .nemo output is one "
                                 "file)", path);
        if (!o->force)
            return lms_error_set(err, LMS_EEXIST, "'%s' exists (use --force to replace it)",
                                 path);
    }
    /* a temporary file beside the destination, renamed into place when complete */
    struct lms_outfile of;
    if ((rc = lms_outfile_begin(path, o->force, &of, err)))
        return rc;
    struct tar_writer w = {.fd = of.fd, .path = of.tmp};
    rc = tar_add(&w, "", '5', NULL, 0, err);
    if (!rc)
        rc = tar_add(&w, "model_weights", '5', NULL, 0, err);
    if (!rc)
        rc = write_members(m, &a, &w, o, &r, err);
    if (rc) {
        lms_outfile_abort(&of);
        return rc;
    }
    if ((rc = lms_outfile_commit(&of, err)))
        return rc;
    r.n_shards = 1;
    if (res)
        *res = r;
    return LMS_OK;
}

const struct lms_format lms_format_nemo1 = {
    .name = "nemo1",
    .description = "NeMo 1 .nemo tarball (model_config.yaml + model_weights/ or "
                   "model_weights.ckpt)",
    .probe = nemo1_probe,
    .read = nemo1_read,
    .write = nemo1_write,
};

/* torch.save zip and torch_dist checkpoints: the writer's output read back through the reader
 * for several chunk tilings (grid tilings as TP/PP saves produce, with the values checked
 * element by element against the index arithmetic), a non-grid tiling rejected, zip64
 * structures, and corrupted zips. Interop with real torch is in tests/interop/test_nemo.py. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check_main.h"
#include "formats/codecs/dcp.h"
#include "formats/codecs/torch_save.h"
#include "lms/alloc.h"
#include "lms/outdir.h"

/* A [R, C] f32 host view with value 1000*r + c. */
static struct lms_view *grid(int64_t R, int64_t C)
{
    struct lms_storage *s;
    ck_assert_int_eq(lms_storage_new_host((size_t)(R * C) * 4, &s, NULL), LMS_OK);
    float *f = s->base;
    for (int64_t r = 0; r < R; r++)
        for (int64_t c = 0; c < C; c++)
            f[r * C + c] = (float)(1000 * r + c);
    struct lms_view *v;
    ck_assert_int_eq(lms_view_new_storage(s, 0, LMS_DTYPE_F32, 2, (int64_t[]){R, C}, &v, NULL),
                     LMS_OK);
    lms_storage_release(s);
    return v;
}

static struct lms_view *block(struct lms_view *g, int64_t r0, int64_t nr, int64_t c0,
                              int64_t nc)
{
    struct lms_view *a, *b;
    ck_assert_int_eq(lms_view_new_range(g, 0, r0, nr, &a, NULL), LMS_OK);
    ck_assert_int_eq(lms_view_new_range(a, 1, c0, nc, &b, NULL), LMS_OK);
    lms_view_release(a);
    return b;
}

static char *tmpdir(void)
{
    char *t = lms_strdup("/tmp/lms-test-dcp-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(t));
    return t;
}

/* Writes one [R, C] tensor cut into the given blocks and reads it back. */
static enum lms_status round_trip(const int64_t (*blocks)[4], size_t n, int64_t R, int64_t C,
                                  struct lms_error *err)
{
    struct lms_view *g = grid(R, C);
    struct lms_dcp_w_chunk ch[16];
    for (size_t i = 0; i < n; i++) {
        ch[i].offsets[0] = blocks[i][0];
        ch[i].offsets[1] = blocks[i][2];
        ch[i].view = block(g, blocks[i][0], blocks[i][1], blocks[i][2], blocks[i][3]);
    }
    struct lms_dcp_w_tensor t = {.key = "w", .dtype = LMS_DTYPE_F32, .ndim = 2,
                                 .shape = {R, C}, .chunks = ch, .n_chunks = n};
    static const unsigned char payload[] = "raw bytes";
    struct lms_dcp_w_bytes b = {.key = "obj/shard_0_1", .data = payload, .len = 9};
    static const unsigned char common[] = {0x80, 0x02, 0x7d, 0x2e}; /* {} */
    char *dir = tmpdir();
    enum lms_status rc = lms_dcp_write(dir, &t, 1, &b, 1, common, sizeof(common), NULL, NULL,
                                       NULL, err);
    ck_assert_int_eq(rc, LMS_OK);
    struct lms_dcp d;
    rc = lms_dcp_open(dir, &d, err);
    if (!rc) {
        const struct lms_dcp_tensor *rt = lms_dcp_find(&d, "w");
        ck_assert_ptr_nonnull(rt);
        ck_assert_int_eq(rt->n_chunks, n);
        float *out = malloc((size_t)(R * C) * 4);
        ck_assert_int_eq(lms_view_read(rt->view, 0, R * C, out, NULL), LMS_OK);
        for (int64_t r = 0; r < R; r++)
            for (int64_t c = 0; c < C; c++)
                ck_assert(out[r * C + c] == (float)(1000 * r + c));
        free(out);
        ck_assert_int_eq(d.n_bytes, 1);
        ck_assert_int_eq(d.bytes[0].length, 9);
        ck_assert(memcmp((const char *)d.files[0]->base + d.bytes[0].offset, payload, 9) == 0);
    }
    lms_dcp_release(&d);
    lms_remove_tree(dir);
    lms_free(dir);
    for (size_t i = 0; i < n; i++)
        lms_view_release(ch[i].view);
    lms_view_release(g);
    return rc;
}

START_TEST(tilings)
{
    static const int64_t one[][4] = {{0, 6, 0, 10}};
    static const int64_t rows[][4] = {{3, 3, 0, 10}, {0, 3, 0, 10}}; /* any order */
    static const int64_t tp2x2[][4] = {{0, 3, 0, 5}, {0, 3, 5, 5}, {3, 3, 0, 5}, {3, 3, 5, 5}};
    static const int64_t nested[][4] = {{0, 1, 0, 10}, {1, 2, 0, 4}, {1, 2, 4, 6},
                                        {3, 3, 0, 7}, {3, 3, 7, 3}};
    ck_assert_int_eq(round_trip(one, 1, 6, 10, NULL), LMS_OK);
    ck_assert_int_eq(round_trip(rows, 2, 6, 10, NULL), LMS_OK);
    ck_assert_int_eq(round_trip(tp2x2, 4, 6, 10, NULL), LMS_OK);
    ck_assert_int_eq(round_trip(nested, 5, 6, 10, NULL), LMS_OK);
}
END_TEST

START_TEST(bad_tilings)
{
    /* pinwheel around the centre cell of a 3x3 grid: tiles, but no straight cut */
    static const int64_t pinwheel[][4] = {
        {0, 2, 0, 1}, {0, 1, 1, 2}, {1, 2, 2, 1}, {2, 1, 0, 2}, {1, 1, 1, 1}};
    struct lms_error err = {0};
    ck_assert_int_eq(round_trip(pinwheel, 5, 3, 3, &err), LMS_EUNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(err.msg, "not a grid"));
    static const int64_t gap[][4] = {{0, 3, 0, 10}};
    ck_assert_int_eq(round_trip(gap, 1, 6, 10, &err), LMS_EFORMAT);
    ck_assert_ptr_nonnull(strstr(err.msg, "do not tile"));
    static const int64_t overlap[][4] = {{0, 4, 0, 10}, {2, 4, 0, 10}};
    ck_assert_int_eq(round_trip(overlap, 2, 6, 10, &err), LMS_EFORMAT);
    ck_assert_ptr_nonnull(strstr(err.msg, "overlap"));
}
END_TEST

START_TEST(zip64_and_corruption)
{
    for (int force = 0; force < 2; force++) {
        struct lms_zip_writer w;
        lms_zip_w_begin(&w, -1, "(memory)", 0, "archive");
        w.force_zip64 = force;
        ck_assert_int_eq(lms_zip_w_add(&w, "data.pkl", "\x80\x02N.", 4, NULL), LMS_OK);
        ck_assert_int_eq(lms_zip_w_add(&w, "data/0", "0123456789", 10, NULL), LMS_OK);
        uint64_t len;
        ck_assert_int_eq(lms_zip_w_finish(&w, &len, NULL), LMS_OK);
        struct lms_zip z;
        ck_assert_int_eq(lms_zip_parse(w.mem, (size_t)len, &z, NULL), LMS_OK);
        ck_assert_str_eq(z.prefix, "archive/");
        const struct lms_zip_entry *e = lms_zip_find(&z, "data/0");
        ck_assert_ptr_nonnull(e);
        ck_assert_int_eq(e->data_off % 64, 0); /* torch's alignment */
        ck_assert(memcmp(w.mem + e->data_off, "0123456789", 10) == 0);
        ck_assert_int_eq(lms_zip_check_crc(w.mem, e, NULL), LMS_OK);
        lms_zip_release(&z);
        /* every truncation and a sweep of byte flips: rejected or accepted, never a crash */
        for (uint64_t n = 0; n < len; n++) {
            lms_zip_parse(w.mem, (size_t)n, &z, NULL);
            lms_zip_release(&z);
        }
        for (uint64_t i = 0; i < len; i++) {
            unsigned char keep = w.mem[i];
            w.mem[i] ^= 0xff;
            lms_zip_parse(w.mem, (size_t)len, &z, NULL);
            lms_zip_release(&z);
            w.mem[i] = keep;
        }
        lms_free(w.mem);
    }
}
END_TEST

START_TEST(extra_state_payload)
{
    unsigned char *p;
    size_t n;
    ck_assert_int_eq(lms_dcp_extra_state_payload(&p, &n, NULL), LMS_OK);
    struct lms_storage *s;
    ck_assert_int_eq(lms_storage_new_host(n, &s, NULL), LMS_OK);
    memcpy(s->base, p, n);
    struct lms_view *v;
    ck_assert_int_eq(lms_torch_tensor_view(s->base, n, s, 0, 0, &v, NULL), LMS_OK);
    unsigned char got[4];
    ck_assert_int_eq(v->dtype, LMS_DTYPE_U8);
    ck_assert_int_eq(lms_view_read(v, 0, 4, got, NULL), LMS_OK);
    ck_assert(memcmp(got, "\x80\x02\x4e\x2e", 4) == 0);
    lms_view_release(v);
    lms_storage_release(s);
    lms_free(p);
}
END_TEST

Suite *suite(void)
{
    Suite *s = suite_create("dcp");
    TCase *tc = tcase_create("dcp");
    tcase_add_test(tc, tilings);
    tcase_add_test(tc, bad_tilings);
    tcase_add_test(tc, zip64_and_corruption);
    tcase_add_test(tc, extra_state_payload);
    suite_add_tcase(s, tc);
    return s;
}

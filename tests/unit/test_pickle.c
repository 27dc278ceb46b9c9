/* Pickle reader against byte strings produced by CPython's pickle module (golden bytes below,
 * generated with `python3 -c "import pickle; print(pickle.dumps(VALUE, protocol=P).hex())"`),
 * the allow-list, malformed input, and a writer/reader agreement on the torch opcode patterns. */
#include <string.h>

#include "check_main.h"
#include "common/alloc_hook.h"
#include "formats/codecs/pickle.h"
#include "lms/alloc.h"

/* {"a": [1, 2.5, None, True], "big": -2**40, "s": "h\u00e9", "t": (1, 2, 3)}, protocol 4 */
static const unsigned char p4[] = {
    0x80, 0x04, 0x95, 0x3e, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x7d, 0x94, 0x28, 0x8c,
    0x01, 0x61, 0x94, 0x5d, 0x94, 0x28, 0x4b, 0x01, 0x47, 0x40, 0x04, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x4e, 0x88, 0x65, 0x8c, 0x03, 0x62, 0x69, 0x67, 0x94, 0x8a, 0x06, 0x00, 0x00,
    0x00, 0x00, 0x00, 0xff, 0x8c, 0x01, 0x73, 0x94, 0x8c, 0x03, 0x68, 0xc3, 0xa9, 0x94, 0x8c,
    0x01, 0x74, 0x94, 0x4b, 0x01, 0x4b, 0x02, 0x4b, 0x03, 0x87, 0x94, 0x75, 0x2e};
/* b"\x00\xff", protocol 2 (spelled _codecs.encode(str, 'latin1')) */
static const unsigned char p2bytes[] = {
    0x80, 0x02, 0x63, 0x5f, 0x63, 0x6f, 0x64, 0x65, 0x63, 0x73, 0x0a, 0x65, 0x6e, 0x63, 0x6f,
    0x64, 0x65, 0x0a, 0x71, 0x00, 0x58, 0x03, 0x00, 0x00, 0x00, 0x00, 0xc3, 0xbf, 0x71, 0x01,
    0x58, 0x06, 0x00, 0x00, 0x00, 0x6c, 0x61, 0x74, 0x69, 0x6e, 0x31, 0x71, 0x02, 0x86, 0x71,
    0x03, 0x52, 0x71, 0x04, 0x2e};
/* collections.OrderedDict([("x", 1)]), protocol 2 */
static const unsigned char od[] = {
    0x80, 0x02, 0x63, 0x63, 0x6f, 0x6c, 0x6c, 0x65, 0x63, 0x74, 0x69, 0x6f, 0x6e, 0x73, 0x0a,
    0x4f, 0x72, 0x64, 0x65, 0x72, 0x65, 0x64, 0x44, 0x69, 0x63, 0x74, 0x0a, 0x71, 0x00, 0x29,
    0x52, 0x71, 0x01, 0x58, 0x01, 0x00, 0x00, 0x00, 0x78, 0x71, 0x02, 0x4b, 0x01, 0x73, 0x2e};
/* l = [7]; [l, l], protocol 2: the memo shares one node */
static const unsigned char memo[] = {0x80, 0x02, 0x5d, 0x71, 0x00, 0x28, 0x5d, 0x71,
                                     0x01, 0x4b, 0x07, 0x61, 0x68, 0x01, 0x65, 0x2e};

START_TEST(protocol4_values)
{
    struct lms_pkl_doc doc;
    ck_assert_int_eq(lms_pkl_parse(p4, sizeof(p4), &doc, NULL), LMS_OK);
    const struct lms_pkl *a = lms_pkl_dict_get(doc.root, "a");
    ck_assert(a && a->kind == LMS_PKL_LIST && a->u.seq.n == 4);
    ck_assert_int_eq(a->u.seq.items[0]->u.i, 1);
    ck_assert(a->u.seq.items[1]->kind == LMS_PKL_FLOAT && a->u.seq.items[1]->u.f == 2.5);
    ck_assert(a->u.seq.items[2]->kind == LMS_PKL_NONE);
    ck_assert(a->u.seq.items[3]->kind == LMS_PKL_BOOL && a->u.seq.items[3]->u.b);
    ck_assert_int_eq(lms_pkl_dict_get(doc.root, "big")->u.i, -(INT64_C(1) << 40));
    ck_assert_str_eq(lms_pkl_dict_get(doc.root, "s")->u.s.data, "h\xc3\xa9");
    int64_t t[4];
    ck_assert_int_eq(lms_pkl_int_tuple(lms_pkl_dict_get(doc.root, "t"), t, 4), 3);
    ck_assert_int_eq(t[2], 3);
    lms_pkl_doc_release(&doc);
}
END_TEST

START_TEST(protocol2_folds)
{
    struct lms_pkl_doc doc;
    ck_assert_int_eq(lms_pkl_parse(p2bytes, sizeof(p2bytes), &doc, NULL), LMS_OK);
    ck_assert(doc.root->kind == LMS_PKL_BYTES && doc.root->u.s.len == 2);
    ck_assert(memcmp(doc.root->u.s.data, "\x00\xff", 2) == 0);
    lms_pkl_doc_release(&doc);
    ck_assert_int_eq(lms_pkl_parse(od, sizeof(od), &doc, NULL), LMS_OK);
    ck_assert_int_eq(lms_pkl_dict_get(doc.root, "x")->u.i, 1);
    lms_pkl_doc_release(&doc);
    ck_assert_int_eq(lms_pkl_parse(memo, sizeof(memo), &doc, NULL), LMS_OK);
    ck_assert(doc.root->u.seq.n == 2 && doc.root->u.seq.items[0] == doc.root->u.seq.items[1]);
    lms_pkl_doc_release(&doc);
}
END_TEST

START_TEST(disallowed_global)
{
    static const char evil[] = "\x80\x02" "cos\nsystem\n" "X\x04\x00\x00\x00true" "\x85R.";
    struct lms_pkl_doc doc;
    struct lms_error err = {0};
    ck_assert_int_eq(lms_pkl_parse(evil, sizeof(evil) - 1, &doc, &err), LMS_EUNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(err.msg, "'os.system' is not allowed"));
    lms_pkl_doc_release(&doc);
    /* STACK_GLOBAL spelling (protocol 4) */
    static const char evil4[] = "\x80\x04\x8c\x08" "builtins" "\x8c\x04" "eval" "\x93.";
    ck_assert_int_eq(lms_pkl_parse(evil4, sizeof(evil4) - 1, &doc, &err), LMS_EUNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(err.msg, "'builtins.eval'"));
    lms_pkl_doc_release(&doc);
}
END_TEST

START_TEST(malformed)
{
    static const struct {
        const char *bytes;
        size_t len;
    } bad[] = {
        {"", 0},
        {"\x80\x02", 2},                       /* no STOP */
        {"\x80\x09N.", 4},                     /* protocol 9 */
        {"\x80\x02X\xff\xff\xff\x7f", 8},      /* string past the end */
        {"\x80\x02h\x05.", 4},                 /* memo get of an unset entry */
        {"\x80\x02t.", 4},                     /* TUPLE without MARK */
        {"\x80\x02Ns.", 4},                    /* SETITEM underflow */
        {"\x80\x02]Na.", 6},                   /* valid: [None] */
        {"\x80\x02NNa.", 6},                   /* APPEND onto None */
        {"\x80\x02K\x01R.", 5},                /* REDUCE underflow */
        {"\x80\x02I1\n.", 6},                  /* text-mode INT unsupported */
        {"\x80\x02\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x01.", 14}, /* 2^64 */
        {"\x80\x02(.", 4},                     /* STOP on a MARK */
        {"\x80\x02\x95\xff\xff\x00\x00\x00\x00\x00\x00N.", 13}, /* frame past the end */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct lms_pkl_doc doc;
        enum lms_status rc = lms_pkl_parse(bad[i].bytes, bad[i].len, &doc, NULL);
        if (i == 7)
            ck_assert_int_eq(rc, LMS_OK);
        else
            ck_assert_msg(rc != LMS_OK, "case %zu accepted", i);
        lms_pkl_doc_release(&doc);
    }
}
END_TEST

/* Every prefix of a valid pickle fails cleanly; every single-byte corruption is either accepted
 * or rejected without crashing (the sanitizer build checks the "without crashing"). */
START_TEST(truncations_and_flips)
{
    for (size_t n = 0; n < sizeof(p4); n++) {
        struct lms_pkl_doc doc;
        ck_assert_int_ne(lms_pkl_parse(p4, n, &doc, NULL), LMS_OK);
        lms_pkl_doc_release(&doc);
    }
    unsigned char buf[sizeof(p4)];
    for (size_t i = 0; i < sizeof(p4); i++)
        for (int v = 0; v < 256; v += 7) {
            memcpy(buf, p4, sizeof(p4));
            buf[i] = (unsigned char)v;
            struct lms_pkl_doc doc;
            lms_pkl_parse(buf, sizeof(buf), &doc, NULL);
            lms_pkl_doc_release(&doc);
        }
}
END_TEST

START_TEST(writer_reader_agree)
{
    struct lms_pkl_writer w;
    lms_pkl_w_init(&w);
    lms_pkl_w_proto2(&w);
    lms_pkl_w_op(&w, LMS_PKL_OP_EMPTY_DICT);
    lms_pkl_w_op(&w, LMS_PKL_OP_MARK);
    static const int64_t ints[] = {0, 255, 256, 65535, 65536, -1, INT32_MIN, INT32_MAX,
                                   (INT64_C(1) << 31), -(INT64_C(1) << 40), INT64_MAX, INT64_MIN};
    char key[16];
    for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]); i++) {
        snprintf(key, sizeof(key), "i%zu", i);
        lms_pkl_w_str(&w, key);
        lms_pkl_w_int(&w, ints[i]);
    }
    lms_pkl_w_str(&w, "f");
    lms_pkl_w_float(&w, 3.0);
    lms_pkl_w_str(&w, "size");
    lms_pkl_w_size(&w, 3, (int64_t[]){36, 6144, 4096});
    lms_pkl_w_str(&w, "t");
    ck_assert(lms_pkl_w_tensor(&w, LMS_DTYPE_BF16, "0", 2, (int64_t[]){2, 3}));
    lms_pkl_w_op(&w, LMS_PKL_OP_SETITEMS);
    ck_assert_int_eq(lms_pkl_w_finish(&w, NULL), LMS_OK);
    struct lms_pkl_doc doc;
    ck_assert_int_eq(lms_pkl_parse(w.data, w.len, &doc, NULL), LMS_OK);
    for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]); i++) {
        snprintf(key, sizeof(key), "i%zu", i);
        ck_assert(lms_pkl_dict_get(doc.root, key)->u.i == ints[i]);
    }
    ck_assert(lms_pkl_dict_get(doc.root, "f")->u.f == 3.0);
    int64_t s[3];
    ck_assert_int_eq(lms_pkl_int_tuple(lms_pkl_dict_get(doc.root, "size"), s, 3), 3);
    ck_assert_int_eq(s[1], 6144);
    ck_assert(lms_pkl_is_obj(lms_pkl_dict_get(doc.root, "t"), "torch._utils",
                             "_rebuild_tensor_v2"));
    lms_pkl_doc_release(&doc);
    lms_pkl_w_release(&w);
}
END_TEST

START_TEST(allocation_failures)
{
    for (long k = 0; k < 200; k++) {
        struct lms_pkl_doc doc;
        lms__alloc_fail_after(k);
        enum lms_status rc = lms_pkl_parse(p4, sizeof(p4), &doc, NULL);
        lms__alloc_fail_after(-1);
        ck_assert(rc == LMS_OK || rc == LMS_ENOMEM);
        lms_pkl_doc_release(&doc);
        if (rc == LMS_OK)
            break;
    }
}
END_TEST

Suite *suite(void)
{
    Suite *s = suite_create("pickle");
    TCase *tc = tcase_create("pickle");
    tcase_add_test(tc, protocol4_values);
    tcase_add_test(tc, protocol2_folds);
    tcase_add_test(tc, disallowed_global);
    tcase_add_test(tc, malformed);
    tcase_add_test(tc, truncations_and_flips);
    tcase_add_test(tc, writer_reader_agree);
    tcase_add_test(tc, allocation_failures);
    suite_add_tcase(s, tc);
    return s;
}

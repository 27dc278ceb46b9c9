/* The dtype contract of the op table as data: for every op with device operands, the class of
 * each operand (activation storage, weight, always fp32, ...), and the resolution of a class to
 * the dtype a given backend stores it in (kernels/backend_impl.h, "the dtype contract").
 *
 * Activations between ops, saved activations and activation gradients are LMS_SLOT_ACT. What
 * needs fp32's precision is LMS_SLOT_F32 on every backend: RMSNorm's rstd and norm weights,
 * biases, the RoPE tables, attention's log-sum-exp, logits (the softmax over the vocabulary and
 * the losses read them), losses, master weights, their gradients and the AdamW moments. */
#include <string.h>

#include "kernels/backend_impl.h"

#define IN(n, c) {n, LMS_SLOT_##c, LMS_SLOT_IN}
#define OUT(n, c) {n, LMS_SLOT_##c, LMS_SLOT_OUT}
#define INOUT(n, c) {n, LMS_SLOT_##c, LMS_SLOT_INOUT}
#define OP(name, typed, ...)                                                                  \
    {name, typed, (int)(sizeof((struct lms_op_slot[]){__VA_ARGS__}) / sizeof(struct lms_op_slot)), \
     {__VA_ARGS__}}

static const struct lms_op_contract contracts[] = {
    /* matmul: the forward's y = x W^T is (a ACT, b WEIGHT, c ACT); the LM head writes F32
     * logits; the weight gradient dW = dY^T X takes two ACT operands into an F32 gradient. The
     * call names each dtype (struct lms_matmul_typed). */
    OP("matmul", "matmul_typed", IN("a", CALL), IN("b", CALL), INOUT("c", CALL), IN("bias", F32)),
    OP("embedding", NULL, OUT("out", ACT), IN("ids", I32), IN("table", WEIGHT)),
    OP("rmsnorm", "rmsnorm_typed", OUT("out", ACT), IN("x", ACT), IN("w", F32), OUT("rstd", F32)),
    OP("rope", "rope_typed", INOUT("x", ACT), IN("pos", I32), IN("cos", F32), IN("sin", F32)),
    OP("attention", NULL, IN("q", ACT), IN("k", ACT), IN("v", ACT), OUT("out", ACT),
       OUT("lse", F32)),
    OP("swiglu", "swiglu_typed", OUT("out", ACT), IN("gate", ACT), IN("up", ACT)),
    OP("add", "add_typed", INOUT("y", ACT), IN("x", ACT)),
    OP("log_softmax", NULL, OUT("out", F32), IN("x", F32)),
    OP("cross_entropy", NULL, OUT("loss", F32), IN("logits", F32), IN("target", I32)),
    OP("cast", NULL, OUT("dst", CALL), IN("src", CALL)),
    OP("abs_mean", NULL, OUT("out", F32), IN("x", ACT)),
    OP("row_cosine", NULL, OUT("out", F32), IN("a", ACT), IN("b", ACT)),
    OP("embedding_backward", NULL, INOUT("dtable", F32), IN("dout", ACT), IN("ids", I32)),
    OP("rmsnorm_backward", NULL, INOUT("dx", ACT), INOUT("dw", F32), IN("dy", ACT),
       IN("x", ACT), IN("w", F32), IN("rstd", F32)),
    OP("rope_backward", NULL, INOUT("dx", ACT), IN("pos", I32), IN("cos", F32), IN("sin", F32)),
    OP("attention_backward", NULL, IN("q", ACT), IN("k", ACT), IN("v", ACT), IN("out", ACT),
       IN("lse", F32), IN("dout", ACT), OUT("dq", ACT), OUT("dk", ACT), OUT("dv", ACT)),
    OP("swiglu_backward", NULL, OUT("dgate", ACT), OUT("dup", ACT), IN("dout", ACT),
       IN("gate", ACT), IN("up", ACT)),
    OP("bias_backward", NULL, INOUT("dbias", F32), IN("dy", ACT)),
    OP("logit_loss", NULL, IN("student", F32), IN("teacher", F32), IN("target", I32),
       IN("kd_valid", U8), OUT("kd_loss", F32), OUT("ce_loss", F32), OUT("grad", F32)),
    OP("hidden_loss", NULL, OUT("loss", F32), INOUT("ds", ACT), IN("s", ACT), IN("t", ACT)),
    OP("sum_squares", NULL, INOUT("out", F32), IN("x", F32)),
    OP("adamw", NULL, INOUT("w", F32), IN("g", F32), INOUT("m", F32), INOUT("v", F32),
       OUT("w_bf16", BF16)),
    OP("scale", NULL, INOUT("x", F32)),
};

const struct lms_op_contract *lms__op_contracts(size_t *n)
{
    *n = sizeof contracts / sizeof contracts[0];
    return contracts;
}

const struct lms_op_contract *lms__op_contract(const char *op)
{
    for (size_t i = 0; i < sizeof contracts / sizeof contracts[0]; i++)
        if (!strcmp(contracts[i].op, op) || (contracts[i].typed && !strcmp(contracts[i].typed, op)))
            return &contracts[i];
    return NULL;
}

enum lms_dtype lms__slot_dtype(const struct lms_backend *be, enum lms_slot_class cls,
                               enum lms_dtype ckpt)
{
    switch (cls) {
    case LMS_SLOT_ACT:
        return lms__backend_activation_dtype(be);
    case LMS_SLOT_WEIGHT:
        return lms__backend_weight_dtype(be, ckpt);
    case LMS_SLOT_F32:
        return LMS_DTYPE_F32;
    case LMS_SLOT_BF16:
        return LMS_DTYPE_BF16;
    case LMS_SLOT_I32:
        return LMS_DTYPE_I32;
    case LMS_SLOT_U8:
        return LMS_DTYPE_U8;
    case LMS_SLOT_CALL:
    default:
        return LMS_DTYPE_COUNT;
    }
}

const char *lms__slot_class_name(enum lms_slot_class cls)
{
    static const char *const names[] = {
        [LMS_SLOT_ACT] = "activation", [LMS_SLOT_WEIGHT] = "weight", [LMS_SLOT_F32] = "f32",
        [LMS_SLOT_BF16] = "bf16",      [LMS_SLOT_I32] = "i32",       [LMS_SLOT_U8] = "u8",
        [LMS_SLOT_CALL] = "per call",
    };
    return (unsigned)cls < sizeof names / sizeof names[0] ? names[cls] : NULL;
}

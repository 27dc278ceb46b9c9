/* The budget search's ranking by a short distillation (surgery/rank.c), called by
 * lms_search_run once the candidates are sorted by post-prune loss. */
#ifndef LMS_SURGERY_RANK_H
#define LMS_SURGERY_RANK_H

#include "lms/surgery.h"

/* Distills and scores res->c[0..ro->top) (clamped to res->n), which carry their loss_rank, and
 * sorts them by distill_loss in front of the others; sets res->distilled and n_distilled. */
enum lms_status lms__search_rank_distill(const struct lms_model *m,
                                         const struct lms_prune_targets *t,
                                         const struct lms_importance *imp,
                                         struct lms_calib *cal,
                                         const struct lms_search_rank_opts *ro,
                                         struct lms_search_result *res, struct lms_error *err);

/* Puts c[0..k) in the order of their distill_loss (a loss that is not finite last; ties keep
 * the post-prune order, loss_rank) and numbers them in distill_rank from 1. */
void lms__search_rank_order(struct lms_candidate *c, int64_t k);

#endif

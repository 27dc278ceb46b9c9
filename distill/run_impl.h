/* Inside distill/: what the run's opening (open.c) and its steps (run.c) share. */
#ifndef LMS_DISTILL_RUN_IMPL_H
#define LMS_DISTILL_RUN_IMPL_H

#include "lms/distill_run.h"

/* Loads master weights and moments from the state (its configuration checked already). */
enum lms_status lms__distill_restore(struct lms_distill_run *r, const struct lms_train_state *s,
                                     struct lms_error *err);

#endif

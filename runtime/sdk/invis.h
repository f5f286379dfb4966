/*
 * invis.h: the Invis host ABI, version 1, for C guests.
 *
 * A job is a wasm32 module that exports `memory` and `int run(void)` (0 is
 * success) and imports only the functions below (module "invis_v1"). The
 * full specification is runtime/ABI.md. Negative return values are the
 * error codes below; invis_error_read() gives the message of the last one.
 *
 * Build (no libc needed):
 *   clang --target=wasm32-unknown-unknown -O2 -nostdlib \
 *         -Wl,--no-entry -Wl,--export=run -o job.wasm job.c
 */
#ifndef INVIS_H
#define INVIS_H

#define INVIS_IMPORT(name) __attribute__((import_module("invis_v1"), import_name(#name)))
/* Marks a function the host may call (use on `run` and row functions). */
#define INVIS_EXPORT(name) __attribute__((export_name(#name)))

/* Error codes (always negative). */
#define INVIS_INVALID_ARGUMENT (-1)
#define INVIS_POLICY_VIOLATION (-2)
#define INVIS_BUDGET_EXHAUSTED (-3)
#define INVIS_ACCESS_CLOSED (-4)
#define INVIS_INVALID_QUERY (-5)
#define INVIS_LIMIT_EXCEEDED (-6)
#define INVIS_NO_RESULT (-7)
#define INVIS_BUFFER_TOO_SMALL (-8)
#define INVIS_INTERNAL (-9)

/* Runs one SQL query through the scenario's policy and privacy mechanism.
 * Returns the byte length of the protected result (an Arrow IPC stream),
 * now pending, or an error code. */
INVIS_IMPORT(query) long long invis_query(const char *sql, int sql_len);
/* Copies the pending result into buf (needs len >= its length); returns it. */
INVIS_IMPORT(result_read) int invis_result_read(void *buf, int len);
/* Copies up to len bytes of the last error message; returns its length. */
INVIS_IMPORT(error_read) int invis_error_read(char *buf, int len);
/* Appends bytes to the job's output. */
INVIS_IMPORT(emit) int invis_emit(const void *buf, int len);
/* Records a diagnostic message (truncated to 1 KiB, at most 100 per job). */
INVIS_IMPORT(log) int invis_log(const char *msg, int len);
/* Length of the job's parameters, and a copy of them. */
INVIS_IMPORT(params_len) int invis_params_len(void);
INVIS_IMPORT(params_read) int invis_params_read(void *buf, int len);
/* Makes the exported function `name` (double x n -> double, 1 <= n <= 8,
 * stateless: no stores, globals, loops, recursion or host calls) callable
 * in queries as a row function whose result feeds COUNT/SUM/AVG only,
 * clamped to [lo, hi]. NaN is null both ways. */
INVIS_IMPORT(udf_register) int invis_udf_register(const char *name, int name_len, double lo, double hi);

#endif

/*
 * Example job in C: a city planner compares business formation and jobs
 * across districts. It asks for enterprises and employees per district and
 * five-year founding period, and for the share of enterprises with at most
 * ten employees per district, and emits both protected results as Arrow
 * IPC streams (one after the other), which any Arrow reader opens.
 */
#include "../../sdk/invis.h"

static unsigned char result[1 << 16];

static int length(const char *s) {
    int n = 0;
    while (s[n]) n++;
    return n;
}

static int fail(long long code) {
    char msg[512];
    int n = invis_error_read(msg, (int)sizeof msg);
    invis_log(msg, n < (int)sizeof msg ? n : (int)sizeof msg);
    return (int)-code;
}

static int run_query(const char *sql) {
    long long n = invis_query(sql, length(sql));
    if (n < 0) return fail(n);
    if (n > (long long)sizeof result) {
        static const char big[] = "result larger than the job's buffer";
        invis_log(big, (int)sizeof big - 1);
        return 1;
    }
    int got = invis_result_read(result, (int)n);
    if (got < 0) return fail(got);
    return invis_emit(result, got) < 0 ? 1 : 0;
}

INVIS_EXPORT(run) int run(void) {
    int status = run_query(
        "SELECT district, founded_year, COUNT(*) AS enterprises, SUM(employees) AS jobs "
        "FROM enterprise_register GROUP BY district, founded_year");
    if (status != 0) return status;
    return run_query(
        "SELECT district, AVG(CASE WHEN employees <= 10 THEN 1 ELSE 0 END) AS small_share "
        "FROM enterprise_register GROUP BY district");
}

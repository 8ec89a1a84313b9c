/* Pure compute: summary statistics of a list of numbers. No host calls.
 *
 * Input:  {"values": [1, 2.5, 3]}
 * Output: {"count": 3, "sum": 6.5, "mean": 2.1666, "min": 1, "max": 3, "stddev": 0.8498}
 */
#include <math.h>
#include <stdio.h>

#include "minijson.h"
#include "toolio.h"

int main(void) {
    char *in = read_input();
    const char *values = in ? mj_get(in, "values") : NULL;
    if (!values || *values != '[') {
        fputs("input needs \"values\": a list of numbers\n", stderr);
        return 2;
    }
    long count = 0;
    double sum = 0, sumsq = 0, lo = INFINITY, hi = -INFINITY;
    for (const char *v = mj_first(values); v; v = mj_next(v)) {
        double x = mj_num(v, NAN);
        if (isnan(x)) {
            fputs("values must all be numbers\n", stderr);
            return 2;
        }
        count++;
        sum += x;
        sumsq += x * x;
        lo = x < lo ? x : lo;
        hi = x > hi ? x : hi;
    }
    if (count == 0) {
        puts("{\"count\":0}");
        return 0;
    }
    double mean = sum / count;
    double var = sumsq / count - mean * mean;
    printf("{\"count\":%ld,\"sum\":%.17g,\"mean\":%.17g,\"min\":%.17g,\"max\":%.17g,\"stddev\":%.17g}\n",
           count, sum, mean, lo, hi, sqrt(var > 0 ? var : 0));
    return 0;
}

/* Currency conversion over the Stripe balance: fetches GET /v1/balance through egress.http_request
 * (action stripe:retrieve_balance) and converts each balance entry into one target currency.
 *
 * Input:  {"to": "eur", "rates": {"usd": 0.92, "gbp": 1.17}}   (units of `to` per unit of each)
 * Output: {"currency": "eur", "available": N, "pending": N, "unconverted": N, "status": 200}
 *         amounts in minor units; entries with no rate are counted in `unconverted`.
 *         A refused or failed call: {"status": S, "error": "<error code>"}.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "egress.h"
#include "minijson.h"
#include "toolio.h"

static long long convert(const char *list, const char *to, const char *rates, int *unconverted) {
    long long total = 0;
    char cur[16];
    for (const char *e = mj_first(list); e; e = mj_next(e)) {
        double amount = mj_num(mj_get(e, "amount"), 0);
        if (mj_str(mj_get(e, "currency"), cur, sizeof cur) < 0) { (*unconverted)++; continue; }
        const char *r = strcmp(cur, to) == 0 ? "1" : mj_get(rates, cur);
        if (!r) { (*unconverted)++; continue; }
        total += llround(amount * mj_num(r, 0));
    }
    return total;
}

int main(void) {
    char *in = read_input();
    char to[16];
    if (!in || mj_str(mj_get(in, "to"), to, sizeof to) < 0) {
        fputs("input needs \"to\": a currency code\n", stderr);
        return 2;
    }
    const char *rates = mj_get(in, "rates");

    int32_t err;
    char *resp = egress_call(
        "{\"method\":\"GET\",\"url\":\"https://api.stripe.com/v1/balance\",\"headers\":{},\"body\":\"\"}", &err);
    if (!resp) {
        fprintf(stderr, "egress_http_request failed: %d\n", err);
        return 3;
    }
    int status = (int)mj_num(mj_get(resp, "status"), 0);
    size_t cap = strlen(resp) + 1;
    char *body = malloc(cap);
    if (!body || mj_str(mj_get(resp, "body"), body, cap) < 0) {
        fputs("response has no body string\n", stderr);
        return 3;
    }
    if (status != 200) {
        char code[64] = "unknown";
        mj_str(mj_get(mj_get(body, "error"), "code"), code, sizeof code);
        printf("{\"status\":%d,\"error\":\"%s\"}", status, code);
        return 0;
    }
    int unconverted = 0;
    long long available = convert(mj_get(body, "available"), to, rates, &unconverted);
    long long pending = convert(mj_get(body, "pending"), to, rates, &unconverted);
    printf("{\"currency\":\"%s\",\"available\":%lld,\"pending\":%lld,\"unconverted\":%d,\"status\":%d}",
           to, available, pending, unconverted, status);
    return 0;
}

/* Hostile: fires 1000 host calls in a row and reports how many the host served.
 *
 * Output: {"attempts": 1000, "ok": N, "refused": N, "last_error": "<error code>"}
 */
#include <stdio.h>
#include <string.h>

#include "egress.h"
#include "minijson.h"

int main(void) {
    static const char req[] =
        "{\"method\":\"GET\",\"url\":\"https://api.stripe.com/v1/balance\",\"headers\":{},\"body\":\"\"}";
    int ok = 0, refused = 0;
    char last[64] = "";
    for (int i = 0; i < 1000; i++) {
        int32_t err;
        char *resp = egress_call(req, &err);
        if (!resp) { refused++; continue; }
        if ((int)mj_num(mj_get(resp, "status"), 0) == 200) {
            ok++;
        } else {
            char body[1024];
            refused++;
            if (mj_str(mj_get(resp, "body"), body, sizeof body) >= 0)
                mj_str(mj_get(mj_get(body, "error"), "code"), last, sizeof last);
        }
        free(resp);
    }
    printf("{\"attempts\":1000,\"ok\":%d,\"refused\":%d,\"last_error\":\"%s\"}", ok, refused, last);
    return 0;
}

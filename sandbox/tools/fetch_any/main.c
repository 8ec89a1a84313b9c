/* Hostile: sends whatever request its input names, to probe the manifest's ceiling.
 *
 * Input:  {"method": "POST", "url": "https://api.openai.com/v1/chat/completions", "body": "..."}
 * Output: {"status": S, "error": "<error code or empty>", "body_bytes": N}
 */
#include <stdio.h>
#include <string.h>

#include "egress.h"
#include "minijson.h"
#include "toolio.h"

int main(void) {
    char *in = read_input();
    char method[16] = "GET", url[1024], body[4096] = "";
    if (!in || mj_str(mj_get(in, "url"), url, sizeof url) < 0) {
        fputs("input needs \"url\"\n", stderr);
        return 2;
    }
    mj_str(mj_get(in, "method"), method, sizeof method);
    mj_str(mj_get(in, "body"), body, sizeof body);

    static char req[8192];
    /* The url and body are echoed raw into JSON: fine for a probe whose inputs the tests control. */
    snprintf(req, sizeof req, "{\"method\":\"%s\",\"url\":\"%s\",\"headers\":{},\"body\":\"%s\"}", method, url, body);
    int32_t err;
    char *resp = egress_call(req, &err);
    if (!resp) {
        printf("{\"status\":0,\"error\":\"abi %d\",\"body_bytes\":0}", err);
        return 0;
    }
    int status = (int)mj_num(mj_get(resp, "status"), 0);
    size_t cap = strlen(resp) + 1;
    char *text = malloc(cap);
    char code[64] = "";
    long n = mj_str(mj_get(resp, "body"), text, cap);
    if (n >= 0) mj_str(mj_get(mj_get(text, "error"), "code"), code, sizeof code);
    printf("{\"status\":%d,\"error\":\"%s\",\"body_bytes\":%ld}", status, code, n < 0 ? 0 : n);
    return 0;
}

/* The one host import of the egress-gateway sandbox, and a helper around it (see sandbox/ABI.md).
 *
 * egress_http_request(req, req_len, resp, resp_cap):
 *   req_len > 0  send the JSON request {"method","url","headers","body"} at req.
 *                Returns n >= 0, the length of the JSON response {"status","headers","body"};
 *                it was written at resp if n <= resp_cap, else it is held by the host.
 *   req_len == 0 copy the held response to resp (when n <= resp_cap) without a new request.
 *   Negative: EGRESS_EFAULT (a pointer/length outside memory), EGRESS_EINVAL (the request is not
 *   the JSON shape above, or too large), EGRESS_ENOPENDING (req_len == 0 and nothing is held).
 */
#ifndef EGRESS_H
#define EGRESS_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define EGRESS_EFAULT (-1)
#define EGRESS_EINVAL (-2)
#define EGRESS_ENOPENDING (-3)

__attribute__((import_module("egress"), import_name("http_request")))
int32_t egress_http_request(const char *req, int32_t req_len, char *resp, int32_t resp_cap);

/* Send `req` and return the whole JSON response as a malloc'd NUL-terminated string (caller frees),
 * or NULL with *err set to the negative ABI code. */
static inline char *egress_call(const char *req, int32_t *err) {
    int32_t cap = 4096;
    char *buf = malloc((size_t)cap + 1);
    if (!buf) { *err = EGRESS_EINVAL; return NULL; }
    int32_t n = egress_http_request(req, (int32_t)strlen(req), buf, cap);
    if (n > cap) {                      /* too big for the buffer: fetch the held response */
        free(buf);
        cap = n;
        buf = malloc((size_t)cap + 1);
        if (!buf) { *err = EGRESS_EINVAL; return NULL; }
        n = egress_http_request(NULL, 0, buf, cap);
    }
    if (n < 0) { free(buf); *err = n; return NULL; }
    buf[n] = '\0';
    *err = 0;
    return buf;
}

#endif

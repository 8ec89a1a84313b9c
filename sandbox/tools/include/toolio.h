/* Read the whole of stdin (the tool's input JSON) into a NUL-terminated malloc'd buffer. */
#ifndef TOOLIO_H
#define TOOLIO_H

#include <stdio.h>
#include <stdlib.h>

static inline char *read_input(void) {
    size_t cap = 4096, len = 0, n;
    char *buf = malloc(cap);
    while (buf && (n = fread(buf + len, 1, cap - len - 1, stdin)) > 0) {
        len += n;
        if (cap - len - 1 == 0) {
            char *more = realloc(buf, cap * 2);
            if (!more) { free(buf); return NULL; }
            buf = more;
            cap *= 2;
        }
    }
    if (buf) buf[len] = '\0';
    return buf;
}

#endif

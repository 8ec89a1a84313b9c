/* Just enough JSON for the sample tools: find a key in an object, walk an array, read a number or
 * a string. Values are pointers into the text; nothing is allocated. Not a validator: the host
 * validates what the tool prints. */
#ifndef MINIJSON_H
#define MINIJSON_H

#include <stdlib.h>
#include <string.h>

static inline const char *mj_ws(const char *p) {
    while (p && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) p++;
    return p;
}

/* Skip one value; returns the first character after it, or NULL on malformed input. */
static inline const char *mj_skip(const char *p) {
    p = mj_ws(p);
    if (!p || !*p) return NULL;
    if (*p == '"') {
        for (p++; *p && *p != '"'; p++)
            if (*p == '\\' && !*++p) return NULL;
        return *p ? p + 1 : NULL;
    }
    if (*p == '{' || *p == '[') {
        char close = *p == '{' ? '}' : ']';
        p = mj_ws(p + 1);
        if (*p == close) return p + 1;
        for (;;) {
            if (close == '}') {
                p = mj_skip(p);             /* key */
                p = mj_ws(p);
                if (!p || *p != ':') return NULL;
                p++;
            }
            p = mj_ws(mj_skip(p));
            if (!p) return NULL;
            if (*p == ',') { p = mj_ws(p + 1); continue; }
            return *p == close ? p + 1 : NULL;
        }
    }
    while (*p && !strchr(",}] \n\r\t", *p)) p++;
    return p;
}

/* The value of `key` in the object at p, or NULL. */
static inline const char *mj_get(const char *p, const char *key) {
    p = mj_ws(p);
    if (!p || *p != '{') return NULL;
    p = mj_ws(p + 1);
    size_t klen = strlen(key);
    while (p && *p == '"') {
        const char *k = p + 1, *end = mj_skip(p);
        if (!end) return NULL;
        p = mj_ws(end);
        if (!p || *p != ':') return NULL;
        const char *v = mj_ws(p + 1);
        if ((size_t)(end - 1 - k) == klen && memcmp(k, key, klen) == 0) return v;
        p = mj_ws(mj_skip(v));
        if (!p || *p != ',') return NULL;
        p = mj_ws(p + 1);
    }
    return NULL;
}

/* Array walk: mj_first(arr) gives the first element (or NULL), mj_next(elem) the next one. */
static inline const char *mj_first(const char *p) {
    p = mj_ws(p);
    if (!p || *p != '[') return NULL;
    p = mj_ws(p + 1);
    return *p == ']' ? NULL : p;
}
static inline const char *mj_next(const char *p) {
    p = mj_ws(mj_skip(p));
    return (p && *p == ',') ? mj_ws(p + 1) : NULL;
}

static inline double mj_num(const char *p, double dflt) {
    char *end;
    double v;
    p = mj_ws(p);
    if (!p) return dflt;
    v = strtod(p, &end);
    return end == p ? dflt : v;
}

/* Copy the string at p (unescaping \" \\ \/ \n \t \r \b \f and \u00XX) into out; returns its length,
 * or -1 if p is not a string or it does not fit. */
static inline long mj_str(const char *p, char *out, size_t cap) {
    size_t n = 0;
    p = mj_ws(p);
    if (!p || *p != '"') return -1;
    for (p++; *p && *p != '"'; p++) {
        char c = *p;
        if (c == '\\') {
            c = *++p;
            switch (c) {
            case 'n': c = '\n'; break;
            case 't': c = '\t'; break;
            case 'r': c = '\r'; break;
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            case 'u': {
                char hex[5] = {0};
                if (strlen(p) < 5) return -1;
                memcpy(hex, p + 1, 4);
                c = (char)strtol(hex, NULL, 16);
                p += 4;
                break;
            }
            case '\0': return -1;
            default: break;             /* \" \\ \/ */
            }
        }
        if (n + 1 >= cap) return -1;
        out[n++] = c;
    }
    if (*p != '"') return -1;
    out[n] = '\0';
    return (long)n;
}

#endif

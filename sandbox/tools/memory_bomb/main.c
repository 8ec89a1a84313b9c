/* Hostile: allocates and touches 1 MiB blocks until malloc fails, then aborts (a trap). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void) {
    size_t total = 0;
    for (;;) {
        char *p = malloc(1 << 20);
        if (!p) {
            fprintf(stderr, "malloc failed after %zu MiB\n", total >> 20);
            abort();
        }
        memset(p, 0xA5, 1 << 20);
        __asm__ volatile("" : : "r"(p) : "memory");   /* keep the block: the bomb must not be optimized out */
        total += 1 << 20;
    }
}

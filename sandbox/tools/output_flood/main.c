/* Hostile: writes to stdout forever and ignores write errors. */
#include <stdio.h>

int main(void) {
    static const char chunk[] = "{\"flood\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}\n";
    for (;;) fputs(chunk, stdout);
}

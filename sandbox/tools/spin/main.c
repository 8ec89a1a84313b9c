/* Hostile: never returns. Stopped by fuel or by the wall-clock deadline, whichever comes first. */
int main(void) {
    volatile unsigned long i = 0;
    for (;;) i++;
}

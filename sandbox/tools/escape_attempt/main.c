/* Hostile: tries to reach outside the sandbox without egress.http_request and reports each result.
 * Every attempt must fail inside the guest: there are no preopened directories, no environment and
 * no sockets, and the only argument is the tool's name.
 *
 * Output: {"argv": ["<name>"], "env": 0, "open_file": E, "open_dir": E, "socket_send": E,
 *          "socket_accept": E, "sleep": E}  where E is the errno (0 would mean it worked)
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>
#include <wasi/api.h>

extern char **environ;

static int attempt_open(const char *path, int flags) {
    errno = 0;
    int fd = open(path, flags);
    if (fd >= 0) { close(fd); return 0; }
    return errno;
}

int main(int argc, char **argv) {
    int env = 0;
    for (char **e = environ; e && *e; e++) env++;

    int open_file = attempt_open("/etc/passwd", O_RDONLY);
    errno = 0;
    DIR *d = opendir("/");
    int open_dir = d ? 0 : errno;
    if (d) closedir(d);

    /* WASI preview 1 has no socket creation; a sandbox that handed over any socket would show it
     * on a low descriptor, so try the socket calls on each of them. */
    int socket_send = 0, socket_accept = 0;
    for (int fd = 3; fd < 16; fd++) {
        __wasi_ciovec_t iov = {(const uint8_t *)"GET / HTTP/1.0\r\n\r\n", 18};
        __wasi_size_t sent;
        __wasi_fd_t accepted;
        socket_send = __wasi_sock_send(fd, &iov, 1, 0, &sent);
        socket_accept = __wasi_sock_accept(fd, 0, &accepted);
        if (socket_send == 0 || socket_accept == 0) break;
    }

    struct timespec ts = {0, 1000000};
    errno = 0;
    int sleep = nanosleep(&ts, NULL) == 0 ? 0 : errno;

    printf("{\"argc\":%d,\"argv0\":\"%s\",\"env\":%d,\"open_file\":%d,\"open_dir\":%d,"
           "\"socket_send\":%d,\"socket_accept\":%d,\"sleep\":%d}",
           argc, argc > 0 ? argv[0] : "", env, open_file, open_dir, socket_send, socket_accept, sleep);
    return 0;
}

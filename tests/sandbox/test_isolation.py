"""What the guest can reach without egress.http_request: nothing."""

from __future__ import annotations

# WASI preview 1 errno values (not the host's): wasi/api.h
WASI_EBADF = 8
WASI_ENOTSUP = 58
WASI_ENOTCAPABLE = 76


def test_files_sockets_env_and_sleep_fail_inside_the_guest(run) -> None:  # type: ignore[no-untyped-def]
    out = run("escape_attempt").output
    assert out["argc"] == 1 and out["argv0"] == "escape_attempt"  # argv is the tool's name only
    assert out["env"] == 0
    assert out["open_file"] == WASI_ENOTCAPABLE  # there is no preopened directory at all
    assert out["open_dir"] == WASI_ENOTCAPABLE
    assert out["socket_send"] == WASI_EBADF == out["socket_accept"]  # no descriptor is a socket
    assert out["sleep"] == WASI_ENOTSUP  # poll_oneoff is shadowed

"""Tools registered at run time (`POST /v1/tools`): where the fleet finds them.

A registered tool is kept in the state dir of the replica that registered it (manifest and module,
as `sandbox.registration` writes them). The shelf is what makes it the fleet's: `claim` takes the
name for the whole fleet (refused if another replica holds it) and stores the manifest and module
bytes; any replica asked for a name it does not have takes them from the shelf and registers them
locally, through the same checks (sha256, publisher signature, compile) as the first replica did.
`LocalShelf` is one replica's: nothing is shared; `gateway.stores.redis_state.RedisToolShelf`
keeps them in Redis.
"""

from __future__ import annotations

from typing import Any, Protocol


class ToolShelf(Protocol):
    def claim(self, name: str, manifest: Any, module: bytes) -> bool:
        """Take `name` for the fleet with these contents; False if it is taken already."""
        ...

    def release(self, name: str) -> None:
        """Give a claimed name back (its local registration failed)."""
        ...

    def names(self) -> set[str]: ...

    def get(self, name: str) -> tuple[Any, bytes] | None:
        """The manifest (as sent) and the module bytes of a shelved tool."""
        ...


class LocalShelf:
    """No fleet: every name is free (the local registry still refuses duplicates), nothing shelved."""

    def claim(self, name: str, manifest: Any, module: bytes) -> bool:
        return True

    def release(self, name: str) -> None:
        return None

    def names(self) -> set[str]:
        return set()

    def get(self, name: str) -> tuple[Any, bytes] | None:
        return None

"""The agent and admin HTTP API (Starlette, in the gateway's event loop): `app` builds it.
Agents use their proxy token as a Bearer token; admins are tenant-scoped.
"""

from gateway.faces import lazy_face

_FACE = {"create_app": "app"}
__all__ = sorted(_FACE)
__getattr__ = lazy_face(__name__, _FACE)

"""The tamper-evident record of every decision: `log` (hash-chained JSON lines, an Ed25519-signed
head, crash-safe appends, and `verify`), and `noise` (refusals without a valid token aggregated per
client, so no one without a token can fill the log).
"""

from gateway.faces import lazy_face

_FACE = {"AuditLog": "log", "verify": "log", "UnauthenticatedNoise": "noise"}
__all__ = sorted(_FACE)
__getattr__ = lazy_face(__name__, _FACE)

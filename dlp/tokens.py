"""The token that stands in for a PII value outside the gateway.

Format: ``tok_<ENTITY_TYPE>_<id>``, e.g. ``tok_EMAIL_ADDRESS_k3j9xq2mfa7bwe5ncr4t``.

- ``<ENTITY_TYPE>`` is the Presidio entity type (``[A-Z][A-Z0-9_]*``, at most 40 characters). It
  tells the model what the placeholder stands for ("an email"), so it can still reason about it.
- ``<id>`` is 20 characters of lowercase RFC 4648 base32 (``a-z``, ``2-7``): 100 random bits from
  `secrets`, so a token cannot be guessed or derived from its value. Lowercase base32 has no
  look-alike characters (no 0/O, 1/l/I) for a model to "correct".
- The whole token is one identifier-shaped word of plain ASCII letters, digits and underscores:
  no brackets, quotes, braces or spaces that a model re-spaces, translates, or escapes in JSON;
  tokenizers keep it intact, and models copy such identifiers verbatim as they do variable names.
- It is recognizable by one regex (`TOKEN_RE`). The type and id are unambiguous because the id
  alphabet has no uppercase letters or underscores: the id is what follows the last underscore.

A token is only a reference: the vault decides what it stands for, in which scope, until when,
and of which type (the type written in a token is checked against the vault's, never trusted).
"""

from __future__ import annotations

import base64
import re
import secrets

PREFIX = "tok_"
ID_LENGTH = 20  # base32 characters, 5 bits each: 100 bits
MAX_TYPE_LENGTH = 40
MAX_TOKEN_LENGTH = len(PREFIX) + MAX_TYPE_LENGTH + 1 + ID_LENGTH

TOKEN_RE = re.compile(rf"tok_([A-Z][A-Z0-9_]{{0,{MAX_TYPE_LENGTH - 1}}})_([a-z2-7]{{{ID_LENGTH}}})")

# Everything a token can begin with and still be unfinished, used to hold back a stream's tail.
_PREFIX_RE = re.compile(
    rf"t(?:o(?:k(?:_(?:[A-Z][A-Z0-9_]{{0,{MAX_TYPE_LENGTH - 1}}}(?:_[a-z2-7]{{0,{ID_LENGTH - 1}}})?)?)?)?)?"
)


def new_token(entity_type: str) -> str:
    """A fresh random token for a value of `entity_type`."""
    if not re.fullmatch(rf"[A-Z][A-Z0-9_]{{0,{MAX_TYPE_LENGTH - 1}}}", entity_type):
        raise ValueError("entity type must be uppercase letters, digits and underscores, at most 40")
    raw = base64.b32encode(secrets.token_bytes(15)).decode("ascii").lower()  # 120 bits, 24 chars
    return f"{PREFIX}{entity_type}_{raw[:ID_LENGTH]}"


def token_type(token: str) -> str | None:
    """The entity type written in `token`, or None if it is not a token."""
    m = TOKEN_RE.fullmatch(token)
    return m.group(1) if m else None


def find_tokens(text: str) -> list[str]:
    """Every token in `text`, in order, repeats included."""
    return [m.group(0) for m in TOKEN_RE.finditer(text)]


def pending_start(text: str) -> int:
    """Where the unfinished token at the end of `text` begins, or len(text) if none can.

    A stream can emit everything before this offset at once; only the tail after it could still
    turn into a token when the next chunk arrives (e.g. ``tok_EMA`` + ``IL_ADDRESS_…``).
    """
    window = max(0, len(text) - MAX_TOKEN_LENGTH)
    # A complete token is final (its id has a fixed length), so no unfinished token starts inside
    # it: without this, a token whose id ends in "t" (or "to", "tok") was cut before that letter,
    # and the stream emitted it in two parts that neither restored.
    for m in TOKEN_RE.finditer(text, max(0, window - MAX_TOKEN_LENGTH)):
        window = max(window, m.end())
    pos = text.find("t", window)
    while pos != -1:
        if _PREFIX_RE.fullmatch(text, pos):
            return pos
        pos = text.find("t", pos + 1)
    return len(text)

"""Small connectors of our own and a helper to write policy directories (shared by the policy tests)."""

from __future__ import annotations

import textwrap
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from connectors.model import Action, BodyEncoding, Connector


class Pay(BaseModel):
    model_config = ConfigDict(extra="forbid")
    amount: int | None = None
    currency: str | None = None
    description: str | None = None
    email: str | None = None
    metadata: dict[str, str] | None = None
    items: list[dict[str, str]] | None = None
    confirm: bool | None = None


class Lookup(BaseModel):
    model_config = ConfigDict(extra="forbid")
    q: str | None = None


PAY = Connector(
    name="pay",
    hosts=("api.pay.test",),
    actions=(
        Action("create", "POST", "/v1/pay", Pay, BodyEncoding.FORM),
        Action("refund", "POST", "/v1/refunds", Pay, BodyEncoding.FORM),
        Action("get", "GET", "/v1/pay/{id}", Lookup, BodyEncoding.QUERY),
        Action("balance", "GET", "/v1/balance", None, BodyEncoding.QUERY),
    ),
)
SEARCH = Connector(
    name="search",
    hosts=("search.test",),
    actions=(Action("query", "GET", "/search", Lookup, BodyEncoding.QUERY),),
)
CONNECTORS = {c.name: c for c in (PAY, SEARCH)}


def lookup(name: str) -> Connector | None:
    return CONNECTORS.get(name)


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path

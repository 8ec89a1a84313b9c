"""A connector that must not register: its request model ignores unknown fields (pydantic's
default), which would drop them from what the policy and DLP see while the agent's bytes leave."""

from __future__ import annotations

from pydantic import BaseModel

from connectors.model import Action, Connector, Credential


class LaxNote(BaseModel):
    title: str


CONNECTOR = Connector(
    name="lax-notes",
    hosts=("api.openai.com",),
    credential=Credential(secret="openai"),
    actions=(Action("create", "POST", "/v1/lax-notes", LaxNote),),
)

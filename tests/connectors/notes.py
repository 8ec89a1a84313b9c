"""A connector registered through the config's `connectors:` by the unknown-fields tests: two
actions with the same request model, one refusing undeclared fields (the default), one passing and
scanning them. It shares the fake vendor's host and credential with the built-in OpenAI connector
(different routes, so no clash)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from connectors.model import Action, BodyEncoding, Connector, Credential, UnknownFields


class Note(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str = Field(max_length=200)
    receipt_email: str | None = None
    priority: int | None = None


CONNECTOR = Connector(
    name="notes",
    hosts=("api.openai.com",),
    credential=Credential(secret="openai"),
    actions=(
        Action("create_note", "POST", "/v1/notes", Note, dlp_fields=("title",)),
        Action("create_loose_note", "POST", "/v1/loose-notes", Note, dlp_fields=("title",),
               unknown_fields=UnknownFields.PASS_SCANNED),
        Action("create_loose_form_note", "POST", "/v1/loose-form-notes", Note, BodyEncoding.FORM,
               dlp_fields=("title",), unknown_fields="pass_scanned"),  # type: ignore[arg-type]  # as a config value reads
    ),
)


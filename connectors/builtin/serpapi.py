"""SerpAPI: web search. Its key travels as the `api_key` query parameter, not a header."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from connectors.model import Action, BodyEncoding, Connector, Credential


class Search(BaseModel):
    model_config = ConfigDict(extra="forbid")
    q: str = Field(min_length=1, max_length=2048)
    engine: str | None = None
    location: str | None = None
    google_domain: str | None = None
    gl: str | None = None
    hl: str | None = None
    num: int | None = Field(default=None, ge=1, le=100)
    start: int | None = Field(default=None, ge=0)
    device: str | None = None
    safe: str | None = None
    tbm: str | None = None
    no_cache: bool | None = None
    output: str | None = None


CONNECTOR = Connector(
    name="serpapi",
    description="SerpAPI search",
    hosts=("serpapi.com",),
    credential=Credential(secret="serpapi", header=None, scheme=None, query_param="api_key"),
    actions=(Action("search", "GET", "/search.json", Search, BodyEncoding.QUERY, dlp_fields=("q", "location")),),
)

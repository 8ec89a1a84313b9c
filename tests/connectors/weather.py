"""A connector that is not built in, registered through the config's `connectors:` by the tests."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from connectors.model import Action, BodyEncoding, Connector, Credential


class Forecast(BaseModel):
    model_config = ConfigDict(extra="forbid")
    days: int | None = None
    units: str | None = None


CONNECTOR = Connector(
    name="weather",
    hosts=("api.weather.test",),
    credential=Credential(secret="weather"),
    actions=(Action("forecast", "GET", "/v1/forecast/{city}", Forecast, BodyEncoding.QUERY),),
)

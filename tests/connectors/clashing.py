"""Connectors for the registry tests: one that clashes with Stripe, one that does not."""

from connectors.model import Action, BodyEncoding, Connector, Credential

CONNECTOR = Connector(
    name="stripe-copy",
    hosts=("api.stripe.com",),
    credential=Credential(secret="stripe"),
    actions=(Action("balance", "GET", "/v1/balance", None, BodyEncoding.QUERY),),
)

EXTRA = Connector(
    name="weather",
    hosts=("api.weather.example",),
    actions=(Action("forecast", "GET", "/v1/forecast", None, BodyEncoding.QUERY),),
)

"""Currency conversion over the Stripe balance, in Python: the C `currency_convert` as a component.

Fetches GET /v1/balance through the host's `http.request` (action stripe:retrieve_balance, through the
gateway) and converts each balance entry into one target currency.

Input:  {"to": "eur", "rates": {"usd": 0.92, "gbp": 1.17}}   (units of `to` per unit of each)
Output: {"currency": "eur", "available": N, "pending": N, "unconverted": N, "status": 200}
        amounts in minor units; entries with no rate are counted in `unconverted`.
        A refused or failed call: {"status": S, "error": "<error code>"}.
Built with `python -m sandbox.build` (componentize-py, world `egress-tool` in sandbox/wit/tool.wit).
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import http

BALANCE = {"method": "GET", "url": "https://api.stripe.com/v1/balance", "headers": {}, "body": ""}


def convert(entries: list, to: str, rates: dict) -> tuple[int, int]:
    """(total in `to`, entries without a rate)."""
    total, unconverted = 0, 0
    for entry in entries:
        currency = entry.get("currency")
        rate = 1 if currency == to else rates.get(currency)
        if not isinstance(rate, (int, float)):
            unconverted += 1
            continue
        total += round(entry.get("amount", 0) * rate)
    return total, unconverted


class WitWorld(wit_world.WitWorld):
    def run(self, input_json: str) -> str:
        args = json.loads(input_json)
        to, rates = args.get("to"), args.get("rates") or {}
        if not isinstance(to, str) or not isinstance(rates, dict):
            raise Err('input needs "to": a currency code, and optional "rates": {code: rate}')
        response = json.loads(http.request(json.dumps(BALANCE)))
        status = response["status"]
        body = json.loads(response["body"] or "{}")
        if status != 200:
            return json.dumps({"status": status, "error": body.get("error", {}).get("code", "unknown")})
        available, missing_a = convert(body.get("available", []), to, rates)
        pending, missing_p = convert(body.get("pending", []), to, rates)
        return json.dumps({"currency": to, "available": available, "pending": pending,
                           "unconverted": missing_a + missing_p, "status": status})

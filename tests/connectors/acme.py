"""A declarative connector document the connector and API suites share: a small CRM on a host no
built-in claims, using every kind of field the format has."""

from __future__ import annotations

import copy
from typing import Any

ACME_HOST = "api.acme.test"
ACME_KEY = "acme-secret-key-0005"

_DOCUMENT: dict[str, Any] = {
    "name": "acme",
    "description": "Acme CRM",
    "hosts": [ACME_HOST],
    "credential": {"secret": "acme", "header": "Authorization", "scheme": "Bearer", "strip_headers": ["X-Acme-Account"]},
    "headers": {"acme-version": "[0-9]{4}-[0-9]{2}-[0-9]{2}"},
    "idempotency_header": "Idempotency-Key",
    "actions": [
        {
            "name": "create_contact",
            "method": "POST",
            "path": "/v1/contacts",
            "encoding": "json",
            "detokenize_response": True,
            "fields": {
                "email": {"type": "string", "max_length": 254, "required": True, "dlp": True},
                "plan": {"type": "string", "enum": ["free", "pro"]},
                "seats": {"type": "integer", "min": 1, "max": 500},
                "score": {"type": "number", "min": 0, "max": 1},
                "vip": {"type": "boolean"},
                "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
                "address": {"type": "object", "fields": {"city": {"type": "string", "max_length": 80, "dlp": True}}},
                "tags": {"type": "array", "items": {"type": "string", "max_length": 40}, "max_items": 5},
                "metadata": {"type": "map", "values": {"type": "string", "max_length": 200}, "max_entries": 10, "dlp": True},
                "json": {"type": "string", "max_length": 10},  # a name pydantic models use themselves
            },
        },
        {
            "name": "update_contact",
            "method": "POST",
            "path": "/v1/contacts/{id}",
            "encoding": "form",
            "unknown_fields": "pass_scanned",
            "fields": {"note": {"type": "string", "max_length": 1000, "dlp": True}},
        },
        {"name": "get_contact", "method": "GET", "path": "/v1/contacts/{id}", "encoding": "query"},
    ],
}


def document(**changes: Any) -> dict[str, Any]:
    """A fresh copy of the document, top-level keys replaced by `changes` (None deletes one)."""
    doc = copy.deepcopy(_DOCUMENT)
    for key, value in changes.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    return doc

"""Stripe: payment intents, refunds, customers and the balance.

Parameters travel as Stripe-style form bodies (`metadata[account]=...`). Amounts are integers in
the currency's minor unit, as Stripe takes them; policies cap them in the same unit.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from connectors.model import Action, BodyEncoding, Connector, Credential

Currency = str  # ISO 4217, lowercase; policies narrow it with one_of
Metadata = dict[str, str]


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreatePaymentIntent(_Params):
    amount: int = Field(gt=0)
    currency: Currency = Field(pattern=r"^[a-z]{3}$")
    customer: str | None = None
    description: str | None = Field(default=None, max_length=1000)
    receipt_email: str | None = None
    metadata: Metadata | None = None
    payment_method: str | None = None
    payment_method_types: list[str] | None = None
    confirm: bool | None = None
    capture_method: Literal["automatic", "automatic_async", "manual"] | None = None
    statement_descriptor: str | None = Field(default=None, max_length=22)
    expand: list[str] | None = None


class RetrievePaymentIntent(_Params):
    expand: list[str] | None = None


class ConfirmPaymentIntent(_Params):
    payment_method: str | None = None
    receipt_email: str | None = None
    return_url: str | None = None
    expand: list[str] | None = None


class CreateRefund(_Params):
    payment_intent: str | None = None
    charge: str | None = None
    amount: int | None = Field(default=None, gt=0)
    reason: Literal["duplicate", "fraudulent", "requested_by_customer"] | None = None
    metadata: Metadata | None = None


class CreateCustomer(_Params):
    email: str | None = None
    name: str | None = None
    phone: str | None = None
    description: str | None = None
    metadata: Metadata | None = None


class ListPage(_Params):
    """Stripe's list parameters: a page size and a cursor (object ids), and expansions."""

    limit: int | None = Field(default=None, ge=1, le=100)
    starting_after: str | None = None
    ending_before: str | None = None
    created: dict[str, int] | None = None  # created[gte]=..., Unix seconds
    expand: list[str] | None = None


class ListRefunds(ListPage):
    payment_intent: str | None = None
    charge: str | None = None


class ListCustomers(ListPage):
    email: str | None = None


class ListPaymentIntents(ListPage):
    customer: str | None = None


class UpdateCustomer(CreateCustomer):
    expand: list[str] | None = None


_FORM = BodyEncoding.FORM
_QUERY = BodyEncoding.QUERY
CONNECTOR = Connector(
    name="stripe",
    description="Stripe payments API",
    hosts=("api.stripe.com",),
    credential=Credential(secret="stripe", strip_headers=("authorization", "stripe-account", "stripe-context")),
    headers=(("stripe-version", r"[0-9]{4}-[0-9]{2}-[0-9]{2}(\.[a-z_]+)?"),),
    idempotency_header="idempotency-key",
    actions=(
        Action("create_payment_intent", "POST", "/v1/payment_intents", CreatePaymentIntent, _FORM,
               dlp_fields=("description", "receipt_email", "metadata.*")),
        Action("retrieve_payment_intent", "GET", "/v1/payment_intents/{id}", RetrievePaymentIntent,
               BodyEncoding.QUERY, detokenize_response=True),
        Action("confirm_payment_intent", "POST", "/v1/payment_intents/{id}/confirm", ConfirmPaymentIntent,
               _FORM, dlp_fields=("receipt_email",)),
        Action("create_refund", "POST", "/v1/refunds", CreateRefund, _FORM, dlp_fields=("metadata.*",)),
        Action("create_customer", "POST", "/v1/customers", CreateCustomer, _FORM,
               dlp_fields=("email", "name", "phone", "description", "metadata.*"), detokenize_response=True),
        Action("retrieve_balance", "GET", "/v1/balance", None, _QUERY),
        Action("list_payment_intents", "GET", "/v1/payment_intents", ListPaymentIntents, _QUERY, detokenize_response=True),
        Action("list_refunds", "GET", "/v1/refunds", ListRefunds, _QUERY),
        Action("list_customers", "GET", "/v1/customers", ListCustomers, _QUERY, dlp_fields=("email",),
               detokenize_response=True),
        Action("retrieve_customer", "GET", "/v1/customers/{id}", RetrievePaymentIntent, _QUERY, detokenize_response=True),
        Action("update_customer", "POST", "/v1/customers/{id}", UpdateCustomer, _FORM,
               dlp_fields=("email", "name", "phone", "description", "metadata.*"), detokenize_response=True),
    ),
)

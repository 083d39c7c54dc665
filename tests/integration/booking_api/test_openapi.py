"""`/openapi.json` documents every endpoint, and the API keeps to it (schemathesis)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.core.result import Ok

from booking_api.routes import openapi_document
from tests.support.api_client import bearer
from tests.support.processes import ServiceProcess

pytestmark = pytest.mark.timeout(120)

CONTRACT_OPERATIONS = {
    ("get", "/api/events"),
    ("get", "/api/events/{eventId}"),
    ("post", "/api/events"),
    ("post", "/api/bookings"),
    ("get", "/api/bookings"),
    ("get", "/api/bookings/{bookingId}"),
    ("delete", "/api/bookings/{bookingId}"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
}


def operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method, path) for path, item in doc["paths"].items() for method in item}


def test_document_lists_every_contract_endpoint(api: ServiceProcess) -> None:
    """The served document is OpenAPI 3 and has every endpoint of contract section 3."""
    doc = httpx.get(f"{api.http_url}/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    assert operations(doc) == CONTRACT_OPERATIONS
    assert doc == openapi_document()


def test_document_describes_auth_bodies_and_errors() -> None:
    """Protected operations name the bearer scheme, bodies refuse unknown fields, and the
    contract's error statuses are documented with the error schema."""
    doc = openapi_document()
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
    }
    create_booking = doc["paths"]["/api/bookings"]["post"]
    assert create_booking["security"] == [{"bearerAuth": []}]
    assert set(create_booking["responses"]) == {"201", "401", "404", "409", "422", "503"}
    error_ref = {"$ref": "#/components/schemas/Error"}
    assert create_booking["responses"]["409"]["content"]["application/json"]["schema"] == error_ref
    assert [p["name"] for p in create_booking["parameters"]] == ["Idempotency-Key"]
    new_booking = doc["components"]["schemas"]["NewBooking"]
    assert new_booking["additionalProperties"] is False
    assert new_booking["properties"]["seats"] == {
        "type": "integer",
        "description": "How many seats.",
        "default": 1,
        "minimum": 1,
        "maximum": 10,
    }
    assert set(doc["paths"]["/api/events"]["post"]["responses"]) >= {"201", "401", "403", "422"}
    assert set(doc["paths"]["/api/bookings/{bookingId}"]["delete"]["responses"]) >= {
        "200",
        "401",
        "404",
        "409",
    }
    assert doc["paths"]["/api/events"]["get"]["security"] == []


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_schemathesis_finds_no_error_and_no_undocumented_response(
    api: ServiceProcess, token: Callable[..., str], mode: GenerationMode
) -> None:
    """Generated valid and invalid requests, with admin, user and invalid tokens: never a 500,
    and every response matches its documented status, content type and schema."""
    admin = token(1, admin=True)
    for capacity in (1, 5, 1000):
        httpx.post(
            f"{api.http_url}/api/events",
            json={"name": "S", "capacity": capacity},
            headers=bearer(admin),
        ).raise_for_status()
    schema = schemathesis.openapi.from_url(f"{api.http_url}/openapi.json")
    tokens = [admin, token(2), "not-a-token", token(3, ttl_seconds=-5)]
    tested = 0
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operation = result.ok()
        if mode is GenerationMode.NEGATIVE and not _has_inputs(operation):
            continue
        run_operation(operation, api.http_url, tokens, mode)
        tested += 1
    assert tested >= 4


def _has_inputs(operation: Any) -> bool:
    definition = operation.definition.raw
    return bool(definition.get("parameters") or definition.get("requestBody"))


def run_operation(operation: Any, base_url: str, tokens: list[str], mode: GenerationMode) -> None:
    @given(case=operation.as_strategy(generation_mode=mode), chosen=st.sampled_from(tokens))
    @settings(
        max_examples=15,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def check(case: Any, chosen: str) -> None:
        case.call_and_validate(base_url=base_url, headers={"Authorization": f"Bearer {chosen}"})

    check()

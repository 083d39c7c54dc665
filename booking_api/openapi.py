"""The OpenAPI 3.0 document, built from the operations the app serves.

Each `Operation` names the `ObjectSchema`s its handler validates with and
returns, so `/openapi.json` describes exactly what the handlers enforce.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from booking_api.schemas import COMPONENTS, ERROR, Field, ObjectSchema

Access = Literal["anyone", "user", "admin"]

_ERROR_TEXT = {
    401: "Missing or invalid bearer token.",
    403: "The token lacks the admin role.",
    404: "No such resource (or not the caller's).",
    409: "The change conflicts with the current state.",
    422: "Invalid request: unknown field, wrong type, value out of range or malformed JSON.",
    503: "PostgreSQL (or, for /readyz, Redis) does not answer.",
}


@dataclass(frozen=True)
class Operation:
    """One method on one path, as documented and as served."""

    method: str
    path: str
    operation_id: str
    summary: str
    access: Access
    success_status: int
    success_description: str
    # The success body: a schema, a list of it, or a media type with free-form text.
    response: ObjectSchema | None = None
    response_is_list: bool = False
    response_media_type: str = "application/json"
    request: ObjectSchema | None = None
    path_params: tuple[Field, ...] = ()
    headers: tuple[Field, ...] = ()
    errors: tuple[int, ...] = ()

    def error_statuses(self) -> tuple[int, ...]:
        implied = set(self.errors)
        if self.access != "anyone":
            implied.add(401)
        if self.access == "admin":
            implied.add(403)
        if self.request is not None or self.headers:
            implied.add(422)
        if self.path_params:
            implied.add(404)
        return tuple(sorted(implied))

    def document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "operationId": self.operation_id,
            "summary": self.summary,
            "responses": self._responses(),
        }
        parameters = [_parameter("path", f) for f in self.path_params]
        parameters += [_parameter("header", f) for f in self.headers]
        if parameters:
            doc["parameters"] = parameters
        if self.request is not None:
            doc["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": self.request.ref_path}}},
            }
        doc["security"] = [] if self.access == "anyone" else [{"bearerAuth": []}]
        return doc

    def _responses(self) -> dict[str, Any]:
        responses = {str(self.success_status): self._success()}
        for status in self.error_statuses():
            responses[str(status)] = {
                "description": _ERROR_TEXT[status],
                "content": {"application/json": {"schema": {"$ref": ERROR.ref_path}}},
            }
        return responses

    def _success(self) -> dict[str, Any]:
        schema: dict[str, Any]
        if self.response is None:
            schema = (
                {"type": "string"}
                if self.response_media_type != "application/json"
                else {"type": "object"}
            )
        elif self.response_is_list:
            schema = {"type": "array", "items": {"$ref": self.response.ref_path}}
        else:
            schema = {"$ref": self.response.ref_path}
        return {
            "description": self.success_description,
            "content": {self.response_media_type: {"schema": schema}},
        }


def _parameter(location: str, spec: Field) -> dict[str, Any]:
    return {
        "name": spec.name,
        "in": location,
        "required": location == "path" or spec.required,
        "description": spec.description,
        "schema": {k: v for k, v in spec.json_schema().items() if k != "description"},
    }


def document(
    operations: list[Operation], extra_schemas: tuple[ObjectSchema, ...] = ()
) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        paths.setdefault(op.path, {})[op.method.lower()] = op.document()
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "seatcast booking API",
            "version": "1.0.0",
            "description": "Events, bookings and cancellations; every seat change is published "
            "to Redis for the WebSocket gateway.",
        },
        "paths": paths,
        "components": {
            "schemas": {s.name: s.json_schema() for s in (*COMPONENTS, *extra_schemas)},
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }

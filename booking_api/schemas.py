"""Request and response shapes, declared once.

The same `ObjectSchema` validates a request body in the handler and becomes
its JSON Schema in `/openapi.json`, so the document cannot drift from what the
API enforces. Validation is strict: unknown fields, wrong types (a bool is not
an integer), out-of-range values are refused with one clear message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from booking_api.errors import invalid

BIGINT_MAX = 2**63 - 1
MAX_SEATS_PER_BOOKING = 10
MAX_CAPACITY = 1_000_000
MAX_NAME_LENGTH = 200
# PostgreSQL text cannot hold NUL, and a name must show something.
NAME_PATTERN = r"^[^\u0000]*[^\s\u0000][^\u0000]*$"
BOOKING_ID_PATTERN = r"^BK-[0-9a-f]{1,64}$"
IDEMPOTENCY_KEY_PATTERN = r"^[\u0020-\u007e]{1,200}$"

FieldType = Literal["integer", "string", "object"]


@dataclass(frozen=True)
class Field:
    """One property: its JSON type, bounds, and whether a request must carry it."""

    name: str
    type: FieldType
    description: str
    required: bool = True
    # The value a request gets when it omits an optional field; None: no default.
    default: int | str | None = None
    minimum: int | None = None
    maximum: int | None = None
    min_length: int | None = None
    max_length: int | None = None
    pattern: str | None = None
    # What a value that misses `pattern` is told.
    pattern_hint: str = "has an invalid format"
    enum: tuple[str, ...] | None = None
    format: str | None = None
    # The nested object of a `type="object"` field.
    ref: ObjectSchema | None = None

    def json_schema(self) -> dict[str, Any]:
        if self.ref is not None:
            return {"$ref": self.ref.ref_path}
        schema: dict[str, Any] = {"type": self.type, "description": self.description}
        for key, value in (
            ("default", self.default),
            ("minimum", self.minimum),
            ("maximum", self.maximum),
            ("minLength", self.min_length),
            ("maxLength", self.max_length),
            ("pattern", self.pattern),
            ("format", self.format),
        ):
            if value is not None:
                schema[key] = value
        if self.enum is not None:
            schema["enum"] = list(self.enum)
        return schema

    def check(self, value: Any) -> Any:
        """The value when valid; raise a 422 `ApiError` naming the field otherwise."""
        if self.type == "integer":
            return self._check_int(value)
        if self.type == "string":
            return self._check_str(value)
        raise invalid(f"{self.name} cannot be sent in a request")

    def _check_int(self, value: Any) -> int:
        # bool is a subclass of int in Python, but `true` is not an integer in JSON.
        if isinstance(value, bool) or not isinstance(value, int):
            raise invalid(f"{self.name} must be an integer")
        if self.minimum is not None and value < self.minimum:
            raise invalid(f"{self.name} must be at least {self.minimum}")
        if self.maximum is not None and value > self.maximum:
            raise invalid(f"{self.name} must be at most {self.maximum}")
        return value

    def _check_str(self, value: Any) -> str:
        if not isinstance(value, str):
            raise invalid(f"{self.name} must be a string")
        if self.min_length is not None and len(value) < self.min_length:
            raise invalid(f"{self.name} must have at least {self.min_length} characters")
        if self.max_length is not None and len(value) > self.max_length:
            raise invalid(f"{self.name} must have at most {self.max_length} characters")
        if self.pattern is not None and not re.search(self.pattern, value):
            raise invalid(f"{self.name} {self.pattern_hint}")
        return value


@dataclass(frozen=True)
class ObjectSchema:
    """A JSON object with a fixed set of properties and nothing else."""

    name: str
    description: str
    fields: tuple[Field, ...] = field(default_factory=tuple)

    @property
    def ref_path(self) -> str:
        return f"#/components/schemas/{self.name}"

    def json_schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "description": self.description,
            "properties": {f.name: f.json_schema() for f in self.fields},
            "required": [f.name for f in self.fields if f.required],
            "additionalProperties": False,
        }

    def parse(self, document: Any) -> dict[str, Any]:
        """Validate a decoded request body; return every field, defaults filled in."""
        if not isinstance(document, dict):
            raise invalid("the body must be a JSON object")
        known = {f.name for f in self.fields}
        unknown = sorted(set(document) - known)
        if unknown:
            raise invalid(f"unknown field: {unknown[0]}")
        values: dict[str, Any] = {}
        for spec in self.fields:
            if spec.name in document:
                values[spec.name] = spec.check(document[spec.name])
            elif spec.required:
                raise invalid(f"{spec.name} is required")
            else:
                values[spec.name] = spec.default
        return values


# Requests.
NEW_EVENT = ObjectSchema(
    "NewEvent",
    "An event to create.",
    (
        Field(
            "name",
            "string",
            "What the event is called.",
            min_length=1,
            max_length=MAX_NAME_LENGTH,
            pattern=NAME_PATTERN,
            pattern_hint="must not be blank or contain NUL characters",
        ),
        Field("capacity", "integer", "How many seats it has.", minimum=1, maximum=MAX_CAPACITY),
    ),
)
NEW_BOOKING = ObjectSchema(
    "NewBooking",
    "Seats to book for the caller.",
    (
        Field("eventId", "integer", "The event to book.", minimum=1, maximum=BIGINT_MAX),
        Field(
            "seats",
            "integer",
            "How many seats.",
            required=False,
            default=1,
            minimum=1,
            maximum=MAX_SEATS_PER_BOOKING,
        ),
    ),
)

# Responses.
EVENT = ObjectSchema(
    "Event",
    "An event and its seats right now.",
    (
        Field("id", "integer", "The event id.", minimum=1, maximum=BIGINT_MAX),
        Field("name", "string", "What the event is called."),
        Field("capacity", "integer", "How many seats it has.", minimum=1, maximum=MAX_CAPACITY),
        Field("availableSeats", "integer", "Seats still free.", minimum=0, maximum=MAX_CAPACITY),
        Field(
            "seq",
            "integer",
            "How many seat changes the event has had (0 for a new one).",
            minimum=0,
        ),
    ),
)
BOOKING = ObjectSchema(
    "Booking",
    "A booking of seats by one user.",
    (
        Field("bookingId", "string", "Opaque id such as BK-7f3a9c.", pattern=BOOKING_ID_PATTERN),
        Field("eventId", "integer", "The booked event.", minimum=1, maximum=BIGINT_MAX),
        Field("userId", "integer", "The user who booked (the token's sub).", minimum=0),
        Field("seats", "integer", "How many seats.", minimum=1, maximum=MAX_SEATS_PER_BOOKING),
        Field("status", "string", "Whether the seats are held.", enum=("confirmed", "cancelled")),
        Field(
            "availableSeats",
            "integer",
            "The event's free seats right after this booking's last change.",
            minimum=0,
            maximum=MAX_CAPACITY,
        ),
        Field("createdAt", "string", "When it was booked (ISO-8601 UTC).", format="date-time"),
    ),
)
ERROR_DETAIL = ObjectSchema(
    "ErrorDetail",
    "What went wrong.",
    (
        Field("code", "string", "A snake_case code such as not_found or sold_out."),
        Field("message", "string", "An explanation for humans."),
    ),
)
ERROR = ObjectSchema(
    "Error",
    "The body of every failed request.",
    (Field("error", "object", "What went wrong.", ref=ERROR_DETAIL),),
)

STATUS = ObjectSchema(
    "Status",
    "The process's state.",
    (Field("status", "string", "ok or ready.", enum=("ok", "ready")),),
)

COMPONENTS = (NEW_EVENT, NEW_BOOKING, EVENT, BOOKING, ERROR_DETAIL, ERROR, STATUS)

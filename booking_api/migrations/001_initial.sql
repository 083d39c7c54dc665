-- Events, bookings, the outbox of unpublished seat changes, idempotency keys.

CREATE TABLE events (
    id              bigserial PRIMARY KEY,
    name            text        NOT NULL,
    capacity        integer     NOT NULL CHECK (capacity BETWEEN 1 AND 1000000),
    available_seats integer     NOT NULL,
    -- The number of the event's latest seat change; 0 for a new event.
    seq             bigint      NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (available_seats BETWEEN 0 AND capacity)
);

CREATE TABLE bookings (
    id              bigserial PRIMARY KEY,
    public_id       text        NOT NULL UNIQUE,
    event_id        bigint      NOT NULL REFERENCES events (id),
    user_id         bigint      NOT NULL,
    seats           integer     NOT NULL CHECK (seats BETWEEN 1 AND 10),
    status          text        NOT NULL CHECK (status IN ('confirmed', 'cancelled')),
    -- The event's free seats right after this booking's latest change.
    available_seats integer     NOT NULL,
    created_at      timestamptz NOT NULL,
    cancelled_at    timestamptz
);
CREATE INDEX bookings_by_user ON bookings (user_id, id);

-- One row per committed seat change not yet published to Redis; the relay
-- deletes a row once Redis has it, so the table stays small.
CREATE TABLE outbox (
    event_id        bigint      NOT NULL,
    seq             bigint      NOT NULL,
    type            text        NOT NULL,
    booking_id      text        NOT NULL,
    user_id         bigint      NOT NULL,
    seats           integer     NOT NULL,
    available_seats integer     NOT NULL,
    occurred_at     timestamptz NOT NULL,
    PRIMARY KEY (event_id, seq)
);

CREATE TABLE idempotency_keys (
    user_id      bigint      NOT NULL,
    key          text        NOT NULL,
    -- Which request the key was first used for: a different one is refused.
    request_hash text        NOT NULL,
    -- The first response; NULL only inside the transaction that books.
    status_code  integer,
    body         bytea,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);

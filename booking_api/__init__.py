"""The booking API: events, bookings and cancellations over PostgreSQL, published to Redis."""

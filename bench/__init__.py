"""Benchmarks: `python -m bench` (fan-out, `make bench`) and `python -m bench.bookings`."""

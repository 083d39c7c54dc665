"""One WebSocket gateway replica: sessions, a hub and one Redis fan-in per process."""

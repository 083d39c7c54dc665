"""The replica as a process: the app and its lifespan, uvicorn, the drain, metrics."""

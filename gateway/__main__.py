"""`python -m gateway`: one replica (or WORKERS processes sharing the port)."""

from __future__ import annotations

import logging

from gateway.process.server import run
from shared.logs import configure
from shared.settings import gateway_settings, load_or_exit


def main() -> None:
    settings = load_or_exit(gateway_settings, "gateway")
    configure(settings.log_level)
    logging.captureWarnings(True)
    run(settings)


if __name__ == "__main__":
    main()

"""`seatcast`: the terminal tool — mint tokens, watch events, book seats, run the local stack.

    seatcast token --sub 10 [--admin] [--ttl 3600]
    seatcast watch --event 42 [--event 43] [--since K] [--url ws://127.0.0.1:8001] [--token JWT]
    seatcast book --event 42 [--seats 2] [--api http://127.0.0.1:8000] [--token JWT]
    seatcast run [--api-port 8000] [--gateway-ports 8001,8002] [--data-dir .data]

`watch` and `book` use `--token`, else `$SEATCAST_TOKEN`, else mint one for
`--sub` from `$JWT_SECRET`. Errors are one line on stderr: exit status 1 for a
failure (refused, unreachable), 2 for bad arguments or settings.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import uuid
from collections.abc import Sequence
from typing import Any, NoReturn
from urllib.parse import urlsplit

from shared.messages import encode_text
from shared.settings import MIN_SECRET_BYTES
from shared.tokens import MAX_SUB_DIGITS, mint_token
from shared.toolbox.api_client import ApiRequestFailed, ApiUnreachable, check_base_url, request_json

DEFAULT_GATEWAY = "ws://127.0.0.1:8001"
DEFAULT_API = "http://127.0.0.1:8000"
DEFAULT_SUB = 10


def die(message: str, status: int = 1) -> NoReturn:
    print(f"seatcast: {message}", file=sys.stderr, flush=True)
    raise SystemExit(status)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1 or len(str(value)) > MAX_SUB_DIGITS:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    return 0 if text.strip() == "0" else positive_int(text)


def secret_from_env() -> str:
    secret = os.environ.get("JWT_SECRET", "")
    if not secret:
        hint = "for the `make run` stack: export JWT_SECRET=$(cat .data/jwt_secret)"
        die(f"JWT_SECRET is not set ({hint})", 2)
    if len(secret.encode()) < MIN_SECRET_BYTES:
        die(f"JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes long", 2)
    return secret


def resolve_token(args: argparse.Namespace) -> str:
    token = args.token or os.environ.get("SEATCAST_TOKEN", "").strip()
    if token:
        return str(token)
    if not os.environ.get("JWT_SECRET"):
        die("no token: pass --token, set SEATCAST_TOKEN, or set JWT_SECRET to mint one", 2)
    return mint_token(secret_from_env(), args.sub)


def gateway_urls(values: Sequence[str] | None) -> tuple[str, ...]:
    urls = [
        u.strip().rstrip("/")
        for value in values or [DEFAULT_GATEWAY]
        for u in value.split(",")
        if u.strip()
    ]
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            die(f"--url must look like ws://127.0.0.1:8001, got {url!r}", 2)
    return tuple(urls)


# ---------------- commands ----------------


def cmd_token(args: argparse.Namespace) -> int:
    ttl = None if args.ttl == 0 else args.ttl
    print(mint_token(secret_from_env(), args.sub, admin=args.admin, ttl_seconds=ttl), flush=True)
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    # Imported here: `token` and `book` must work without the websockets package.
    from shared.toolbox.watcher import WatchConfig, Watcher, WatchFailed

    config = WatchConfig(
        urls=gateway_urls(args.url),
        token=resolve_token(args),
        event_ids=tuple(dict.fromkeys(args.event)),
        since=args.since,
    )

    def emit(message: dict[str, Any]) -> None:
        print(encode_text(message), flush=True)

    def status(line: str) -> None:
        if not args.quiet:
            print(f"seatcast: {line}", file=sys.stderr, flush=True)

    try:
        asyncio.run(Watcher(config, emit, status).run())
    except WatchFailed as error:
        die(str(error))
    return 0


def cmd_book(args: argparse.Namespace) -> int:
    try:
        base = check_base_url(args.api)
    except ValueError as error:
        die(f"--api: {error}", 2)
    headers = {"Idempotency-Key": args.idempotency_key or f"cli-{uuid.uuid4()}"}
    try:
        booking = request_json(
            "POST",
            f"{base}/api/bookings",
            token=resolve_token(args),
            body={"eventId": args.event, "seats": args.seats},
            headers=headers,
        )
    except ApiUnreachable as error:
        die(f"booking API: {error}")
    except ApiRequestFailed as error:
        die(f"booking refused: {error}")
    print(encode_text(booking), flush=True)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from shared.toolbox.devstack import run_stack

    return run_stack(args)


# ---------------- arguments ----------------


def _add_identity(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--token", help="a JWT (default: $SEATCAST_TOKEN, else minted from $JWT_SECRET)"
    )
    parser.add_argument(
        "--sub",
        type=positive_int,
        default=DEFAULT_SUB,
        help=f"user id to mint a token for when none is given (default {DEFAULT_SUB})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seatcast", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    token = commands.add_parser("token", help="mint a token from $JWT_SECRET")
    token.add_argument("--sub", type=positive_int, required=True, help="the user id")
    token.add_argument("--admin", action="store_true", help="grant admin rights (role: admin)")
    token.add_argument(
        "--ttl", type=non_negative_int, default=3600, help="lifetime in seconds; 0: never expires"
    )
    token.set_defaults(handler=cmd_token)

    watch = commands.add_parser(
        "watch", help="print an event's messages as JSON lines, reconnecting"
    )
    watch.add_argument(
        "--event",
        type=positive_int,
        action="append",
        required=True,
        help="event id; repeat to watch several",
    )
    watch.add_argument("--since", type=non_negative_int, help="replay changes after this seq first")
    watch.add_argument(
        "--url",
        action="append",
        help=f"gateway replica, repeat or comma-separate for failover (default {DEFAULT_GATEWAY})",
    )
    watch.add_argument("--quiet", action="store_true", help="no connection status lines on stderr")
    _add_identity(watch)
    watch.set_defaults(handler=cmd_watch)

    book = commands.add_parser("book", help="book seats through the booking API")
    book.add_argument("--event", type=positive_int, required=True, help="event id")
    book.add_argument("--seats", type=positive_int, default=1, help="1 to 10 (default 1)")
    book.add_argument(
        "--api", default=DEFAULT_API, help=f"booking API base URL (default {DEFAULT_API})"
    )
    book.add_argument("--idempotency-key", help="send this Idempotency-Key (default: a new one)")
    _add_identity(book)
    book.set_defaults(handler=cmd_book)

    run = commands.add_parser("run", help="the whole local stack (what `make run` does)")
    run.add_argument("--host", default="127.0.0.1", help="listen address for every process")
    run.add_argument("--api-port", type=positive_int, default=8000)
    run.add_argument(
        "--gateway-ports", default="8001,8002", help="comma-separated, one replica each"
    )
    run.add_argument(
        "--data-dir",
        default=os.environ.get("SEATCAST_DATA_DIR", ".data"),
        help="embedded PostgreSQL/Redis data, logs and the JWT secret ($SEATCAST_DATA_DIR)",
    )
    run.set_defaults(handler=cmd_run)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        status = args.handler(args)
    except KeyboardInterrupt:
        status = 130
    raise SystemExit(status)


if __name__ == "__main__":
    main()

"""``imagen-emulator``: serve the Cloudflare Workers AI emulator from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from airflow_provider_imagen.emulator.app import create_app
from airflow_provider_imagen.emulator.faults import PRESETS, make_fault
from airflow_provider_imagen.emulator.state import DEFAULT_TOKEN, EmulatorConfig

if TYPE_CHECKING:
    from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of ``imagen-emulator``'s command line."""
    parser = argparse.ArgumentParser(
        prog="imagen-emulator",
        description="An offline emulator of the Cloudflare Workers AI API (Imagen 4, flux, SDXL).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=8787, help="port to listen on (default: 8787)")
    parser.add_argument("--token", default=DEFAULT_TOKEN, help=f"API token it accepts (default: {DEFAULT_TOKEN})")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds each generation takes (max 120)")
    parser.add_argument("--public-url", default=None, help="base of the image URLs it returns")
    parser.add_argument(
        "--failure-rate", type=float, default=0.0, help="share of API requests answered with a transient fault"
    )
    parser.add_argument(
        "--rate-limit-per-minute",
        type=float,
        default=None,
        help="the account's rate limit: requests over it get 429, code 3040 and Retry-After (default: none)",
    )
    parser.add_argument(
        "--rate-limit-burst", type=float, default=None, help="requests the limit accepts at once (default: 1 s worth)"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of the random failures")
    parser.add_argument(
        "--token-status", default="active", choices=["active", "disabled", "expired"], help="tokens/verify answer"
    )
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="PRESET",
        help=f"queue a fault for the next API request (repeatable); one of: {', '.join(sorted(PRESETS))}",
    )
    parser.add_argument(
        "--strict-inputs",
        action="store_true",
        help="refuse inputs a Cloudflare model's schema does not list (default: ignore and count them)",
    )
    parser.add_argument("--log-level", default="info", help="uvicorn log level")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run the emulator in the foreground until interrupted, and return the exit status.

    :param argv: the arguments (``sys.argv[1:]`` if ``None``).
    """
    args = build_parser().parse_args(argv)
    import uvicorn

    try:
        config = EmulatorConfig(
            token=args.token,
            latency=args.latency,
            public_url=args.public_url,
            failure_rate=args.failure_rate,
            token_status=args.token_status,
            seed=args.seed,
            rate_limit_per_minute=args.rate_limit_per_minute,
            rate_limit_burst=args.rate_limit_burst,
            strict_inputs=args.strict_inputs,
        )
        faults = [make_fault(name) for name in args.fault]
    except ValueError as exc:
        print(f"imagen-emulator: {exc}", file=sys.stderr)
        return 2
    app = create_app(config)
    app.state.emulator.queue(faults)
    connection = {
        "conn_type": "cloudflare_workers_ai",
        "host": f"http://{args.host}:{args.port}/client/v4",
        # The default token is a public test value, so the hint can be pasted as it is; a token of your own
        # is never printed.
        "password": args.token if args.token == DEFAULT_TOKEN else "<the --token you passed>",
        "extra": {"account_id": "emulator-account"},
    }
    print(f"Cloudflare Workers AI emulator on http://{args.host}:{args.port}/client/v4", file=sys.stderr)
    print(
        f"Point Airflow at it: AIRFLOW_CONN_CLOUDFLARE_WORKERS_AI_DEFAULT='{json.dumps(connection)}'", file=sys.stderr
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())

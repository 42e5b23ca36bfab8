"""``python -m cordtrio.backends.nng ADDRESS...``: run a standalone nng bus router."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os

import trio

from .router import open_nng_router


async def _serve(addresses: list[str], token: str | None) -> None:
    async with open_nng_router(*addresses, token=token) as router:
        print("cordtrio nng router listening on " + ", ".join(router.urls), flush=True)
        await trio.sleep_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cordtrio.backends.nng",
                                     description="Run a standalone cordtrio nng bus router.")
    parser.add_argument("addresses", nargs="+", metavar="ADDRESS",
                        help="where to listen, e.g. tcp://0.0.0.0:7400 ipc:///tmp/bus.ipc")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    parser.add_argument("--token-file", metavar="PATH",
                        help="file holding the bus token (default: $CORDTRIO_BUS_TOKEN)")
    args = parser.parse_args(argv)
    token = os.environ.get("CORDTRIO_BUS_TOKEN", "").strip() or None
    if args.token_file:
        with open(args.token_file, encoding="utf-8") as f:
            token = f.read().strip() or None
        if token is None:
            parser.error(f"--token-file {args.token_file}: the file is empty")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO)
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(_serve, args.addresses, token)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``python -m cordtrio.backends.nng ADDRESS...``: run a standalone nng bus router."""

from __future__ import annotations

import argparse
import contextlib
import logging

import trio

from .router import open_nng_router


async def _serve(addresses: list[str]) -> None:
    async with open_nng_router(*addresses) as router:
        print("cordtrio nng router listening on " + ", ".join(router.urls), flush=True)
        await trio.sleep_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cordtrio.backends.nng",
                                     description="Run a standalone cordtrio nng bus router.")
    parser.add_argument("addresses", nargs="+", metavar="ADDRESS",
                        help="where to listen, e.g. tcp://0.0.0.0:7400 ipc:///tmp/bus.ipc")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO)
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(_serve, args.addresses)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

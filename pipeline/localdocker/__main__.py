"""``python -m pipeline.localdocker images``: build the local images (on $DOCKER_HOST's engine, or a private one
started for the build); ``python -m pipeline.localdocker engine``: run a private engine until interrupted."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from dataclasses import asdict

from pipeline.localdocker.engine import engine_for_tests, start_private_engine
from pipeline.localdocker.images import build_all


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.localdocker", description=__doc__)
    parser.add_argument("command", choices=["images", "engine"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.command == "engine":
        engine = start_private_engine()
        print(f"export DOCKER_HOST={engine.url}", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            while True:
                time.sleep(3600)
        finally:
            engine.stop()
    engine = engine_for_tests()
    try:
        started = time.monotonic()
        images = build_all(engine.client())
        print(json.dumps({**asdict(images), "seconds": round(time.monotonic() - started, 1)}))
    finally:
        engine.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

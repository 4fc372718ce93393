"""``python -m pmp_scrapy.simulator``: run the simulator as a standalone server."""

from __future__ import annotations

import argparse
import ipaddress
import signal
import sys
import threading
from types import FrameType

from .cli_help import DESCRIPTION, epilog
from .scenario import Scenario
from .server import Simulator


def _is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, serve until SIGTERM/SIGINT; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m pmp_scrapy.simulator", description=DESCRIPTION,
                                     epilog=epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to bind; 0 (default) picks a free one")
    parser.add_argument("--scenario", metavar="FILE.json", help="scenario JSON file (format below)")
    parser.add_argument("--seed", type=int, default=42,
                        help="seed of the generated data and latency jitter (default 42)")
    parser.add_argument("--allow-remote", action="store_true",
                        help="allow binding a non-loopback address")
    args = parser.parse_args(argv)
    if not args.allow_remote and not _is_loopback(args.host):
        print(f"error: refusing to bind non-loopback host {args.host} without --allow-remote",
              file=sys.stderr)
        return 1
    try:
        scenario = Scenario.from_file(args.scenario) if args.scenario else Scenario()
    except (OSError, ValueError) as exc:
        print(f"error: bad scenario file {args.scenario}: {' '.join(str(exc).split())}",
              file=sys.stderr)
        return 1
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        sim = Simulator(scenario, seed=args.seed, host=args.host, port=args.port).start()
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    print(f"PMP simulator listening on {sim.url}", flush=True)
    print(f"client_id {scenario.client_id}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

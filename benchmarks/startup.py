"""Benchmark: how long ``scrapy`` commands of this project take to start, as subprocesses
(Python, Scrapy, the command walk and the project's imports; the work itself is small).

Each command runs ``--runs`` times per checkout and the medians are printed side by side, wall
and CPU (user + system of the subprocess). ``--before DIR`` adds a column for another checkout
(for instance ``git archive <commit> | tar -x -C DIR``) run the same way.

    python benchmarks/startup.py                          # this checkout, 5 runs each
    python benchmarks/startup.py --before /tmp/old-tree   # old and new side by side

``scrapy status`` and ``scrapy report --system`` read a small database (300 systems) built
once here with :func:`report.build`, so the figures are start-up, not queries.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

COMMANDS: tuple[tuple[str, ...], ...] = (
    ("version",), ("report", "--help"), ("status",), ("report",), ("report", "--system", "20001"),
    ("crawl", "--help"),
)


def run_once(tree: Path, args: tuple[str, ...], database_url: str) -> tuple[float, float]:
    """Wall and CPU seconds of one ``python -m scrapy ARGS`` in ``tree``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PMP_")}
    env.update({"PYTHONPATH": str(tree), "SCRAPY_SETTINGS_MODULE": "pmp_scrapy.settings",
                "PMP_DATABASE_URL": database_url})
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "scrapy", *args], cwd=tree, env=env, check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv: list[str] | None = None) -> int:
    """Print the medians; returns 0."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--before", type=Path, help="another checkout to time the same way")
    options = parser.parse_args(argv)
    from report_data import Estate, build  # the report benchmark's database builder

    trees = [("before", options.before.resolve())] if options.before else []
    trees.append(("now", ROOT))
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'small.db'}"
        build(url, Estate(300))
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; median of {options.runs} runs, "
              "wall s (CPU s)")
        print(f"  {'scrapy ...':<28}" + "".join(f"{name:>18}" for name, _ in trees))
        for args in COMMANDS:
            cells = []
            for _, tree in trees:
                runs = [run_once(tree, args, url) for _ in range(options.runs)]
                wall = statistics.median(r[0] for r in runs)
                cpu = statistics.median(r[1] for r in runs)
                cells.append(f"{wall:>9.2f} ({cpu:4.2f})")
            print(f"  {' '.join(args):<28}" + "".join(f"{cell:>18}" for cell in cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

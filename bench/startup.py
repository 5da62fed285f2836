"""How long the command line takes before it does anything (issue 33: under 1.5 s for
``--help`` and before the first model load): each command is started ``--repeat`` times as a
fresh process, one at a time, and its wall-clock time measured with ``time.perf_counter``;
prints one JSON object with every time and the median per command.

    python bench/startup.py --repeat 5

Commands: ``attendo --help``, ``attendo --version``, ``attendo train --help``,
``attendo translate --help``, ``python -c "import attendo"`` (the package's names load on first
use) and, for scale, ``python -c "import torch"`` (what the first model load costs at least).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "attendo --help": ["attendo", "--help"],
    "attendo --version": ["attendo", "--version"],
    "attendo train --help": ["attendo", "train", "--help"],
    "attendo translate --help": ["attendo", "translate", "--help"],
    "import attendo": [sys.executable, "-c", "import attendo"],
    "import torch (for scale)": [sys.executable, "-c", "import torch"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    exe = shutil.which("attendo") or "attendo"
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.repeat):  # interleaved, so a busy moment hits every command alike
        for name, cmd in COMMANDS.items():
            cmd = [exe, *cmd[1:]] if cmd[0] == "attendo" else cmd
            t = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            times[name].append(round(time.perf_counter() - t, 3))
    print(json.dumps({
        "machine": platform.processor() or platform.machine(), "python": platform.python_version(),
        "repeat": args.repeat,
        "median_s": {k: statistics.median(v) for k, v in times.items()}, "times_s": times,
    }, indent=1))


if __name__ == "__main__":
    main()

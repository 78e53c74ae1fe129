"""Reading benchmark results and formatting report cells, shared by the report writers of
scripts/bench-engine.sh and scripts/bench-containers.sh.

Each daemon's results live in RES/<daemon>-<driver>/: hyperfine's JSON per operation
(<name>.json, with <name>.err when it failed) and small text files."""

import json
import os


class Results:
    def __init__(self, res):
        self.res = res

    def read(self, *parts):
        """The stripped text of RES/parts... (an absolute path is taken as it is), or None."""
        try:
            with open(os.path.join(self.res, *parts)) as f:
                return f.read().strip()
        except OSError:
            return None

    def median_ms(self, d, name):
        """hyperfine's median of operation `name` of daemon `d`, in ms, or None."""
        try:
            with open(os.path.join(self.res, d, name + ".json")) as f:
                return json.load(f)["results"][0]["median"] * 1000
        except (OSError, ValueError, KeyError, IndexError):
            return None

    def error(self, d, name):
        """The last line hyperfine (or the workload) printed on failure."""
        e = self.read(d, name + ".err") or ""
        lines = [line for line in e.splitlines() if line.strip()]
        return lines[-1][:200] if lines else "no output"


def ratio(s, d):
    return None if s is None or d is None or d == 0 else s / d


def fmt(v, unit="ms"):
    if v is None:
        return "failed"
    return f"{v:.1f} {unit}" if unit else f"{v:.2f}"


def mib(kib):
    return f"{kib / 1024:.1f} MiB"

"""Summarise py-spy collapsed stacks (``run.py --profile DIR``) into the functions that cost.

    python bench/profile_summary.py DIR/scale-1000.txt [--top 25] [--match microstackd]

Prints, as shares of all samples (py-spy records only threads that are
running, so these are shares of the process's CPU time): the heaviest
functions by self time (the leaf of each stack), and by inclusive time
(on the stack at all), optionally only frames whose file matches --match.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def frames(stack: str) -> list[str]:
    """``func (path/file.py:12)`` frames, without line numbers; process/thread frames dropped."""
    out = []
    for raw in stack.split(";"):
        m = _FRAME.match(raw)
        if m is None or raw.startswith(("process ", "thread ")):
            continue
        path = m.group("file")
        short = "/".join(path.split("/")[-2:])
        out.append(f"{m.group('func')} ({short})")
    return out


def summarise(path: Path, top: int, match: str) -> str:
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        m = _LINE.match(line)
        if m is None:
            continue
        count = int(m.group("count"))
        stack = frames(m.group("stack"))
        if not stack:
            continue
        total += count
        self_time[stack[-1]] += count
        for frame in set(stack):
            inclusive[frame] += count
    lines = [f"{path}: {total} samples"]
    for title, counter in (("self", self_time), ("inclusive", inclusive)):
        lines.append(f"\n-- top {top} by {title} time --")
        shown = 0
        for frame, count in counter.most_common():
            if match and match not in frame:
                continue
            lines.append(f"{100 * count / max(total, 1):6.1f}%  {frame}")
            shown += 1
            if shown >= top:
                break
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--match", default="", help="only frames containing this text")
    args = parser.parse_args()
    print(summarise(args.profile, args.top, args.match))


if __name__ == "__main__":
    main()

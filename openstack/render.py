#!/usr/bin/env python3
"""Render a config template: render.py TEMPLATE OUTPUT key=value ...

Templates use string.Template placeholders (${name}).  Every placeholder
must be given (a missing one is an error, exit 1); extra keys are ignored,
so callers can pass one common set.  The output is written 0640.
"""

import os
import string
import sys


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    src, dst, pairs = argv[1], argv[2], argv[3:]
    values = {}
    for p in pairs:
        k, sep, v = p.partition("=")
        if not sep:
            print(f"render.py: bad argument {p!r} (want key=value)", file=sys.stderr)
            return 2
        values[k] = v
    with open(src, encoding="utf-8") as f:
        text = f.read()
    try:
        out = string.Template(text).substitute(values)
    except KeyError as e:
        print(f"render.py: {src}: no value for placeholder {e}", file=sys.stderr)
        return 1
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    tmp = dst + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(out)
    os.chmod(tmp, 0o640)
    os.replace(tmp, dst)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

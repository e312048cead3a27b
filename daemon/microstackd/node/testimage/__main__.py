"""python -m microstackd.node.testimage build [--cache DIR] [--link PATH]

Build the test image (or find it in the cache) and print where it is; with
``--link``, also point PATH at it (the control role's ``test-image`` step)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from microstackd import errors
from microstackd.node import testimage


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m microstackd.node.testimage")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build the test image, or reuse the cached one")
    build.add_argument("--cache", type=Path, help=f"default: ${testimage.CACHE_ENV} or "
                       f"{testimage.DEFAULT_CACHE}")  # fmt: skip
    build.add_argument("--link", type=Path, help="a symlink to make to the image")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        built = testimage.build(args.cache)
        if args.link:
            testimage.link(built, args.link)
    except errors.MicrostackError as exc:
        print(f"test image: {exc.message}", file=sys.stderr)
        return 1
    data = json.loads(built.manifest.read_text())
    how = "cached" if built.cached else f"built in {time.monotonic() - started:.1f} s"
    kernel = data["packages"][0]
    print(
        f"test image {built.image} ({how}; {data['size'] >> 20} MiB, sha256 "
        f"{data['sha256'][:16]}…, kernel {kernel['name']} {kernel['version']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env bash
# Lint the gRPC API (protos/) with buf, configured by buf.yaml, then check it
# against the v1 baseline: protos/baseline/microstack.cluster.v1.binpb is the
# API as first published (a buf image, `buf build -o`), and no change may
# break a client built against it (buf's FILE rules: no field renumbered,
# renamed or retyped, no method or message removed). Adding is fine. Only a
# new package version (v2) gets a new baseline.
#
# buf comes from the npm registry (@bufbuild/buf, which carries the buf
# binary for this platform) and is installed into .buf-tools/ on first use;
# that directory is local tooling, not part of the source.
# Usage: scripts/lint-protos.sh [extra buf lint flags, e.g. --error-format=json]
set -euo pipefail
cd "$(dirname "$0")/.."

BUF_VERSION=${BUF_VERSION:-1.75.0}
TOOLS=.buf-tools
BUF="$TOOLS/node_modules/.bin/buf"

if ! [ -x "$BUF" ] || [ "$("$BUF" --version 2>/dev/null)" != "$BUF_VERSION" ]; then
    command -v npm >/dev/null || {
        echo "lint-protos: npm is needed to install buf (apt-get install npm)" >&2
        exit 1
    }
    echo "lint-protos: installing @bufbuild/buf@$BUF_VERSION into $TOOLS/" >&2
    mkdir -p "$TOOLS"
    npm install --prefix "$TOOLS" --no-save --no-audit --no-fund --loglevel=error \
        "@bufbuild/buf@$BUF_VERSION" >&2
fi

"$BUF" lint "$@"
"$BUF" breaking "$@" --against protos/baseline/microstack.cluster.v1.binpb

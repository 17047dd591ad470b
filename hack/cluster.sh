#!/usr/bin/env bash
# Local control plane for tests and the demo: up | down | env | status.
#   eval "$(hack/cluster.sh up | xargs -I{} echo source {})"   # or: source "$(hack/cluster.sh up)"
exec env PYTHONPATH="$(cd "$(dirname "$0")" && pwd)${PYTHONPATH:+:$PYTHONPATH}" \
  python3 -m loraf_dev.cluster "$@"

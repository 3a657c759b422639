#!/usr/bin/env bash
# Runs the test suite inside the project venv with ROS 2 isolated to this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${EVIT_VENV:-$PWD/.venv}
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_LOG_DIR=${ROS_LOG_DIR:-$(mktemp -d /tmp/evit-roslog.XXXX)}
export PYTHONUNBUFFERED=1
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider --timeout=600 "$@" test

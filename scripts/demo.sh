#!/usr/bin/env bash
# KVStash demo. `./run.sh demo` builds build/release and runs this script from the repo root.
# Sections: the connector demo (scripts/demo_connector.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/demo_connector.sh

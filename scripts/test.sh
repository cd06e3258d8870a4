#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it: set-up check, formatting, lints, then the unit and
# integration tests against an ephemeral PostgreSQL cluster the harness starts itself.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
echo "[test] cargo fmt --check"
cargo fmt --all -- --check
echo "[test] cargo clippy (pedantic, warnings are errors)"
cargo clippy --all-targets --all-features -- -D warnings -W clippy::pedantic
echo "[test] cargo test"
cargo test --all-targets

#!/usr/bin/env bash
# The expand/contract figures of the 100,000-row rename + retype under two 10-client write
# loads (one per application version): phase times, how long each step held its locks, and the
# clients' p99 latency before and during expand and complete. Runs the integration test that
# asserts the behaviour, ROUNDS times (default 3), and prints its measurement line.
#
#   bench/expand.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
cargo test --test it --no-run --quiet
for round in $(seq 1 "$rounds"); do
    echo "round $round:"
    cargo test --quiet --test it -- --exact \
        expand::two_app_versions_write_through_a_rename_and_retype_without_a_failed_transaction \
        --nocapture 2>&1 | grep '^expand:' | sed 's/; /\n    /g'
done

#!/usr/bin/env bash
# Runs `cargo xtask ci`: fmt, clippy, the README's test command (`cargo xtask test`, which
# installs and starts PostgreSQL, RabbitMQ and kinesalite on 127.0.0.1), a chaos soak, docs, the demo, and
# `cargo package` for every publishable crate. Prints the time each step took.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
start=$(date +%s)
cargo xtask ci
echo "ci/run-ci.sh: finished in $(( $(date +%s) - start )) s"

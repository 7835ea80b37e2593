#!/usr/bin/env bash
# Runs every test on a fresh machine: installs what the tests need, then formatting,
# lints and the whole test suite. `.ci/run` calls this same script.
#
# Needs: the Rust toolchain (cargo, rustfmt, clippy) and python3 (for the AWS CLI,
# which the tests use as an independent client of the gateway).
set -euo pipefail
cd "$(dirname "$0")/.."

cache="${XDG_CACHE_HOME:-$HOME/.cache}/session-agent"
mkdir -p "$cache"

# The real AWS CLI, from PyPI, in a private virtualenv (no system packages touched).
if ! command -v aws >/dev/null 2>&1; then
  venv="$cache/awscli-venv"
  if [[ ! -x $venv/bin/aws ]]; then
    echo "==> installing the AWS CLI into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check awscli
  fi
  export PATH="$venv/bin:$PATH"
fi
echo "==> $(aws --version 2>&1)"

echo "==> rustfmt"
cargo fmt --all -- --check

echo "==> clippy"
cargo clippy --locked --all-targets -- -D warnings

echo "==> rustdoc"
RUSTDOCFLAGS="-D warnings" cargo doc --locked --no-deps --quiet

echo "==> tests"
# Doc tests are not part of --all-targets; run them first so the suite's summary is last.
cargo test --locked --doc
cargo test --locked --all-targets

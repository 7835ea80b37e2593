# Sourced by scripts/test.sh and scripts/bench.sh: `localstack_up VENV_DIR` makes sure
# LocalStack answers on 127.0.0.1:4566 (pinned, host mode; see ./start), reusing one that
# already runs, and stops it when the calling script exits if this call started it.
localstack_up() {
  local state
  state=$("$(dirname "${BASH_SOURCE[0]}")/start" "$1")
  if [[ $state == running* ]]; then
    localstack_pid=${state#running }
    trap 'kill "$localstack_pid" 2>/dev/null || true; wait "$localstack_pid" 2>/dev/null || true' EXIT
    echo "    started (pid $localstack_pid)"
  else
    echo "    already running; reused"
  fi
}

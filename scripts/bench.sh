#!/usr/bin/env bash
# Runs the benchmarks on a fresh machine and prints their figures: the system benchmark
# (gateway + agent + client over loopback, recording to the spool and streaming to
# CloudWatch Logs in LocalStack; see benches/system/main.rs) and the criterion benches
# of the codec and the recorder.
#
# Usage: sudo bash scripts/bench.sh [--write-docs] [--only STEP,...] [--sessions N,...]
#                                   [--no-criterion]
#   --write-docs    also rewrite the results in docs/benchmarks.md and the plot
#                   docs/benchmarks-scaling.svg
#   --only STEPS    system steps to run: idle, start, echo, paste, streaming,
#                   throughput, scaling (default: all)
#   --sessions N,.. session counts of the scaling step (default: 1,10,100,1000)
#   --no-criterion  skip the criterion benches
#
# Needs root (sessions run as ssm-user, which the agent creates, as in production),
# the Rust toolchain, python3 3.11 (LocalStack), curl and script(1) from util-linux.
# Takes about 15 minutes on 2 cores, most of it the 1000-session step and the
# 200 MB floods.
set -euo pipefail
cd "$(dirname "$0")/.."

system_args=()
criterion=1
while (($#)); do
  case $1 in
    --write-docs) system_args+=(--write-docs) ;;
    --only) system_args+=(--only "${2:?--only needs steps}"); shift ;;
    --sessions) system_args+=(--sessions "${2:?--sessions needs counts}"); shift ;;
    --no-criterion) criterion=0 ;;
    -h | --help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if [[ $(id -u) != 0 ]]; then
  echo "run as root: the agent runs sessions as ssm-user, as in production" >&2
  exit 1
fi
if ! command -v script >/dev/null 2>&1; then
  echo "script(1) is missing: install util-linux (the throughput reference)" >&2
  exit 1
fi
# 1000 sessions need a few thousand descriptors (the packaged unit sets LimitNOFILE=65536).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

cache="${XDG_CACHE_HOME:-$HOME/.cache}/session-agent"
mkdir -p "$cache"
echo "==> LocalStack"
source scripts/localstack/up.sh
localstack_up "$cache/localstack-venv"
if [[ -z ${localstack_pid:-} ]]; then
  echo "    note: this LocalStack was already running. One that has served test suites can take" >&2
  echo "    seconds per CloudWatch call, which shows in session start and streaming delay:" >&2
  echo "    stop it and run again for figures worth comparing." >&2
fi

echo "==> system benchmark (release build)"
cargo bench --locked --bench system -- "${system_args[@]}"

if ((criterion)); then
  echo "==> criterion: codec and recorder"
  cargo bench --locked --bench codec --bench recorder -- --warm-up-time 1 --measurement-time 3
fi

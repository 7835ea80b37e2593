#!/usr/bin/env bash
# Runs every test on a fresh machine: installs what the tests need, then formatting,
# lints and the whole test suite. `.ci/run` calls this same script.
#
# Needs: the Rust toolchain (cargo, rustfmt, clippy), python3 3.11 (for the AWS CLI,
# which the tests use as an independent client of the gateway, and for LocalStack, which
# plays S3 and CloudWatch Logs for the recording tests) and curl.
set -euo pipefail
cd "$(dirname "$0")/.."

cache="${XDG_CACHE_HOME:-$HOME/.cache}/session-agent"
mkdir -p "$cache"
# One target directory for every build below, the fuzz crate's included (it reuses the
# test build's dependencies from it).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"

# Each step is timed; the times are printed at the end (README: where a run's time goes).
step_names=()
step_secs=()
step_start=$SECONDS
step() {
  local took=""
  if ((${#step_names[@]})); then
    step_secs+=($((SECONDS - step_start)))
    took=" (the step before took ${step_secs[-1]} s; ${SECONDS} s so far)"
  fi
  step_names+=("$1")
  step_start=$SECONDS
  echo "==> $1$took"
}

step "AWS CLI"
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
echo "    $(aws --version 2>&1)"

# LocalStack on 127.0.0.1:4566 (host mode, pinned in scripts/localstack/), reused when one
# is already running; stopped at exit when this script started it.
step "LocalStack"
source scripts/localstack/up.sh
localstack_up "$cache/localstack-venv"
# The outage test starts, stops and restarts a LocalStack of its own (port 4576) from
# the same virtualenv.
export SESSION_AGENT_LOCALSTACK_VENV="$cache/localstack-venv"

# The packaging tests (tests/it/packaging.rs) build the .deb and the .rpm from the binary
# under test with the real tools, install the .deb with dpkg into a scratch root and
# query the .rpm with rpm: install the tools when missing (pinned).
step "packaging tools"
# cargo-deb and cargo-generate-rpm are compiled from source when missing (no prebuilt
# binaries are published where this machine can fetch them): several minutes of a cold
# run. They are built in the background, in a target directory of their own that they
# share, while the steps up to the test build run (those leave a core idle for long
# stretches: one big crate at a time, linking), and waited for before the tests.
tools_log="$cache/packaging-tools.log"
install_packaging_tools() {
  export CARGO_TARGET_DIR="$cache/tools-target"
  if ! cargo deb --version >/dev/null 2>&1; then
    cargo install --locked --quiet cargo-deb@3.8.0
  fi
  if ! cargo generate-rpm --version >/dev/null 2>&1; then
    cargo install --locked --quiet cargo-generate-rpm@0.21.1
  fi
}
tools_pid=
if ! cargo deb --version >/dev/null 2>&1 || ! cargo generate-rpm --version >/dev/null 2>&1; then
  echo "    installing cargo-deb and cargo-generate-rpm in the background (log: $tools_log)"
  install_packaging_tools >"$tools_log" 2>&1 &
  tools_pid=$!
fi
for tool in dpkg dpkg-query systemctl systemd-analyze strip rpm; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "    installing Debian's packages for $tool"
    apt-get install -y -q --no-install-recommends dpkg systemd binutils rpm >/dev/null
    break
  fi
done

# A real sshd and ssh/scp for the test of AWS-StartSSHSession through `connect` as ssh's
# ProxyCommand (tests/it/client_port.rs); the sshd the test runs is its own, on a loopback
# port, for the test's key only.
if ! [[ -x /usr/sbin/sshd ]] || ! command -v scp >/dev/null 2>&1; then
  echo "==> installing Debian's openssh-server and openssh-client"
  apt-get install -y -q --no-install-recommends openssh-server openssh-client >/dev/null ||
    echo "    could not install OpenSSH: the ssh test will say it was SKIPPED"
fi

# A real browser for the test of `export --html` (tests/it/export.rs): Debian's Chromium,
# run headless on the page's file with no network. Not pinned to a version: Debian's
# security archive keeps only the current one (the player it runs is the pinned part,
# vendored in assets/asciinema-player/).
if ! command -v chromium >/dev/null 2>&1; then
  echo "==> installing Debian's chromium"
  apt-get install -y -q --no-install-recommends chromium >/dev/null ||
    echo "    could not install Chromium: the browser tests will say they were SKIPPED"
fi

step "rustfmt"
cargo fmt --all -- --check

step "clippy"
cargo clippy --locked --all-targets -- -D warnings

# The Windows layer (src/windows/, src/session/*_windows.rs) cannot run here, but it is
# type-checked and linted for Windows on every run, so it cannot rot unseen. ring (under
# rustls) builds C for the target, hence MinGW's gcc. If the target cannot be installed
# (no network to the Rust distribution server), say so loudly and go on.
step "clippy for Windows (x86_64-pc-windows-gnu: type-check and lints, no run)"
if ! rustup target list --installed 2>/dev/null | grep -qx x86_64-pc-windows-gnu; then
  rustup target add x86_64-pc-windows-gnu >/dev/null 2>&1 || true
fi
if ! command -v x86_64-w64-mingw32-gcc >/dev/null 2>&1; then
  echo "    installing Debian's gcc-mingw-w64-x86-64"
  apt-get install -y -q --no-install-recommends gcc-mingw-w64-x86-64 >/dev/null || true
fi
if rustup target list --installed 2>/dev/null | grep -qx x86_64-pc-windows-gnu &&
  command -v x86_64-w64-mingw32-gcc >/dev/null 2>&1; then
  cargo clippy --locked --target x86_64-pc-windows-gnu --lib --bins -- -D warnings
else
  echo "    SKIPPED: the x86_64-pc-windows-gnu target or MinGW gcc could not be installed"
fi

# The Windows build, run (tests/it/wine.rs): session-agent.exe under Debian's Wine 8
# against the Linux gateway, client and LocalStack — version, config check, doctor, a
# recorded cmd.exe session through ConPTY, the service through Wine's service control
# manager — and the MSI (packaging/windows/) built with wixl, checked with msiinfo and
# installed and removed with Wine's msiexec. Wine runs headless (no display: Wine's
# console programs and services need none) in a fresh private prefix for this run,
# removed at exit (wineboot and the tests: about 30 s). The exe is the debug build, not
# the release one: with the cached target directory only the crate itself is rebuilt,
# about 17 s after a change where the release profile's fat LTO takes about 5 min
# (measured on two busy cores; from scratch both take about 11 min), and what it tests
# (Win32 calls, ConPTY, the SCM, the MSI) does not depend on optimisation. The release
# exe passes the same tests.
step "Windows build under Wine (x86_64-pc-windows-gnu debug build, Wine, wixl)"
if ! [[ -x /usr/lib/wine/wine64 ]] && ! command -v wine64 >/dev/null 2>&1 ||
  ! command -v wixl >/dev/null 2>&1 || ! command -v msiinfo >/dev/null 2>&1; then
  echo "    installing Debian's wine64, wixl and msitools"
  apt-get install -y -q --no-install-recommends wine64 wixl msitools >/dev/null || true
fi
if rustup target list --installed 2>/dev/null | grep -qx x86_64-pc-windows-gnu &&
  command -v x86_64-w64-mingw32-gcc >/dev/null 2>&1 &&
  { [[ -x /usr/lib/wine/wine64 ]] || command -v wine64 >/dev/null 2>&1; }; then
  cargo build --locked --quiet --target x86_64-pc-windows-gnu --bin session-agent
  export SESSION_AGENT_WINDOWS_EXE="$CARGO_TARGET_DIR/x86_64-pc-windows-gnu/debug/session-agent.exe"
  wine_tmp=$(mktemp -d)
  export SESSION_AGENT_WINEPREFIX="$wine_tmp/prefix"
  # At exit: end this prefix's Wine processes (wineserver -k), then delete it; and
  # still run the exit trap set before (LocalStack's).
  wine_cleanup="WINEPREFIX='$SESSION_AGENT_WINEPREFIX' /usr/lib/wine/wineserver -k 2>/dev/null || true; rm -rf '$wine_tmp'"
  previous_exit_trap=$(trap -p EXIT)
  if [[ -n $previous_exit_trap ]]; then
    eval "set -- $previous_exit_trap"
    wine_cleanup="$wine_cleanup; $3"
    set --
  fi
  trap "$wine_cleanup" EXIT
  echo "    $SESSION_AGENT_WINDOWS_EXE; prefix $SESSION_AGENT_WINEPREFIX (made by the first test)"
else
  echo "    SKIPPED: the Windows target, MinGW gcc or Wine could not be installed (tests/it/wine.rs says SKIPPED)"
fi

step "rustdoc"
RUSTDOCFLAGS="-D warnings" cargo doc --locked --no-deps --quiet

if [[ -n $tools_pid ]]; then
  step "packaging tools (waiting for the background install)"
  if ! wait "$tools_pid"; then
    cat "$tools_log"
    echo "installing cargo-deb or cargo-generate-rpm failed (above)" >&2
    exit 1
  fi
fi

step "build tests"
cargo test --locked --all-targets --no-run

step "tests"
# Doc tests are not part of --all-targets; run them first so the suite's summary is last.
cargo test --locked --doc
cargo test --locked --all-targets

# Hostile input: every fuzz target (frame decoder, JSON payloads and the session
# document, recording readers, smux) runs for a fixed time from its seed corpus; a crash
# fails the run and leaves the input in fuzz/artifacts/<target>/. New inputs found are
# kept in $cache/fuzz-corpus (read-only seeds stay in git). The targets are libFuzzer
# binaries built by plain cargo with fuzz/sancov-rustc as the compiler wrapper, which
# instruments only our code: the dependencies are the ones the test build above already
# compiled (cargo-fuzz instruments every crate and so built the whole dependency graph a
# second time, plus cargo-fuzz itself: about 6 minutes of a cold run on 2 cores). A debug
# build without a sanitizer (the crate forbids unsafe code): overflow checks and
# assertions on.
fuzz_seconds=${FUZZ_SECONDS:-30}
step "fuzz (${fuzz_seconds} s per target)"
python3 - <<'PY'
# The fuzz build reuses the test build's dependencies only where fuzz/Cargo.lock pins the
# same versions as Cargo.lock: a drift costs build time, not correctness, so say so.
import re
def pins(path):
    text = open(path).read()
    return dict(re.findall(r'name = "([^"]+)"\nversion = "([^"]+)"', text))
main, fuzz = pins("Cargo.lock"), pins("fuzz/Cargo.lock")
drift = sorted(n for n in main.keys() & fuzz.keys() if main[n] != fuzz[n])
drift += sorted(n + " (missing)" for n in main.keys() - fuzz.keys())
if drift:
    print("    NOTE: fuzz/Cargo.lock pins other versions than Cargo.lock for " + ", ".join(drift)
          + ": the fuzz build compiles those again. Resync: cp Cargo.lock fuzz/ && "
          + "cargo build --manifest-path fuzz/Cargo.toml")
PY
fuzz_targets=(decode_frame payloads recordings smux)
# Not --locked: when Cargo.lock gains a package (a new dependency of the main crate), the
# fuzz lock gets it added here rather than failing the run; the check above says when to
# resync the committed one.
RUSTC_WRAPPER="$PWD/fuzz/sancov-rustc" cargo build --quiet --manifest-path fuzz/Cargo.toml --bins
# Each libFuzzer process uses one core: two targets at a time on the 2 cores this suite is
# sized for (FUZZ_JOBS), so the step takes half the wall time.
fuzz_one() {
  local target=$1 log="$cache/fuzz-$1.log"
  mkdir -p "$cache/fuzz-corpus/$target" "fuzz/artifacts/$target"
  "$CARGO_TARGET_DIR/debug/$target" -artifact_prefix="fuzz/artifacts/$target/" \
    -max_total_time="$fuzz_seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    "$cache/fuzz-corpus/$target" "fuzz/corpus/$target" >"$log" 2>&1
}
fuzz_jobs=${FUZZ_JOBS:-2}
fuzz_failed=()
for ((i = 0; i < ${#fuzz_targets[@]}; i += fuzz_jobs)); do
  batch=("${fuzz_targets[@]:i:fuzz_jobs}")
  pids=()
  for target in "${batch[@]}"; do
    fuzz_one "$target" &
    pids+=($!)
  done
  for j in "${!batch[@]}"; do
    if ! wait "${pids[$j]}"; then
      fuzz_failed+=("${batch[$j]}")
    fi
  done
done
for target in "${fuzz_targets[@]}"; do
  grep -E '^stat::(number_of_executed_units|peak_rss_mb)' "$cache/fuzz-$target.log" | sed "s/^/    $target /" || true
done
for target in "${fuzz_failed[@]}"; do
  tail -40 "$cache/fuzz-$target.log"
  echo "fuzz target $target failed: the input is in fuzz/artifacts/$target/" >&2
done
if ((${#fuzz_failed[@]})); then
  exit 1
fi

step_secs+=($((SECONDS - step_start)))
echo "==> time per step (total ${SECONDS} s)"
for i in "${!step_names[@]}"; do
  printf '    %5d s  %s\n' "${step_secs[$i]}" "${step_names[$i]}"
done

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

# LocalStack on 127.0.0.1:4566 (host mode, pinned in scripts/localstack/), reused when one
# is already running; stopped at exit when this script started it.
echo "==> LocalStack"
source scripts/localstack/up.sh
localstack_up "$cache/localstack-venv"
# The outage test starts, stops and restarts a LocalStack of its own (port 4576) from
# the same virtualenv.
export SESSION_AGENT_LOCALSTACK_VENV="$cache/localstack-venv"

# The packaging tests (tests/it/packaging.rs) build the .deb and the .rpm from the binary
# under test with the real tools, install the .deb with dpkg into a scratch root and
# query the .rpm with rpm: install the tools when missing (pinned).
echo "==> packaging tools"
if ! cargo deb --version >/dev/null 2>&1; then
  echo "    installing cargo-deb"
  cargo install --locked --quiet cargo-deb@3.8.0
fi
if ! cargo generate-rpm --version >/dev/null 2>&1; then
  echo "    installing cargo-generate-rpm"
  cargo install --locked --quiet cargo-generate-rpm@0.21.1
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

echo "==> rustfmt"
cargo fmt --all -- --check

echo "==> clippy"
cargo clippy --locked --all-targets -- -D warnings

# The Windows layer (src/windows/, src/session/*_windows.rs) cannot run here, but it is
# type-checked and linted for Windows on every run, so it cannot rot unseen. ring (under
# rustls) builds C for the target, hence MinGW's gcc. If the target cannot be installed
# (no network to the Rust distribution server), say so loudly and go on.
echo "==> clippy for Windows (x86_64-pc-windows-gnu: type-check and lints, no run)"
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
echo "==> Windows build under Wine (x86_64-pc-windows-gnu debug build, Wine, wixl)"
if ! [[ -x /usr/lib/wine/wine64 ]] && ! command -v wine64 >/dev/null 2>&1 ||
  ! command -v wixl >/dev/null 2>&1 || ! command -v msiinfo >/dev/null 2>&1; then
  echo "    installing Debian's wine64, wixl and msitools"
  apt-get install -y -q --no-install-recommends wine64 wixl msitools >/dev/null || true
fi
if rustup target list --installed 2>/dev/null | grep -qx x86_64-pc-windows-gnu &&
  command -v x86_64-w64-mingw32-gcc >/dev/null 2>&1 &&
  { [[ -x /usr/lib/wine/wine64 ]] || command -v wine64 >/dev/null 2>&1; }; then
  cargo build --locked --quiet --target x86_64-pc-windows-gnu --bin session-agent
  target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
  export SESSION_AGENT_WINDOWS_EXE="$target_dir/x86_64-pc-windows-gnu/debug/session-agent.exe"
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

echo "==> rustdoc"
RUSTDOCFLAGS="-D warnings" cargo doc --locked --no-deps --quiet

echo "==> tests"
# Doc tests are not part of --all-targets; run them first so the suite's summary is last.
cargo test --locked --doc
cargo test --locked --all-targets

# Hostile input: every fuzz target (frame decoder, JSON payloads and the session
# document, recording readers) runs for a fixed time from its seed corpus; a crash fails
# the run and leaves the input in fuzz/artifacts/<target>/. A debug build without a
# sanitizer (the crate forbids unsafe code): overflow checks and assertions on, and a
# quarter of the build time of the optimised ASan build `cargo fuzz run` makes by default.
# New inputs found are kept in $cache/fuzz-corpus (read-only seeds stay in git).
fuzz_seconds=${FUZZ_SECONDS:-30}
echo "==> fuzz (${fuzz_seconds} s per target)"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "    installing cargo-fuzz"
  cargo install --locked --quiet cargo-fuzz@0.13.2
fi
(
  cd fuzz
  export RUSTC_BOOTSTRAP=1 # cargo-fuzz's instrumentation flags on the stable toolchain
  cargo fuzz build --dev -s none
  for target in decode_frame payloads recordings smux; do
    mkdir -p "$cache/fuzz-corpus/$target"
    log="$cache/fuzz-$target.log"
    if ! cargo fuzz run --dev -s none "$target" "$cache/fuzz-corpus/$target" "corpus/$target" -- \
      -max_total_time="$fuzz_seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
      tail -40 "$log"
      echo "fuzz target $target failed: the input is in fuzz/artifacts/$target/" >&2
      exit 1
    fi
    grep -E '^stat::(number_of_executed_units|peak_rss_mb)' "$log" | sed "s/^/    $target /"
  done
)

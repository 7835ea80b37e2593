//! The packages, built from the binary under test with the real tools (cargo-deb,
//! cargo-generate-rpm) and, for the .deb, installed with dpkg into a scratch root
//! (`dpkg --root`, maintainer scripts run with DPKG_ROOT as they would in an image
//! build): files and permissions, the unit enabled and accepted by
//! `systemd-analyze verify`, the configuration kept on upgrade (and an administrator's
//! `disable` too), recordings kept on removal and deleted on purge. The .rpm is checked
//! with rpm's own queries (files, modes, %config(noreplace), scriptlets).
//!
//! Needs root, dpkg, systemctl, systemd-analyze, rpm, cargo-deb and cargo-generate-rpm:
//! scripts/test.sh installs what is missing.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");
const UNIT: &str = "usr/lib/systemd/system/session-agent.service";
const WANTS: &str = "etc/systemd/system/multi-user.target.wants/session-agent.service";
const CONF: &str = "etc/session-agent/session-agent.toml";

/// Runs a command; panics with its output unless it succeeds. Returns stdout + stderr.
fn sh(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (scripts/test.sh installs it)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// A target directory holding the binary under test where the packaging metadata
/// expects a release build (stripped, as a release package is).
fn staged_target(dir: &Path) -> PathBuf {
    let target = dir.join("target");
    std::fs::create_dir_all(target.join("release")).unwrap();
    // `strip -o` writes only the stripped copy: no full-size copy of the debug binary.
    sh(Command::new("strip")
        .arg("-o")
        .arg(target.join("release/session-agent"))
        .arg(env!("CARGO_BIN_EXE_session-agent")));
    // The generated assets the packages install (completions, man page), made by the
    // binary under test as a release build makes them.
    let bin = env!("CARGO_BIN_EXE_session-agent");
    sh(Command::new(bin)
        .args(["completions", "--out-dir"])
        .arg(target.join("release/completions")));
    let out = Command::new(bin).arg("man").output().unwrap();
    assert!(out.status.success() && !out.stdout.is_empty());
    std::fs::write(target.join("release/session-agent.1"), out.stdout).unwrap();
    // Debian wants man pages gzipped (cargo-deb does not compress files from target/).
    sh(Command::new("gzip")
        .args(["-9nkf"])
        .arg(target.join("release/session-agent.1")));
    target
}

fn cargo(target: &Path) -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(MANIFEST_DIR).env("CARGO_TARGET_DIR", target);
    c
}

fn build_deb(target: &Path, out: &Path, version: &str) -> PathBuf {
    let printed = sh(cargo(target)
        .args([
            "deb",
            "--no-build",
            "--fast",
            "--deb-version",
            version,
            "-o",
        ])
        .arg(out));
    let path = printed
        .lines()
        .rev()
        .find(|l| l.trim_end().ends_with(".deb"))
        .unwrap_or_else(|| panic!("cargo deb printed no package path:\n{printed}"));
    PathBuf::from(path.trim())
}

fn dpkg(root: &Path, args: &[&str]) -> String {
    sh(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        // Maintainer scripts run on the host with DPKG_ROOT set (the scratch root has no
        // shell of its own); libc6 is not "installed" in an empty root.
        .args([
            "--force-script-chrootless",
            "--force-depends",
            "--log=/dev/null",
        ])
        .args(args))
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn enabled(root: &Path) -> bool {
    std::fs::read_link(root.join(WANTS)).is_ok()
}

#[test]
fn the_deb_installs_enables_upgrades_keeping_config_and_purges_state() {
    let dir = tempfile::tempdir().unwrap();
    let target = staged_target(dir.path());
    let out = dir.path().join("out");
    let first = build_deb(&target, &out, "0.1.0-1");
    let second = build_deb(&target, &out, "0.1.0-2");

    let root = dir.path().join("root");
    for d in [
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "var/lib/dpkg/triggers",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/status"), b"").unwrap();
    dpkg(&root, &["-i", first.to_str().unwrap()]);

    // Files, owners, permissions.
    let bin = root.join("usr/bin/session-agent");
    assert_eq!(mode(&bin), 0o755);
    assert_eq!(std::fs::metadata(&bin).unwrap().uid(), 0);
    assert_eq!(mode(&root.join(UNIT)), 0o644);
    assert_eq!(mode(&root.join(CONF)), 0o644);
    assert_eq!(mode(&root.join("var/lib/session-agent")), 0o700);
    for doc in [
        "README.md",
        "examples/session-agent.example.toml",
        "examples/session-preferences.example.json",
        "asciinema-player/LICENSE",
        "docs/security.md",
        "docs/recording.md",
        "copyright",
    ] {
        assert!(
            root.join("usr/share/doc/session-agent").join(doc).is_file(),
            "{doc}"
        );
    }
    let conffiles = sh(Command::new("dpkg-query")
        .arg(format!("--root={}", root.display()))
        .args(["-W", "-f=${Conffiles}", "session-agent"]));
    assert!(
        conffiles.contains("/etc/session-agent/session-agent.toml"),
        "{conffiles}"
    );
    // The installed program runs and accepts the installed configuration.
    let version = sh(Command::new(&bin).arg("--version"));
    assert!(version.starts_with("session-agent "), "{version}");
    let checked = sh(Command::new(&bin)
        .args(["config", "check"])
        .arg(root.join(CONF)));
    assert!(checked.contains("shutdown_timeout = \"30s\""), "{checked}");

    // Enabled on install, pointing at the packaged unit.
    assert_eq!(
        std::fs::read_link(root.join(WANTS)).unwrap(),
        Path::new("/usr/lib/systemd/system/session-agent.service")
    );
    // Shell completions and the man page, where each shell and man look for them.
    for (file, word) in [
        (
            "usr/share/bash-completion/completions/session-agent",
            "complete",
        ),
        (
            "usr/share/zsh/vendor-completions/_session-agent",
            "#compdef session-agent",
        ),
        (
            "usr/share/fish/vendor_completions.d/session-agent.fish",
            "complete -c session-agent",
        ),
    ] {
        let text =
            std::fs::read_to_string(root.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(text.contains(word) && text.contains("transcript"), "{file}");
        assert_eq!(mode(&root.join(file)), 0o644, "{file}");
    }
    // The installed bash completion loads in a real bash and completes subcommands.
    let loaded = sh(Command::new("bash").arg("-c").arg(format!(
        "source {}; complete -p session-agent; COMP_WORDS=(session-agent tra); COMP_CWORD=1; _session__agent session-agent tra session-agent; echo \"${{COMPREPLY[@]}}\"",
        root.join("usr/share/bash-completion/completions/session-agent").display()
    )));
    assert!(
        loaded.contains("-F _session__agent session-agent"),
        "{loaded}"
    );
    assert!(
        loaded.lines().last().unwrap_or("").contains("transcript"),
        "{loaded}"
    );
    let man = root.join("usr/share/man/man1/session-agent.1.gz");
    assert_eq!(mode(&man), 0o644);
    let page = sh(Command::new("bash")
        .env("MANWIDTH", "80")
        .arg("-c")
        .arg(format!("man -l {} | col -bx", man.display())));
    for part in ["NAME", "SUBCOMMANDS", "OPTIONS OF RUN", "--endpoint"] {
        assert!(
            page.contains(part),
            "{part} not in the rendered man page:\n{page}"
        );
    }

    let unit = std::fs::read_to_string(root.join(UNIT)).unwrap();
    assert_never_gives_up(&unit, "session-agent.service");
    assert_never_gives_up(
        &std::fs::read_to_string(root.join("usr/lib/systemd/system/session-agent-gateway.service"))
            .unwrap(),
        "session-agent-gateway.service",
    );
    // No placeholder addresses in the package's metadata or shipped texts.
    let control = sh(Command::new("dpkg-deb").args(["-f"]).arg(&first));
    assert!(!control.contains("example."), "{control}");
    for file in [
        UNIT,
        "usr/lib/systemd/system/session-agent-gateway.service",
        "usr/share/doc/session-agent/copyright",
    ] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        assert!(!text.contains("example.invalid"), "{file}");
    }
    for line in [
        "Type=notify",
        "WatchdogSec=30s",
        "Restart=always",
        "StateDirectory=session-agent",
        "LimitNOFILE=65536",
        "KillMode=process",
        "ExecStart=/usr/bin/session-agent run --config /etc/session-agent/session-agent.toml",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} not in the unit");
    }
    // systemd's own check, with the host's stock units beside ours (targets it names).
    copy_missing(
        Path::new("/usr/lib/systemd/system"),
        &root.join("usr/lib/systemd/system"),
    );
    for unit in ["session-agent.service", "session-agent-gateway.service"] {
        let verify = sh(Command::new("systemd-analyze")
            // Documentation=man:session-agent(1) is checked against the installed page.
            .env("MANPATH", root.join("usr/share/man"))
            .arg("verify")
            .arg(format!("--root={}", root.display()))
            .arg(format!("/usr/lib/systemd/system/{unit}")));
        // systemd before 254 does not know the growing restart delay's keys: it says so
        // and ignores them (the unit then restarts at a fixed RestartSec); nothing else.
        let old = systemd_version() < 254;
        let other: Vec<&str> = verify
            .lines()
            .filter(|l| {
                !(old
                    && l.contains("Unknown key")
                    && (l.contains("'RestartSteps'") || l.contains("'RestartMaxDelaySec'")))
            })
            .collect();
        assert!(other.is_empty(), "systemd-analyze verify {unit}:\n{verify}");
    }

    // Upgrade: the administrator's configuration and `disable`, and recordings, survive.
    let mut conf = std::fs::read_to_string(root.join(CONF)).unwrap();
    conf.push_str("max_sessions = 5\n");
    std::fs::write(root.join(CONF), &conf).unwrap();
    let recording = root.join("var/lib/session-agent/recordings/s-1/events.spool");
    std::fs::create_dir_all(recording.parent().unwrap()).unwrap();
    std::fs::write(&recording, b"SASPOOL1").unwrap();
    sh(Command::new("systemctl")
        .arg(format!("--root={}", root.display()))
        .args(["disable", "session-agent.service"]));
    assert!(!enabled(&root));
    dpkg(&root, &["-i", second.to_str().unwrap()]);
    let status = sh(Command::new("dpkg-query")
        .arg(format!("--root={}", root.display()))
        .args(["-W", "-f=${Version} ${db:Status-Status}", "session-agent"]));
    assert_eq!(status, "0.1.0-2 installed");
    assert_eq!(std::fs::read_to_string(root.join(CONF)).unwrap(), conf);
    assert!(
        !enabled(&root),
        "an administrator's disable survives upgrades"
    );
    assert!(recording.is_file());
    sh(Command::new("systemctl")
        .arg(format!("--root={}", root.display()))
        .args(["enable", "session-agent.service"]));

    // Removal: program and unit gone, service disabled, configuration and recordings kept.
    dpkg(&root, &["-r", "session-agent"]);
    assert!(!bin.exists() && !root.join(UNIT).exists());
    assert!(!enabled(&root));
    assert_eq!(std::fs::read_to_string(root.join(CONF)).unwrap(), conf);
    assert!(recording.is_file(), "recordings are kept on removal");
    // Reinstalling after a removal enables the service again.
    dpkg(&root, &["-i", second.to_str().unwrap()]);
    assert!(enabled(&root));

    // Purge: configuration and state gone.
    dpkg(&root, &["-P", "session-agent"]);
    assert!(!root.join("etc/session-agent").exists());
    assert!(!root.join("var/lib/session-agent").exists());
    assert!(!enabled(&root));
}

/// The host's systemd version (`systemd-analyze --version`: "systemd 252 (252.39-1)").
fn systemd_version() -> u32 {
    let text = sh(Command::new("systemd-analyze").arg("--version"));
    text.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no version in {text:?}"))
}

/// A unit that restarts forever: `Restart=always`, no start rate limit that ends the
/// retries, no exit status that stops them, no ExecStartPre that can fail the start, a
/// delay that grows (on systemd >= 254). Checked as systemd itself reads the unit
/// (`systemd-analyze dump` of the loaded unit would need a running manager; the keys
/// are read from the file, and `verify` above proves systemd accepts them).
fn assert_never_gives_up(unit: &str, name: &str) {
    let value = |key: &str| {
        unit.lines()
            .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .next_back()
    };
    assert_eq!(value("Restart"), Some("always"), "{name}");
    assert_eq!(
        value("StartLimitIntervalSec"),
        Some("0"),
        "{name}: the start limit is off"
    );
    assert_eq!(value("StartLimitBurst"), None, "{name}");
    assert_eq!(value("RestartPreventExitStatus"), None, "{name}");
    assert_eq!(value("ExecStartPre"), None, "{name}");
    assert_eq!(value("RestartSec"), Some("2s"), "{name}");
    assert_eq!(value("RestartSteps"), Some("8"), "{name}");
    assert_eq!(value("RestartMaxDelaySec"), Some("90s"), "{name}");
}

fn copy_missing(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let dest = to.join(entry.file_name());
        if dest.exists() || dest.symlink_metadata().is_ok() {
            continue;
        }
        let meta = entry.path().symlink_metadata().unwrap();
        if meta.file_type().is_symlink() {
            let link = std::fs::read_link(entry.path()).unwrap();
            std::os::unix::fs::symlink(link, &dest).unwrap();
        } else if meta.is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
            copy_missing(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

#[test]
fn the_rpm_holds_the_same_files_with_config_noreplace_and_scriptlets() {
    let dir = tempfile::tempdir().unwrap();
    let target = staged_target(dir.path());
    let rpm = dir.path().join("session-agent.rpm");
    sh(cargo(&target).args(["generate-rpm", "-o"]).arg(&rpm));
    let files = sh(Command::new("rpm")
        .args([
            "-qp",
            "--qf",
            "[%{FILEMODES:perms} %{FILEUSERNAME} %{FILEFLAGS:fflags} %{FILENAMES}\n]",
        ])
        .arg(&rpm));
    for expected in [
        "-rwxr-xr-x root  /usr/bin/session-agent",
        "-rw-r--r-- root  /usr/lib/systemd/system/session-agent.service",
        "-rw-r--r-- root cn /etc/session-agent/session-agent.toml",
        "-rw-r--r-- root d /usr/share/doc/session-agent/README.md",
        "-rw-r--r-- root d /usr/share/doc/session-agent/asciinema-player/LICENSE",
        "-rw-r--r-- root d /usr/share/doc/session-agent/docs/security.md",
        "-rw-r--r-- root  /usr/share/bash-completion/completions/session-agent",
        "-rw-r--r-- root  /usr/share/zsh/site-functions/_session-agent",
        "-rw-r--r-- root  /usr/share/fish/vendor_completions.d/session-agent.fish",
        "-rw-r--r-- root d /usr/share/man/man1/session-agent.1",
    ] {
        assert!(
            files.lines().any(|l| l == expected),
            "{expected:?} not in:\n{files}"
        );
    }
    let scripts = sh(Command::new("rpm").args(["-qp", "--scripts"]).arg(&rpm));
    for part in [
        "postinstall scriptlet",
        // Presets decide on first install (as %systemd_post), not an unconditional enable.
        "systemctl --no-reload preset session-agent.service",
        "preuninstall scriptlet",
        "systemctl disable session-agent.service",
        // Not a packaged directory (cargo-generate-rpm cannot make one): made here.
        "install -d -m 0700 /var/lib/session-agent",
    ] {
        assert!(scripts.contains(part), "{part:?} not in:\n{scripts}");
    }
    assert!(
        !scripts
            .lines()
            .any(|l| l.trim_start().starts_with("systemctl enable")),
        "no unconditional enable:\n{scripts}"
    );
    // No placeholder addresses in the package's metadata.
    let info = sh(Command::new("rpm").args(["-qip"]).arg(&rpm));
    assert!(!info.contains("example."), "{info}");
    let requires = sh(Command::new("rpm").args(["-qp", "--requires"]).arg(&rpm));
    assert!(requires.lines().any(|l| l == "systemd"), "{requires}");
}

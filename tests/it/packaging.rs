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
    let unit = std::fs::read_to_string(root.join(UNIT)).unwrap();
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
            .arg("verify")
            .arg(format!("--root={}", root.display()))
            .arg(format!("/usr/lib/systemd/system/{unit}")));
        assert!(
            verify.trim().is_empty(),
            "systemd-analyze verify {unit}:\n{verify}"
        );
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
    ] {
        assert!(
            files.lines().any(|l| l == expected),
            "{expected:?} not in:\n{files}"
        );
    }
    let scripts = sh(Command::new("rpm").args(["-qp", "--scripts"]).arg(&rpm));
    for part in [
        "postinstall scriptlet",
        "systemctl enable session-agent.service",
        "preuninstall scriptlet",
        "systemctl disable session-agent.service",
        "install -d -m 0700 /var/lib/session-agent",
    ] {
        assert!(scripts.contains(part), "{part:?} not in:\n{scripts}");
    }
    let requires = sh(Command::new("rpm").args(["-qp", "--requires"]).arg(&rpm));
    assert!(requires.lines().any(|l| l == "systemd"), "{requires}");
}

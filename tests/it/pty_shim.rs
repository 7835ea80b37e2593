//! The `__exec-as` shim through the real binary: a shell for another user really runs
//! with that user's ids and groups, with no way back to root, and failures are one line
//! on the terminal. Without root, asking for another user must fail, not run as self.

use nix::unistd::{geteuid, getgrouplist, Gid, User};
use session_agent::session::pty::{Credentials, ExitStatus, PtyError, Shell, ShellSpec};
use std::ffi::CString;
use std::io::Read;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_session-agent");

fn nobody() -> Credentials {
    user("nobody")
}

fn user(name: &str) -> Credentials {
    let user = User::from_name(name)
        .unwrap()
        .unwrap_or_else(|| panic!("a user named {name}"));
    Credentials {
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        user: user.name,
    }
}

fn spec(program: &str, args: &[&str], run_as: Credentials) -> ShellSpec {
    ShellSpec {
        program: program.into(),
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        env: vec![
            ("PATH".into(), "/usr/bin:/bin".into()),
            ("SHELL".into(), "/bin/sh".into()),
        ],
        cwd: "/".into(),
        run_as: Some(run_as),
        size: None,
        contain: None,
    }
}

/// Runs to the end; the output with `\r\n` turned into `\n`, and the status.
fn run(spec: &ShellSpec) -> (String, ExitStatus) {
    let mut shell = Shell::spawn(spec, Path::new(BIN)).expect("spawn");
    let mut reader = shell.take_reader().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = reader.read_to_end(&mut out);
        let _ = tx.send(String::from_utf8_lossy(&out).replace("\r\n", "\n"));
    });
    let out = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("output ends");
    let status = shell.terminate(Duration::from_secs(2));
    (out, status)
}

/// Bit of SIGPIPE (13) in the `SigIgn` mask of `/proc/PID/status`.
const SIGPIPE_BIT: u64 = 1 << 12;
/// Signals portable-pty sets back to their default before the exec (CHLD, HUP, INT, QUIT,
/// TERM, ALRM): ignoring them in the agent (run under `nohup`, or as a background job)
/// never reaches the shell.
const RESET_BY_PTY_BITS: u64 = (1 << 16) | 1 | (1 << 1) | (1 << 2) | (1 << 14) | (1 << 13);

/// This process's ignored-signal mask.
fn own_ignored_signals() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .unwrap()
        .trim();
    u64::from_str_radix(mask, 16).unwrap()
}

#[test]
fn a_shell_for_another_user_runs_with_exactly_their_ids() {
    let who = nobody();
    if !geteuid().is_root() {
        // Someone other than ourselves: nobody, or daemon when we are nobody.
        let other = if who.uid == geteuid().as_raw() {
            user("daemon")
        } else {
            who
        };
        let err = Shell::spawn(
            &spec("/bin/sh", &["-c", "id -u"], other.clone()),
            Path::new(BIN),
        )
        .expect_err("must not run as self");
        assert!(matches!(err, PtyError::NotPrivileged { .. }), "{err}");
        assert!(err.to_string().contains("privileges"), "{err}");
        assert!(err.to_string().contains(&other.user), "{err}");
        return;
    }
    let (out, status) = run(&spec(
        "/bin/sh",
        &["-c", "id -u; id -g; id -G"],
        who.clone(),
    ));
    assert!(status.success(), "{status}: {out}");
    let mut groups: Vec<u32> = getgrouplist(
        &CString::new(who.user.clone()).unwrap(),
        Gid::from_raw(who.gid),
    )
    .unwrap()
    .into_iter()
    .map(Gid::as_raw)
    .collect();
    groups.sort_unstable();
    groups.dedup();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[..2],
        [who.uid.to_string(), who.gid.to_string()],
        "{out}"
    );
    let mut seen: Vec<u32> = lines[2]
        .split_whitespace()
        .map(|g| g.parse().unwrap())
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, groups, "supplementary groups: {out}");

    // No way back: all four uids are nobody's and no capability is left. The signal
    // state is the agent's minus SIGPIPE, which every Rust program ignores and the shim
    // must not pass on, and minus what portable-pty resets (dispositions ignored by the agent's own parent are inherited, as
    // with any exec: cargo, for one, ignores signal 32 in the tests it runs).
    let (out, status) = run(&spec(
        "/bin/sh",
        &[
            "-c",
            "id -u; grep -E '^(Uid|Gid|CapPrm|CapEff|CapAmb|SigIgn):' /proc/self/status",
        ],
        who.clone(),
    ));
    assert!(status.success(), "{status}: {out}");
    let uid = who.uid.to_string();
    let gid = who.gid.to_string();
    assert!(out.starts_with(&format!("{uid}\n")), "{out}");
    for (key, want) in [
        ("Uid:", format!("{uid}\t{uid}\t{uid}\t{uid}")),
        ("Gid:", format!("{gid}\t{gid}\t{gid}\t{gid}")),
        ("CapPrm:", "0000000000000000".to_owned()),
        ("CapEff:", "0000000000000000".to_owned()),
        ("CapAmb:", "0000000000000000".to_owned()),
        (
            "SigIgn:",
            format!(
                "{:016x}",
                own_ignored_signals() & !SIGPIPE_BIT & !RESET_BY_PTY_BITS
            ),
        ),
    ] {
        let line = out.lines().find(|l| l.starts_with(key)).unwrap_or("");
        assert_eq!(
            line.split_once(':').map(|(_, v)| v.trim()),
            Some(&*want),
            "{out}"
        );
    }
}

#[test]
fn the_shim_passes_argv_verbatim_and_fails_in_one_line() {
    if !geteuid().is_root() {
        return; // covered by the NotPrivileged check above
    }
    let who = nobody();
    // Hyphens and `--` after the program reach it untouched (clap must not eat them).
    let (out, status) = run(&spec(
        "/bin/sh",
        &[
            "-c",
            "printf '<%s>' \"$@\"",
            "sh",
            "--log-level",
            "--",
            "-x",
            "a b",
        ],
        who.clone(),
    ));
    assert!(status.success(), "{status}: {out}");
    assert_eq!(out, "<--log-level><--><-x><a b>");

    // A program that does not exist: 127 and one line naming program and user.
    let (out, status) = run(&spec("/nonexistent/prog", &[], who.clone()));
    assert_eq!(status.code, Some(127), "{out}");
    assert_eq!(out.lines().count(), 1, "{out:?}");
    assert!(
        out.starts_with("session-agent: cannot run /nonexistent/prog as nobody"),
        "{out}"
    );

    // The shim itself, started without root (as nobody, through the shim), cannot switch
    // users: 126, one line, and the program never runs.
    let (out, status) = run(&spec(
        BIN,
        &[
            "__exec-as",
            "--uid",
            "1",
            "--gid",
            "1",
            "--user",
            "daemon",
            "--",
            "/bin/echo",
            "ran",
        ],
        who,
    ));
    assert_eq!(status.code, Some(126), "{out}");
    assert_eq!(out.lines().count(), 1, "{out:?}");
    assert!(
        out.starts_with("session-agent: cannot run /bin/echo as daemon: "),
        "{out}"
    );
    assert!(!out.contains("ran\n"), "{out}");
}

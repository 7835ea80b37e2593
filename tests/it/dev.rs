//! `session-agent dev` end to end, the real binary on real PTYs: the second terminal it
//! documents at start joins the run with exactly the printed command (item 4 of issue
//! 20), and `--state-dir` holds the recordings (as root too), which the goodbye line
//! names (item 5).

use crate::client::Term;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const BIN: &str = env!("CARGO_BIN_EXE_session-agent");

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The text between the first `open` after `from` and the next `close`.
fn between<'a>(text: &'a str, from: &str, open: &str, close: &str) -> &'a str {
    let rest = &text[text
        .find(from)
        .unwrap_or_else(|| panic!("no {from:?} in {text:?}"))..];
    let rest = &rest[rest.find(open).unwrap() + open.len()..];
    &rest[..rest.find(close).unwrap()]
}

#[tokio::test]
async fn dev_second_terminal_state_dir_and_goodbye() {
    let state = std::env::temp_dir().join(format!("session-agent-it-dev-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    std::fs::create_dir_all(&state).unwrap();
    // `session-agent` on PATH, so the printed command runs as printed.
    let bin_dir = Path::new(BIN)
        .parent()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let path_setup = format!("PATH={}:\"$PATH\"; export PATH; ", quote(&bin_dir));

    let mut first = Term::sh(
        &format!(
            "{path_setup}session-agent dev --shell sh --state-dir {}; echo dev-exit=$?",
            quote(state.to_str().unwrap())
        ),
        &[],
    );
    let hint = first.expect(" (or ").await;
    let command = between(&hint, "another terminal", "`", "`").to_owned();
    assert!(
        command.contains("session-agent connect --target dev"),
        "{command}"
    );
    let env_file = PathBuf::from(between(&command, ". ", ". ", " &&"));
    assert!(env_file.starts_with(&state), "{env_file:?}");
    let mode = std::fs::metadata(&env_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{env_file:?} is readable by others");
    let secret = std::fs::read_to_string(&env_file).unwrap();
    let secret = between(&secret, "AWS_SECRET_ACCESS_KEY", "=", "\n").to_owned();
    assert!(
        !first.text_since(0).contains(&secret),
        "the key was printed"
    );

    first.expect("Starting session with SessionId").await;
    first.type_text("echo one-$((2+3))\r");
    first.expect("one-5").await;

    // The second terminal, with the command exactly as printed.
    let mut second = Term::sh(&format!("{path_setup}{command}; echo client-exit=$?"), &[]);
    second.expect("Starting session with SessionId").await;
    second.type_text("echo two-$((3+4))\r");
    second.expect("two-7").await;
    second.type_text("exit\r");
    let exit = second.expect("client-exit=").await;
    let code = second.expect("\n").await;
    assert_eq!(code.trim(), "0", "{exit}{}", second.text_since(0));

    first.type_text("exit\r");
    let goodbye = first.expect("dev-exit=").await;
    let recorded = PathBuf::from(between(&goodbye, "this session is recorded", "in ", ";"));
    let recordings = state.join("agent").join("recordings");
    assert!(
        recorded.starts_with(&recordings),
        "{recorded:?} is not under {recordings:?}: {goodbye}"
    );
    assert!(recorded.join("events.spool").is_file(), "{recorded:?}");
    let id = recorded.file_name().unwrap().to_str().unwrap().to_owned();
    assert!(
        goodbye.contains(&format!(
            "session-agent transcript --state-dir {} {id}",
            state.join("agent").display()
        )),
        "{goodbye}"
    );
    // Both sessions recorded there; the key's file is gone.
    let sessions = std::fs::read_dir(&recordings).unwrap().count();
    assert!(sessions >= 2, "{sessions} recordings in {recordings:?}");
    assert!(!env_file.exists());
    // The printed transcript command works and shows the first session.
    let out = std::process::Command::new(BIN)
        .args(["transcript", "--state-dir"])
        .arg(state.join("agent"))
        .arg(&id)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("one-5"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&state);
}

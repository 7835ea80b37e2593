//! `session-agent replay` as a player, on a real PTY the test owns (the test is the
//! terminal): a recording of a real vim session (alternate screen, mouse modes, bracketed
//! paste, and its queries `ESC [ 6 n`, `ESC [ > c`, OSC 10/11) played, paused, quit with
//! Ctrl-C or interrupted by SIGINT; each time the terminal must be put back (restore
//! sequences written, echo and line editing on) and the terminal's answer the test types
//! during the replay (`ESC [ ? 1 ; 2 c`, as a terminal answers device attributes) must be
//! swallowed by the replay, not left for the next program to read.

use crate::client::Term;
use std::path::{Path, PathBuf};

const BIN: &str = env!("CARGO_BIN_EXE_session-agent");
const VIM: &[u8] = include_bytes!("../fixtures/vim-insert-two-lines-wq.bin");
/// What a terminal answers to `ESC [ c`.
const ANSWER: &str = "\x1b[?1;2c";

/// An asciicast of the vim session: its first half at 0 s, the rest at `rest_at` s.
fn vim_cast(dir: &Path, rest_at: f64) -> PathBuf {
    let text = String::from_utf8_lossy(VIM).into_owned();
    let cut = text
        .char_indices()
        .map(|(i, _)| i)
        .find(|&i| i >= text.len() / 2)
        .unwrap_or(0);
    let (first, rest) = text.split_at(cut);
    let lines = [
        serde_json::json!({"version": 2, "width": 80, "height": 24}),
        serde_json::json!([0.0, "o", first]),
        serde_json::json!([rest_at, "o", rest]),
    ];
    let path = dir.join("vim.cast");
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&path, body).unwrap();
    path
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `replay ARGS`, then its exit status, the terminal's settings, and the next line the
/// terminal's input holds (what a shell would read next).
fn player(args: &[&str]) -> Term {
    let argv: Vec<String> = args.iter().map(|a| quote(a)).collect();
    Term::sh(
        &format!(
            "trap 'echo sh-saw-int' INT; {} replay {}; echo replay-exit=$?; stty -a; echo ready; \
             IFS= read -r next; echo \"next-line=[$next]\"",
            quote(BIN),
            argv.join(" ")
        ),
        &[],
    )
}

/// After the replay: the terminal was put back and nothing the terminal answered is left
/// in its input. Returns the exit status line's value.
async fn assert_put_back(term: &mut Term) -> String {
    let after = term.expect("replay-exit=").await;
    // Everything the replay wrote, from its start to its exit.
    let played = term.text_since(0);
    let played = &played[..played.find("replay-exit=").unwrap_or(played.len())];
    let _ = after;
    let tail = &played[played
        .find("\x1b[?1049h")
        .expect("the replay started vim's screen")..];
    for restore in [
        "\x1b[?1049l",
        "\x1b[?1000l",
        "\x1b[?1002l",
        "\x1b[?1003l",
        "\x1b[?1006l",
        "\x1b[?1015l",
        "\x1b[?2004l",
        "\x1b[?1l",
        "\x1b[?25h",
        "\x1b[0m",
    ] {
        assert!(tail.contains(restore), "{restore:?} missing: {tail:?}");
    }
    // The recorded queries never reached the terminal.
    for query in ["\x1b[6n", "\x1b[>c", "\x1b]10;?", "\x1b]11;?"] {
        assert!(!played.contains(query), "{query:?} sent: {played:?}");
    }
    let status = term.expect("\n").await.trim().to_owned();
    let stty = term.expect("ready").await;
    let words: Vec<&str> = stty.split_whitespace().collect();
    for flag in ["icanon", "echo", "isig"] {
        assert!(words.contains(&flag), "{flag} not back on: {stty}");
    }
    // The next reader gets exactly what is typed next: no answer left before it.
    term.type_text("marker\n");
    term.expect("next-line=[marker]").await;
    status
}

#[tokio::test]
async fn a_finished_replay_puts_the_terminal_back_and_swallows_the_answers() {
    let dir = tempfile_dir("replay-finish");
    let cast = vim_cast(&dir, 1.0);
    let mut term = player(&["--idle-limit", "1", cast.to_str().unwrap()]);
    term.expect("\x1b[?1049h").await;
    // Pause, answer as a terminal would, speed up, resume: the input is read in order,
    // so the answer is read while paused, before the replay goes on to its end.
    term.type_text(" ");
    term.type_text(ANSWER);
    term.type_text("+ ");
    let status = assert_put_back(&mut term).await;
    assert_eq!(status, "0");
    assert!(term.text_since(0).contains("second line"));
}

#[tokio::test]
async fn ctrl_c_during_a_replay_puts_the_terminal_back() {
    let dir = tempfile_dir("replay-ctrl-c");
    // The rest of the recording is an hour away: only Ctrl-C ends this replay.
    let cast = vim_cast(&dir, 3600.0);
    let mut term = player(&["--idle-limit", "7200", cast.to_str().unwrap()]);
    term.expect("\x1b[?1049h").await;
    term.type_text(ANSWER);
    term.type_text("\x03");
    let status = assert_put_back(&mut term).await;
    assert_eq!(status, "0");
    assert!(!term.text_since(0).contains("sh-saw-int"));
}

#[tokio::test]
async fn q_quits_and_sigint_interrupts_both_putting_the_terminal_back() {
    let dir = tempfile_dir("replay-sigint");
    let cast = vim_cast(&dir, 3600.0);
    let mut term = player(&["--idle-limit", "7200", cast.to_str().unwrap()]);
    term.expect("\x1b[?1049h").await;
    term.type_text(ANSWER);
    term.signal_group(nix::sys::signal::Signal::SIGINT);
    let status = assert_put_back(&mut term).await;
    assert_eq!(status, "1", "a replay ended by a signal fails");
    assert!(term.text_since(0).contains("interrupted by SIGINT"));

    let mut term = player(&["--idle-limit", "7200", cast.to_str().unwrap()]);
    term.expect("\x1b[?1049h").await;
    term.type_text("q");
    assert_eq!(assert_put_back(&mut term).await, "0");
}

fn tempfile_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("session-agent-it-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

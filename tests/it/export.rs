//! `session-agent export --html` in a real browser: a real in-process agent records a
//! real shell session that prints an injection payload; the real binary writes the page
//! (the recording found by its session id); headless Chromium (Debian's `chromium`,
//! which scripts/test.sh installs) loads it from a file with no network, runs it, and
//! dumps the DOM it ended with. The player must have played the recorded text into its
//! terminal, the transcript and timeline must show it, and nothing the session printed
//! may have run. Skipped, saying so, where no Chromium is found.

use crate::agent::RunningAgent;
use crate::support::*;
use session_agent::gateway::GatewayConfig;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What the payload would do if it ran: change the page's title.
const PAYLOAD: &str = "</script><script>document.title='PWNED'</script><!-- <img src=x onerror=\"document.title='PWNED2'\">";

/// The binary under test (SESSION_AGENT_TEST_BIN names a copy: the shared target
/// directory's may be rebuilt by another checkout while a test runs).
fn binary() -> PathBuf {
    std::env::var_os("SESSION_AGENT_TEST_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_session-agent")),
        PathBuf::from,
    )
}

#[allow(clippy::print_stderr)]
fn skipped(name: &str, why: &str) {
    eprintln!("SKIPPED {name}: {why}");
}

/// Chromium or Chrome on PATH (SESSION_AGENT_CHROMIUM names another).
fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SESSION_AGENT_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ]
    .iter()
    .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
    .find(|p| p.is_file())
}

/// The DOM of `page` (opened at `fragment`) after it ran for up to 5 s of virtual time.
async fn dump_dom(browser: &Path, page: &Path, fragment: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let url = format!("file://{}{fragment}", page.display());
    let run = tokio::process::Command::new(browser)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--dump-dom", &url])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("chromium did not finish within 60 s")
        .unwrap();
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The text of the player's terminal lines in a dumped DOM (the `ap-line` spans of the
/// `#player` element, tags removed, entities decoded).
fn terminal_text(dom: &str) -> String {
    let player = dom
        .split("id=\"player\"")
        .nth(1)
        .and_then(|rest| rest.split("</section>").next())
        .unwrap_or_else(|| panic!("no #player in {dom}"));
    let mut text = String::new();
    for line in player.split("class=\"ap-line\"").skip(1) {
        let mut in_tag = true; // the rest of the span's own tag comes first
        for c in line.chars() {
            match c {
                '<' => in_tag = true,
                '>' => in_tag = false,
                c if !in_tag => text.push(c),
                _ => {}
            }
        }
        text.push('\n');
    }
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&amp;", "&")
        .replace('\u{a0}', " ")
}

/// Checks what every page must show in a browser: the page's script ran and made the
/// player, the payload did not run, and no element came from the recording.
fn assert_safe_and_ready(dom: &str, title: &str) {
    assert!(
        dom.contains("data-player=\"ready\""),
        "the page's script did not run: {dom}"
    );
    let shown_title = dom
        .split("<title>")
        .nth(1)
        .and_then(|t| t.split("</title>").next())
        .unwrap();
    assert_eq!(shown_title, title, "the recorded payload ran");
    assert!(!dom.contains("PWNED</title>") && !dom.contains("PWNED2</title>"));
    // The payload's markup is text wherever it shows, never an element.
    assert!(
        !dom.contains("<img"),
        "an element from the recording: {dom}"
    );
    assert_eq!(
        dom.matches("<script").count(),
        3,
        "the page's three scripts only"
    );
}

#[tokio::test]
async fn a_recorded_session_plays_in_a_real_browser_and_what_it_printed_stays_text() {
    const NAME: &str = "a_recorded_session_plays_in_a_real_browser_and_what_it_printed_stays_text";
    let Some(browser) = chromium() else {
        skipped(
            NAME,
            "no chromium on PATH (scripts/test.sh installs Debian's)",
        );
        return;
    };
    let gw = Gateway::start(GatewayConfig::default()).await;
    let agent = RunningAgent::start(&gw, "export-node").await;
    let state = agent.state_dir().to_owned();
    let (sid, mut client) = open_shell(&gw, "export-node").await;
    // Printed by the shell, not only echoed: the payload in the output, and a line whose
    // text appears only in the output.
    client
        .type_text(&format!(
            "printf '%s\\n' \"{}\"\r",
            PAYLOAD.replace('"', "\\\"")
        ))
        .await;
    client.expect("PWNED2").await;
    client.type_text("echo export-marker-$((6*7))\r").await;
    client.expect("export-marker-42").await;
    client.type_text("exit\r").await;
    client.until_closed().await;
    let spool = state.join("recordings").join(&sid).join("events.spool");
    ended_transcript(&spool).await;

    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("session.html");
    let out = tokio::process::Command::new(binary())
        .args(["export", "--html"])
        .arg(&page)
        .arg(&sid)
        .arg("--state-dir")
        .arg(&state)
        .env_remove("SESSION_AGENT_STATE_DIR")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("wrote "));
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&page).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "the page holds what the session showed"
        );
    }
    let html = std::fs::read_to_string(&page).unwrap();
    // Self-contained: nothing is loaded from anywhere.
    assert!(!html.contains("src=\"http") && !html.contains("href=\"http"));
    // Not over an existing file without --force.
    let again = tokio::process::Command::new(binary())
        .args(["export", "--html"])
        .arg(&page)
        .arg(&spool)
        .output()
        .await
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));

    let title = format!("Session {sid}");
    // Played to the end: the terminal shows the recorded output.
    let dom = dump_dom(&browser, &page, "#t=end").await;
    assert_safe_and_ready(&dom, &title);
    let terminal = terminal_text(&dom);
    assert!(terminal.contains("export-marker-42"), "{terminal}");
    assert!(terminal.contains("document.title='PWNED'"), "{terminal}");
    // The transcript beside it, as text.
    let transcript = dom
        .split("<pre id=\"transcript\">")
        .nth(1)
        .and_then(|t| t.split("</pre>").next())
        .unwrap();
    assert!(transcript.contains("export-marker-42"), "{transcript}");
    assert!(
        transcript.contains("&lt;/script&gt;&lt;script&gt;document.title='PWNED'"),
        "{transcript}"
    );
    // The timeline: the typed commands, and the end.
    let timeline = dom
        .split("<ol id=\"timeline\">")
        .nth(1)
        .and_then(|t| t.split("</ol>").next())
        .unwrap();
    assert!(
        timeline.contains("<code>echo export-marker-$((6*7))</code>"),
        "{timeline}"
    );
    assert!(timeline.contains("session ended: exited"), "{timeline}");
    // The player's own markers are on its control bar.
    assert!(dom.contains("ap-marker"), "no markers on the control bar");

    // Opened without a fragment it waits for the viewer, safely too.
    let dom = dump_dom(&browser, &page, "").await;
    assert_safe_and_ready(&dom, &title);
    drop(agent);
    gw.stop().await;
}

#[tokio::test]
async fn an_asciicast_with_markup_in_its_output_markers_and_title_plays_as_text() {
    const NAME: &str = "an_asciicast_with_markup_in_its_output_markers_and_title_plays_as_text";
    let Some(browser) = chromium() else {
        skipped(
            NAME,
            "no chromium on PATH (scripts/test.sh installs Debian's)",
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cast = dir.path().join("s.cast");
    let text = |s: &str| serde_json::Value::String(s.to_owned()).to_string();
    std::fs::write(
        &cast,
        format!(
            "{{\"version\": 2, \"width\": 60, \"height\": 6, \"title\": {title}}}\n\
             [0.1, \"o\", {out}]\n[0.2, \"m\", {mark}]\n[0.3, \"o\", \"cast-line-two\\r\\n\"]\n",
            title = text(&format!("title {PAYLOAD}")),
            out = text(&format!("{PAYLOAD}\r\n")),
            mark = text(PAYLOAD),
        ),
    )
    .unwrap();
    let page = dir.path().join("cast.html");
    let out = tokio::process::Command::new(binary())
        .args(["export", "--html", "-"])
        .arg(&cast)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&page, &out.stdout).unwrap();
    let dom = dump_dom(&browser, &page, "#t=end").await;
    let title = format!("title {PAYLOAD}")
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    assert_safe_and_ready(&dom, &title);
    let terminal = terminal_text(&dom);
    assert!(terminal.contains("cast-line-two"), "{terminal}");
    assert!(terminal.contains("<img src=x"), "{terminal}");
}

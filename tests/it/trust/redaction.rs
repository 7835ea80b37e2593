//! Issue 16, items 6 and 7: input typed with echo off is never recorded, whatever ICANON
//! says; and turning echo off to type commands blind still leaves a record of it (how
//! much was typed, how many lines, when) in every sink, beside the commands' output.

use crate::recording::{all_files, streaming_gateway, AgentProcess, LocalStack};
use crate::support::*;
use std::time::Duration;

/// What each sink and file holds, as text, for a finished session.
async fn every_sink(
    ls: &LocalStack,
    agent: &AgentProcess,
    bucket: &str,
    group: &str,
    sid: &str,
) -> Vec<(String, String)> {
    let report = agent.delivery(sid, Duration::from_secs(30)).await;
    assert_eq!(report["complete"], true, "{report}");
    let mut sinks = Vec::new();
    for ext in ["log", "cast", "spool"] {
        let body = ls.object(bucket, &format!("{sid}.{ext}"), WAIT).await;
        sinks.push((
            format!("s3 {ext}"),
            String::from_utf8_lossy(&body).into_owned(),
        ));
    }
    sinks.push(("cloudwatch".into(), ls.events(group, sid).await.join("\n")));
    let mut files = Vec::new();
    all_files(agent.state().path(), &mut files);
    for f in files {
        let bytes = std::fs::read(&f).unwrap_or_default();
        sinks.push((
            f.display().to_string(),
            String::from_utf8_lossy(&bytes).into_owned(),
        ));
    }
    sinks
}

/// `sudo` with `pwfeedback` reads the password in non-canonical mode, echo off, byte by
/// byte: the review found such a secret in clear in the .cast, the spool and CloudWatch.
#[tokio::test]
async fn a_password_read_byte_by_byte_with_echo_off_reaches_no_sink() {
    const SECRET: &str = "Zq8-pwfeedback-S3CR3T";
    let ls = LocalStack::get().await;
    let bucket = ls.bucket(true).await;
    let group = ls.log_group(false).await;
    let gw = streaming_gateway(&bucket, &group).await;
    let agent = AgentProcess::start(&gw, "red-icanon").await;
    let (sid, mut client) = open_shell(&gw, "red-icanon").await;
    client
        .type_text("stty -echo -icanon min 1; printf 'Pass''word: '; pw=$(head -c 21); stty sane; echo; echo got-${#pw}\r")
        .await;
    client.expect("Password: ").await;
    for c in SECRET.chars() {
        client.type_text(&c.to_string()).await;
    }
    client.expect(&format!("got-{}", SECRET.len())).await;
    client.type_text("exit\r").await;
    client.until_closed().await;
    let sinks = every_sink(&ls, &agent, &bucket, &group, &sid).await;
    let b64 = session_agent::recorder::event::base64_encode(SECRET.as_bytes());
    for (name, text) in &sinks {
        for needle in [SECRET, "S3CR3T", "pwfeedback", b64.as_str()] {
            assert!(!text.contains(needle), "{name} leaks {needle:?}");
        }
    }
    let cw = &sinks.iter().find(|(n, _)| n == "cloudwatch").unwrap().1;
    assert!(cw.contains("[input redacted: "), "no marker: {cw}");
    drop(agent);
    gw.stop().await;
}

/// `stty -echo; PS1=''` and then commands typed blind: the commands are not recorded
/// (they may hold secrets), but each line typed leaves a marker with its bytes, its Enter
/// and its time, and what the commands printed is recorded as always.
#[tokio::test]
async fn blind_typing_leaves_counted_timed_markers_and_the_output() {
    let ls = LocalStack::get().await;
    let bucket = ls.bucket(true).await;
    let group = ls.log_group(false).await;
    let gw = streaming_gateway(&bucket, &group).await;
    let agent = AgentProcess::start(&gw, "red-blind").await;
    let (sid, mut client) = open_shell(&gw, "red-blind").await;
    client.type_text("exec /bin/sh\r").await;
    client.expect("$ ").await;
    client.type_text("stty -echo; PS1=''\r").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Typed a key at a time over a little while, as a person would.
    for cmd in ["echo blind-$((40+2))\r", "echo again-$((50+5))\r"] {
        for c in cmd.chars() {
            client.type_text(&c.to_string()).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    client.expect("again-55").await;
    client.type_text("exit\r").await;
    client.until_closed().await;
    let sinks = every_sink(&ls, &agent, &bucket, &group, &sid).await;
    let text = |name: &str| sinks.iter().find(|(n, _)| n == name).unwrap().1.clone();
    let cw = text("cloudwatch");
    // Each blind line: one marker, counted, with Enter and its duration.
    for bytes in [
        "echo blind-$((40+2))\r".len(),
        "echo again-$((50+5))\r".len(),
    ] {
        let marker = format!("[input redacted: {bytes} bytes typed with echo off, 1 Enter, over ");
        assert!(cw.contains(&marker), "no {marker:?} in {cw}");
    }
    // The output of the blind commands is in every text sink.
    for name in ["cloudwatch", "s3 log", "s3 cast"] {
        let t = text(name);
        assert!(
            t.contains("blind-42") && t.contains("again-55"),
            "{name}: {t}"
        );
        assert!(
            !t.contains("echo blind-"),
            "{name} recorded a blind command: {t}"
        );
    }
    assert!(text("s3 cast").contains(r#""m", "input redacted: 1 bytes, 1 Enter"]"#));
    drop(agent);
    gw.stop().await;
}

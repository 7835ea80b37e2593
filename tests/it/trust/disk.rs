//! Issue 16, items 4 and 5: a full disk never blinds the recorder silently, and a
//! recording cut short never verifies as whole.
//!
//! The disk tests mount a small tmpfs of their own for the agent's state directory (root
//! is needed to mount; without it they say so and do nothing else).

use crate::recording::{
    gateway, streaming_gateway, verify_args_with_localstack, verify_with_localstack, AgentProcess,
    LocalStack,
};
use crate::support::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

/// A tmpfs mounted for one test, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// `None` (and a line saying why) when not root.
    fn mount(size: &str) -> Option<Self> {
        if !nix::unistd::geteuid().is_root() {
            #[allow(clippy::print_stderr)] // the skip must be seen
            {
                eprintln!("SKIPPED: this test mounts a {size} tmpfs, which needs root");
            }
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount -t tmpfs failed");
        // A directory any session user may write to, as /var/tmp beside /var/lib.
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(
            &shared,
            std::os::unix::fs::PermissionsExt::from_mode(0o1777),
        )
        .unwrap();
        Some(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A state directory on this disk for an agent.
    fn state(&self) -> Arc<tempfile::TempDir> {
        Arc::new(tempfile::tempdir_in(self.path()).unwrap())
    }

    /// Fills what is left with a file (as root), returns its path.
    fn fill(&self) -> PathBuf {
        let path = self.path().join("filler");
        let _ = Command::new("dd")
            .args(["if=/dev/zero", "bs=64k"])
            .arg(format!("of={}", path.display()))
            .stderr(std::process::Stdio::null())
            .status();
        path
    }
}

/// A directory made read-only by a bind mount over itself, until dropped.
struct ReadOnly(PathBuf);

impl ReadOnly {
    fn over(dir: &Path) -> Self {
        let bind = Command::new("mount")
            .arg("--bind")
            .arg(dir)
            .arg(dir)
            .status();
        assert!(bind.unwrap().success(), "mount --bind failed");
        let ro = Command::new("mount")
            .args(["-o", "remount,bind,ro"])
            .arg(dir)
            .status();
        assert!(ro.unwrap().success(), "remount read-only failed");
        Self(dir.to_owned())
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn policy(policy: &str, headroom_mb: &str) -> [(&'static str, String); 3] {
    [
        ("SESSION_AGENT_RECORDING_POLICY", policy.to_owned()),
        ("SESSION_AGENT_RECORDING_MIN_FREE_MB", "1".to_owned()),
        (
            "SESSION_AGENT_RECORDING_HEADROOM_MB",
            headroom_mb.to_owned(),
        ),
    ]
}

fn envs<'a>(p: &'a [(&'static str, String); 3]) -> Vec<(&'static str, &'a str)> {
    p.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn verify_local(agent: &AgentProcess, sid: &str) -> (Option<i32>, String) {
    let spool = agent.recording_dir(sid).join("events.spool");
    verify_with_localstack(spool.to_str().unwrap())
}

/// fail-closed: the state directory on a 5 MB file system, and a session that prints
/// 400,000 lines. The recording fills the disk: the session is ended at once with the
/// reason shown to the user, and the recording says where it stopped (a gap, then the
/// end), which `verify` reports as incomplete, not as tampering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_ends_the_session_when_the_recording_cannot_be_written() {
    let Some(disk) = SmallDisk::mount("5m") else {
        return;
    };
    let gw = gateway(json!({})).await;
    let p = policy("fail-closed", "1");
    let agent = AgentProcess::start_in(&gw, "disk-closed", disk.state(), &envs(&p)).await;
    let (sid, mut client) = open_shell(&gw, "disk-closed").await;
    client
        .type_text("seq 1 400000; echo after-the-flood-$((6*7))\r")
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while tokio::time::timeout_at(deadline, client.step())
        .await
        .expect("the session went on")
    {}
    let screen = String::from_utf8_lossy(&client.screen).into_owned();
    assert!(
        screen.contains("This session ends now: its recording cannot be written"),
        "the user was not told: {}",
        &screen[screen.len().saturating_sub(500)..]
    );
    assert!(
        !screen.contains("after-the-flood-42"),
        "the session went on"
    );
    let closed = client.closed.as_ref().expect("no channel_closed");
    assert!(
        closed.output.contains("recording_policy = \"fail-closed\""),
        "{:?}",
        closed.output
    );
    let s = wait_status(&gw, &sid, "History", "Failed").await;
    assert!(
        s["Details"].as_str().unwrap().contains("cannot be written"),
        "{s}"
    );
    let (code, said) = verify_local(&agent, &sid);
    assert_eq!(code, Some(3), "{said}\nagent log:\n{}", agent.log());
    assert!(said.starts_with("INCOMPLETE: "), "{said}");
    assert!(said.contains("recording failed"), "{said}");
    assert!(said.contains("no space left"), "{said}");
    assert!(
        !said.contains("BROKEN") && !said.contains("altered"),
        "{said}"
    );
    drop(agent);
    gw.stop().await;
}

/// fail-open: the same flood goes on to its end; once space returns the recording
/// resumes with a gap record saying what was lost, and every reader says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_records_an_explicit_gap_and_resumes_when_space_returns() {
    let Some(disk) = SmallDisk::mount("5m") else {
        return;
    };
    // Something else takes 2 MB of the disk, to be deleted later (space returns).
    let other = disk.path().join("other");
    std::fs::write(&other, vec![0u8; 2 << 20]).unwrap();
    let gw = gateway(json!({})).await;
    let p = policy("fail-open", "1");
    let agent = AgentProcess::start_in(&gw, "disk-open", disk.state(), &envs(&p)).await;
    let (sid, mut client) = open_shell(&gw, "disk-open").await;
    client
        .type_text("seq 1 400000; echo flood-$((2+3))-done\r")
        .await;
    let bytes = client
        .drain_until("flood-5-done", Duration::from_secs(180), || {})
        .await;
    assert!(bytes > 2_000_000, "{bytes}");
    // Space returns (an operator deletes something else on the disk).
    std::fs::remove_file(&other).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    client.type_text("echo back-$((6*7))\r").await;
    client.expect("back-42").await;
    client.type_text("exit\r").await;
    client.until_closed().await;
    let report = agent.delivery(&sid, Duration::from_secs(30)).await;
    assert_eq!(report["recording_complete"], false, "{report}");
    let errors = report["errors"].to_string();
    assert!(errors.contains("recording gap"), "{report}");
    let (code, said) = verify_local(&agent, &sid);
    assert_eq!(code, Some(3), "{said}");
    assert!(said.contains("the session ended (exited"), "{said}");
    assert!(
        said.contains("recording gap: ") && said.contains(" bytes in "),
        "{said}"
    );
    assert!(said.contains("were not recorded from "), "{said}");
    // The transcript has the gap line, and what came after the gap.
    let transcript =
        std::fs::read_to_string(agent.recording_dir(&sid).join(format!("{sid}.log"))).unwrap();
    assert!(transcript.contains("[recording gap: "), "no gap line");
    assert!(transcript.contains("back-42"), "nothing after the gap");
    assert!(agent
        .log()
        .contains("The recording cannot be written: a gap opens"));
    drop(agent);
    gw.stop().await;
}

/// A session user fills the disk the recordings are on (a shared /var): the space
/// reserved before the session started keeps recording what they do next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_user_filling_the_disk_cannot_blind_their_own_recording() {
    let Some(disk) = SmallDisk::mount("24m") else {
        return;
    };
    let gw = gateway(json!({})).await;
    let p = policy("fail-closed", "4");
    let agent = AgentProcess::start_in(&gw, "disk-user", disk.state(), &envs(&p)).await;
    let (sid, mut client) = open_shell(&gw, "disk-user").await;
    let fill = disk.path().join("shared").join("fill");
    client
        .type_text(&format!(
            "dd if=/dev/zero of={} bs=64k 2>/dev/null; echo filled-$((1+1))\r",
            fill.display()
        ))
        .await;
    client.expect("filled-2").await;
    client
        .type_text("echo what-they-do-next-$((6*7)); exit\r")
        .await;
    client.until_closed().await;
    assert!(
        std::fs::metadata(&fill).unwrap().len() > 8 * 1024 * 1024,
        "the disk was not filled"
    );
    let (code, said) = verify_local(&agent, &sid);
    assert_eq!(code, Some(0), "{said}");
    let transcript =
        std::fs::read_to_string(agent.recording_dir(&sid).join(format!("{sid}.log"))).unwrap();
    assert!(transcript.contains("what-they-do-next-42"), "{transcript}");
    drop(agent);
    gw.stop().await;
}

/// After a crash, the recording left behind meets a file system it cannot write (full,
/// or remounted read-only): it is kept and tried again, never quarantined, and delivered
/// once it can be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_that_cannot_be_rebuilt_yet_is_retried_not_quarantined() {
    let Some(disk) = SmallDisk::mount("16m") else {
        return;
    };
    let gw = gateway(json!({})).await;
    let p = policy("fail-open", "1");
    let state = disk.state();
    let mut agent = AgentProcess::start_in(&gw, "disk-crash", state.clone(), &envs(&p)).await;
    let (sid, mut client) = open_shell(&gw, "disk-crash").await;
    client.type_text("echo before-the-crash-$((6*7))\r").await;
    client.expect("before-the-crash-42").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    agent.kill_hard();
    drop(client);
    // Restarted with the disk full: not quarantined, whatever else happens.
    let filler = disk.fill();
    let agent = AgentProcess::start_in(&gw, "disk-crash", state.clone(), &envs(&p)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!state.path().join("quarantine").exists(), "{}", agent.log());
    drop(agent);
    std::fs::remove_file(&filler).unwrap();
    let settled = agent_dir(&state, &sid).join("delivery.json");
    if settled.exists() {
        std::fs::remove_file(&settled).unwrap();
    }
    // Restarted with the recordings read-only (a bind mount over them): the rebuild
    // fails for a passing reason, deterministically.
    let recordings = state.path().join("recordings");
    let ro = ReadOnly::over(&recordings);
    let agent = AgentProcess::start_in(&gw, "disk-crash", state.clone(), &envs(&p)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !agent.log().contains("cannot be rebuilt yet") {
        assert!(tokio::time::Instant::now() < deadline, "{}", agent.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!state.path().join("quarantine").exists(), "{}", agent.log());
    // Writable again: the next try (within 30 s) rebuilds and delivers it.
    drop(ro);
    let report = agent.delivery(&sid, Duration::from_secs(45)).await;
    assert_eq!(report["complete"], true, "{report}");
    let (code, said) = verify_local(&agent, &sid);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("interrupted"), "{said}");
    drop(agent);
    gw.stop().await;
}

fn agent_dir(state: &tempfile::TempDir, sid: &str) -> PathBuf {
    state.path().join("recordings").join(sid)
}

/// A spool cut at a record boundary (its tail and end removed), cut inside a record, or
/// with its tail cut and a new end forged on it: `verify` says incomplete or broken,
/// never intact; and copies are compared with --against.
#[tokio::test]
async fn a_recording_cut_short_never_verifies_as_whole() {
    let gw = gateway(json!({})).await;
    let agent = AgentProcess::start(&gw, "cut-tail").await;
    let (sid, mut client) = open_shell(&gw, "cut-tail").await;
    for i in 0..6 {
        client.type_text(&format!("echo line-{i}\r")).await;
        client.expect(&format!("line-{i}\r\n$ ")).await;
    }
    client.type_text("exit\r").await;
    client.until_closed().await;
    agent.delivery(&sid, Duration::from_secs(20)).await;
    let spool = agent.recording_dir(&sid).join("events.spool");
    let (code, said) = verify_with_localstack(spool.to_str().unwrap());
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("matches its session.json"), "{said}");
    let bytes = std::fs::read(&spool).unwrap();
    let mut ends = Vec::new();
    let mut reader = session_agent::spool::reader::Reader::new(&bytes[..]).unwrap();
    while let Some(Ok(_)) = reader.next() {
        ends.push(usize::try_from(reader.offset()).unwrap());
    }
    assert!(ends.len() > 14, "{}", ends.len());
    let dir = tempfile::tempdir().unwrap();
    let copy = |name: &str, data: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, data).unwrap();
        p.to_str().unwrap().to_owned()
    };
    // The last 12 records cut at a record boundary (the end among them).
    let cut = copy("cut.spool", &bytes[..ends[ends.len() - 13]]);
    let (code, said) = verify_with_localstack(&cut);
    assert_eq!(code, Some(3), "{said}");
    assert!(
        said.starts_with("INCOMPLETE: ") && said.contains("has no end"),
        "{said}"
    );
    // Cut inside a record.
    let torn = copy("torn.spool", &bytes[..bytes.len() - 5]);
    let (code, said) = verify_with_localstack(&torn);
    assert_eq!(code, Some(3), "{said}");
    assert!(said.contains("cut short"), "{said}");
    // Cut, with an end forged on it (the chain is recomputed, as anyone can): intact on
    // its own, but not the recording that session.json and the other copies describe.
    let mut forged = bytes[..ends[ends.len() - 13]].to_vec();
    let mut chain = session_agent::spool::format::CHAIN_START;
    for r in session_agent::spool::reader::Reader::new(&forged[..]).unwrap() {
        chain = r.unwrap().chain;
    }
    let seq = ends.len() - 12;
    let end =
        format!(r#"{{"seq":{seq},"at_ms":999999,"type":"end","exit_code":0,"how":"exited"}}"#);
    let next = session_agent::spool::format::chain_next(&chain, end.as_bytes());
    forged.extend(session_agent::spool::format::encode_record(
        &next,
        end.as_bytes(),
    ));
    let forged = copy("forged.spool", &forged);
    let out = Command::new(env!("CARGO_BIN_EXE_session-agent"))
        .args(["verify", &forged, "--against", spool.to_str().unwrap()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("MISMATCH"), "{said}");
    drop(agent);
    gw.stop().await;
}

/// The S3 copy of a spool and the CloudWatch stream of the same session agree on where
/// the spool ended; a copy cut short and put back in S3 (with an end forged on it or
/// not) does not.
#[tokio::test]
async fn the_s3_copy_and_the_cloudwatch_stream_vouch_for_each_other() {
    let ls = LocalStack::get().await;
    let bucket = ls.bucket(false).await;
    let group = ls.log_group(false).await;
    let gw = streaming_gateway(&bucket, &group).await;
    let agent = AgentProcess::start(&gw, "cut-sinks").await;
    let (sid, mut client) = open_shell(&gw, "cut-sinks").await;
    for i in 0..8 {
        client.type_text(&format!("echo sink-{i}\r")).await;
        client.expect(&format!("sink-{i}\r\n$ ")).await;
    }
    client.type_text("exit\r").await;
    client.until_closed().await;
    let report = agent.delivery(&sid, Duration::from_secs(30)).await;
    assert_eq!(report["complete"], true, "{report}");
    let s3 = format!("s3://{bucket}/{sid}.spool");
    let cw = format!("cloudwatch://{group}/{sid}");
    let (code, said) = verify_with_localstack(&cw);
    assert_eq!(code, Some(0), "{said}");
    let (code, said) = verify_args_with_localstack(&[&s3, "--against", &cw]);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("matches cloudwatch://"), "{said}");
    // The S3 copy cut at a record boundary, put back under another key.
    let bytes = ls.object(&bucket, &format!("{sid}.spool"), WAIT).await;
    let mut ends = Vec::new();
    let mut reader = session_agent::spool::reader::Reader::new(&bytes[..]).unwrap();
    while let Some(Ok(_)) = reader.next() {
        ends.push(usize::try_from(reader.offset()).unwrap());
    }
    let cut = bytes[..ends[ends.len() - 5]].to_vec();
    ls.s3
        .put_object()
        .bucket(&bucket)
        .key("cut.spool")
        .body(cut.into())
        .send()
        .await
        .unwrap();
    let (code, said) =
        verify_args_with_localstack(&[&format!("s3://{bucket}/cut.spool"), "--against", &cw]);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("which s3://"), "{said}");
    drop(agent);
    gw.stop().await;
}

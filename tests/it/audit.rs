//! Issue 19's sensor against the real kernel: the process events connector reports the
//! exec and the exit (with its status) of a program started here.

use session_agent::audit::cn_proc::{Kind, Listener, Received};
use std::time::{Duration, Instant};

#[allow(clippy::print_stderr)]
fn skipped(why: &str) {
    eprintln!("SKIPPED the_kernel_reports_a_programs_exec_and_exit_status: {why}");
}

#[test]
fn the_kernel_reports_a_programs_exec_and_exit_status() {
    let mut listener = match Listener::subscribe(Duration::from_secs(2)) {
        Ok(l) => l,
        // Before Linux 6.6 this needs root (CAP_NET_ADMIN); say so, loudly.
        Err(e) if !nix::unistd::geteuid().is_root() => {
            skipped(&format!("not root and {e}"));
            return;
        }
        Err(e) => panic!("as root the connector must work here: {e}"),
    };
    let child = std::process::Command::new("/bin/sh")
        .args(["-c", "exit 7"])
        .spawn()
        .unwrap();
    let pid = child.id();
    let status = child.wait_with_output().unwrap().status;
    assert_eq!(status.code(), Some(7));
    let (mut exec, mut exit) = (false, None);
    let deadline = Instant::now() + Duration::from_secs(10);
    while exit.is_none() && Instant::now() < deadline {
        match listener.recv().unwrap() {
            Received::Event(e) => match e.kind {
                Kind::Exec { tgid, .. } if tgid == pid => exec = true,
                Kind::Exit {
                    pid: p,
                    tgid,
                    status,
                    ..
                } if tgid == pid && p == tgid => {
                    exit = Some(Kind::exit_code_or_signal(status));
                }
                _ => {}
            },
            Received::Overrun => panic!("events lost on an idle test"),
            Received::Quiet | Received::Skipped => {}
        }
    }
    assert!(exec, "no exec event for {pid}");
    assert_eq!(exit, Some((Some(7), None)), "the exit status of {pid}");
}

#[test]
fn a_sessions_whole_process_tree_is_tracked_from_the_kernels_events() {
    use session_agent::audit::tree::{Audited, Tracker};
    let mut listener = match Listener::subscribe(Duration::from_secs(2)) {
        Ok(l) => l,
        Err(e) if !nix::unistd::geteuid().is_root() => {
            skipped(&format!("not root and {e}"));
            return;
        }
        Err(e) => panic!("as root the connector must work here: {e}"),
    };
    let mut tracker = Tracker::new();
    // A script: a child, a background job that leaves the process group, and a
    // grandchild that exits 7.
    let child = std::process::Command::new("/bin/sh")
        .args(["-c", "true; setsid sleep 0.2 & sh -c 'exit 7'; wait"])
        .spawn()
        .unwrap();
    let root = child.id();
    tracker.add_root(root, "s-1", 0);
    child.wait_with_output().unwrap();
    let (mut execs, mut statuses) = (0, Vec::new());
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match listener.recv().unwrap() {
            Received::Event(e) => match tracker.on_event(&e) {
                Some(Audited::Exec { session, .. }) => {
                    assert_eq!(session, "s-1");
                    execs += 1;
                }
                Some(Audited::Exit { pid, status, .. }) => {
                    statuses.push(Kind::exit_code_or_signal(status).0);
                    if pid == root {
                        break;
                    }
                }
                None => {}
            },
            Received::Overrun => panic!("events lost on an idle test"),
            Received::Quiet | Received::Skipped => {}
        }
    }
    // true, setsid, sleep (setsid execs it), sh: every program of the tree.
    assert!(execs >= 4, "{execs} execs");
    assert!(statuses.contains(&Some(7)), "{statuses:?}");
    assert_eq!(tracker.len(), 0, "every member exited and was forgotten");
}

/// The processes recorded in a session's spool.
fn processes(spool: &std::path::Path) -> Vec<session_agent::recorder::event::Process> {
    let file = std::fs::File::open(spool).unwrap();
    session_agent::spool::reader::Reader::new(file)
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|r| {
            let line = String::from_utf8(r.payload).ok()?;
            match session_agent::recorder::Event::from_json_line(&line)
                .ok()?
                .kind
            {
                session_agent::recorder::EventKind::Process(p) => Some(p),
                _ => None,
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shell_sessions_programs_are_recorded_from_the_kernel_with_secrets_masked() {
    use crate::agent::RunningAgent;
    use crate::support::*;
    use session_agent::recorder::event::ProcessPhase;
    if !nix::unistd::geteuid().is_root() {
        skipped("the command audit needs root before Linux 6.6; not root");
        return;
    }
    let gw = Gateway::start(session_agent::gateway::GatewayConfig::default()).await;
    let agent = RunningAgent::start(&gw, "audit-node").await;
    let (sid, mut client) = open_shell(&gw, "audit-node").await;
    // A program inside a script, a grandchild exiting 7, a secret in argv (made at run
    // time, so it is typed nowhere: the terminal's own recording is not what is tested
    // here), and a command typed with echo off.
    client
        .type_text(
            "sh -c \"env DB_PASSWORD=hun$(echo ter2) true; sh -c 'exit 7'\"; echo done-$((6*7))\r",
        )
        .await;
    client.expect("done-42").await;
    client
        .type_text("stty -echo; sleep 0.3; printf 'hidden-%s\\n' $((6*7)); stty echo\r")
        .await;
    client.expect("hidden-42").await;
    client.type_text("exit\r").await;
    client.until_closed().await;
    wait_status(&gw, &sid, "History", "Terminated").await;
    let spool = agent.spool(&sid);
    // Complete (its end written) and intact first.
    ended_transcript(&spool).await;
    let found = processes(&spool);
    let execs: Vec<String> = found
        .iter()
        .filter(|p| p.phase == ProcessPhase::Exec)
        .map(|p| p.argv.join(" "))
        .collect();
    assert!(
        execs.iter().any(|a| a.contains("DB_PASSWORD=[redacted]")),
        "{execs:?}"
    );
    assert!(
        execs.iter().any(|a| a == "sleep 0.3"),
        "typed with echo off: {execs:?}"
    );
    assert!(
        found
            .iter()
            .any(|p| p.phase == ProcessPhase::Exit && p.exit_code == Some(7)),
        "{found:?}"
    );
    // The secret is in no file of the recording.
    for entry in std::fs::read_dir(spool.parent().unwrap()).unwrap() {
        let path = entry.unwrap().path();
        let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
        assert!(
            !text.contains("hunter2"),
            "{} holds the secret: {:?}",
            path.display(),
            text.lines()
                .filter(|l| l.contains("hunter2"))
                .collect::<Vec<_>>()
        );
    }
    agent.stop().await;
    gw.stop().await;
}

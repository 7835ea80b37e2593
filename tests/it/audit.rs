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
    // The secret, learned from the audited argv, is masked wherever the recording meets
    // it later: here a program prints it.
    client
        .type_text("sleep 0.3; printf 'pw=%s\\n' hun$(echo ter2); echo shown-$((6*7))\r")
        .await;
    client.expect("shown-42").await;
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

/// Issue 19's first cases in one session: a script's programs (with the exit status of
/// a grandchild), a `setsid` job that left the shell's session (audited, then ended with
/// the session by its cgroup), and the kernel's audit ids set for the session user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sessions_setsid_job_is_audited_and_ended_with_it_and_carries_its_audit_ids() {
    use crate::agent::RunningAgent;
    use crate::support::*;
    use session_agent::recorder::event::ProcessPhase;
    if !nix::unistd::geteuid().is_root() {
        skipped("session cgroups and the command audit need root; not root");
        return;
    }
    let gw = Gateway::start(session_agent::gateway::GatewayConfig::default()).await;
    let agent = RunningAgent::start(&gw, "audit-setsid-node").await;
    let (sid, mut client) = open_shell(&gw, "audit-setsid-node").await;
    client
        .type_text("bash -c \"curl --version >/dev/null; sh -c 'exit 7'\"; echo first-$((6*7))\r")
        .await;
    client.expect("first-42").await;
    // A job that leaves the shell's session and ignores hang-ups: only the cgroup ends it.
    client
        .type_text("setsid nohup sleep 1000 >/dev/null 2>&1 & sleep 0.3; echo second-$((6*7))\r")
        .await;
    client.expect("second-42").await;
    client.type_text("exit\r").await;
    client.until_closed().await;
    wait_status(&gw, &sid, "History", "Terminated").await;
    let spool = agent.spool(&sid);
    ended_transcript(&spool).await;
    let found = processes(&spool);
    let execs: Vec<&session_agent::recorder::event::Process> = found
        .iter()
        .filter(|p| p.phase == ProcessPhase::Exec)
        .collect();
    let argv = |p: &session_agent::recorder::event::Process| p.argv.join(" ");
    let exec_of = |needle: &str| {
        execs.iter().find(|p| argv(p) == needle).unwrap_or_else(|| {
            panic!(
                "no exec of {needle:?} in {:?}",
                execs.iter().map(|p| argv(p)).collect::<Vec<_>>()
            )
        })
    };
    let bash = exec_of("bash -c curl --version >/dev/null; sh -c 'exit 7'");
    let curl = exec_of("curl --version");
    // bash runs the last command of `-c` in its own process (exec without a fork); a
    // program that ends within a millisecond can be gone before /proc is read, and is
    // then recorded with what the kernel's events say, marked (audit-notes §2.4).
    let sh = execs
        .iter()
        .find(|p| {
            (p.pid == bash.pid || p.ppid == Some(bash.pid))
                && p.pid != curl.pid
                && (argv(p) == "sh -c exit 7" || p.details_unavailable.is_some())
        })
        .unwrap_or_else(|| panic!("no exec of sh: {execs:?}"));
    // The tree: curl is bash's child; the details of its exec are there.
    assert_eq!(curl.ppid, Some(bash.pid), "{curl:?}");
    assert!(
        curl.executable
            .as_deref()
            .is_some_and(|e| e.ends_with("/curl")),
        "{curl:?}"
    );
    assert!(
        curl.cwd.is_some() && curl.uid.is_some() && curl.euid.is_some(),
        "{curl:?}"
    );
    let exit_of = |pid: u32| {
        found
            .iter()
            .find(|p| p.phase == ProcessPhase::Exit && p.pid == pid)
            .unwrap_or_else(|| panic!("no exit of {pid}: {found:?}"))
    };
    assert_eq!(exit_of(sh.pid).exit_code, Some(7));
    assert_eq!(exit_of(curl.pid).exit_code, Some(0));
    assert!(exit_of(bash.pid).duration_ms.is_some());
    // The setsid job: audited, then killed by the session's end (SIGKILL from the
    // cgroup), and gone from the host.
    let sleeper = exec_of("sleep 1000");
    assert_eq!(
        exit_of(sleeper.pid).signal,
        Some(9),
        "ended by the cgroup's kill"
    );
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", sleeper.pid)).unwrap_or_default();
    assert!(
        !cmdline.starts_with(b"sleep\x001000"),
        "the setsid job outlived its session"
    );
    // The kernel's audit ids: the session user's login uid on every program, and one
    // audit session id, not the agent's.
    let uid = execs[0].uid.expect("the first exec's uid");
    let mine = std::fs::read_to_string("/proc/self/sessionid").unwrap_or_default();
    // (Where known: a program gone before /proc was read, whose parent's ids were not
    // read either, has none.)
    let session_ids: std::collections::BTreeSet<u32> =
        execs.iter().filter_map(|p| p.audit_session).collect();
    assert_eq!(session_ids.len(), 1, "one audit session: {session_ids:?}");
    let ses = session_ids.into_iter().next();
    assert_ne!(ses.map(|s| s.to_string()), Some(mine.trim().to_owned()));
    assert!(
        execs.iter().filter(|p| p.audit_session.is_some()).count() >= execs.len() - 1,
        "{execs:?}"
    );
    assert!(
        execs
            .iter()
            .all(|p| p.login_uid.is_none() || p.login_uid == Some(uid)),
        "login uid {uid} on every program: {:?}",
        execs.iter().map(|p| p.login_uid).collect::<Vec<_>>()
    );
    // Nothing is left of the session's cgroup.
    let left: Vec<_> = walk_cgroups()
        .into_iter()
        .filter(|d| d.ends_with(session_agent::audit::cgroup::dir_name(&sid)))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    agent.stop().await;
    gw.stop().await;
}

/// Every directory under the cgroup v2 mount (to find a session's).
fn walk_cgroups() -> Vec<std::path::PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let Some(mount) = session_agent::audit::cgroup::cgroup2_mount(&mountinfo) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut todo = vec![mount];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                out.push(entry.path());
                todo.push(entry.path());
            }
        }
    }
    out
}

/// A storm of short-lived programs: each one recorded (with its details, or marked as
/// gone before they could be read), or the loss written down — never silently missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_short_programs_is_recorded_or_counted_never_silently_lost() {
    use crate::agent::RunningAgent;
    use crate::support::*;
    use session_agent::recorder::event::ProcessPhase;
    if !nix::unistd::geteuid().is_root() {
        skipped("the command audit needs root before Linux 6.6; not root");
        return;
    }
    let gw = Gateway::start(session_agent::gateway::GatewayConfig::default()).await;
    let agent = RunningAgent::start(&gw, "audit-storm-node").await;
    let (sid, mut client) = open_shell(&gw, "audit-storm-node").await;
    client
        .type_text(
            "i=0; while [ $i -lt 1000 ]; do /bin/true; i=$((i+1)); done; echo storm-$((500*2))\r",
        )
        .await;
    client.expect("storm-1000").await;
    client.type_text("exit\r").await;
    client.until_closed().await;
    wait_status(&gw, &sid, "History", "Terminated").await;
    let spool = agent.spool(&sid);
    ended_transcript(&spool).await;
    let found = processes(&spool);
    let execs: Vec<_> = found
        .iter()
        .filter(|p| p.phase == ProcessPhase::Exec)
        .collect();
    let shell = execs.first().expect("the shell's exec");
    // The loop's programs: the shell's children (each /bin/true; `echo` is built in).
    let children: Vec<_> = execs.iter().filter(|p| p.ppid == Some(shell.pid)).collect();
    for child in &children {
        // Read from /proc, or gone before it could be read and marked so.
        assert!(
            child.argv == ["/bin/true"] || child.details_unavailable.is_some(),
            "{child:?}"
        );
    }
    let exits: Vec<_> = found
        .iter()
        .filter(|p| p.phase == ProcessPhase::Exit && children.iter().any(|c| c.pid == p.pid))
        .collect();
    let lost: u64 = gaps(&spool);
    assert!(
        children.len() == 1000 || lost > 0,
        "{} of 1000 recorded and no gap written",
        children.len()
    );
    if lost == 0 {
        assert_eq!(exits.len(), 1000, "each one's exit");
        assert!(exits.iter().all(|e| e.exit_code == Some(0)), "true exits 0");
    }
    agent.stop().await;
    gw.stop().await;
}

/// The events counted as lost in a spool's gap records.
fn gaps(spool: &std::path::Path) -> u64 {
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
                session_agent::recorder::EventKind::Gap { events, .. } => Some(events.max(1)),
                _ => None,
            }
        })
        .sum()
}

/// The sensor's loss is never silent: with a tiny receive buffer and a reader that
/// pauses during a burst of processes, the socket reports the overrun and the per-CPU
/// sequence numbers count what was dropped.
#[test]
fn a_full_kernel_queue_is_reported_and_its_loss_counted() {
    use session_agent::audit::cn_proc::LossCounter;
    let mut listener = match Listener::subscribe_with_buffer(Duration::from_secs(2), 4096) {
        Ok(l) => l,
        Err(e) if !nix::unistd::geteuid().is_root() => {
            skipped(&format!("not root and {e}"));
            return;
        }
        Err(e) => panic!("as root the connector must work here: {e}"),
    };
    // The reader pauses while 300 processes start and end.
    let status = std::process::Command::new("/bin/sh")
        .args([
            "-c",
            "i=0; while [ $i -lt 300 ]; do /bin/true; i=$((i+1)); done",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let (mut overrun, mut counter, mut lost, mut events) = (false, LossCounter::new(), 0, 0);
    loop {
        match listener.recv_now().unwrap() {
            Received::Overrun => overrun = true,
            Received::Event(e) => {
                events += 1;
                lost += counter.on_event(&e);
            }
            Received::Skipped => {}
            Received::Quiet => break,
        }
    }
    assert!(
        overrun,
        "a 4 KiB queue cannot hold 300 lifecycles ({events} events read)"
    );
    // The rest of the host's events keep coming: more reads show the jump.
    let _ = std::process::Command::new("/bin/true").status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while lost == 0 && Instant::now() < deadline {
        if let Received::Event(e) = listener.recv().unwrap() {
            lost += counter.on_event(&e);
        }
    }
    assert!(
        lost > 0,
        "the sequence numbers show the loss ({events} read)"
    );
}

/// After a crash (`kill -9` of the agent; the unit's `KillMode=process` leaves sessions
/// running), the next start finds the sessions' cgroups still populated and ends what is
/// in them — including a process that left its session with setsid.
#[test]
fn a_restarted_agent_ends_what_its_predecessors_sessions_left_running() {
    use session_agent::audit::cgroup::{cgroup2_mount, Sessions};
    if !nix::unistd::geteuid().is_root() {
        skipped("cgroups need root; not root");
        return;
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let Some(mount) = cgroup2_mount(&mountinfo) else {
        panic!("as root on this VM a cgroup v2 file system is mounted");
    };
    let instance = mount
        .join("session-agent")
        .join(format!("agent-test-leftovers-{}", std::process::id()));
    let before = Sessions::at(&mount, &instance).unwrap();
    let cg = before.create("s-crashed").unwrap();
    let mut job = std::process::Command::new("setsid")
        .args(["sleep", "1000"])
        .spawn()
        .unwrap();
    std::fs::write(cg.dir().join("cgroup.procs"), job.id().to_string()).unwrap();
    // The agent "crashed": a new instance on the same directory.
    let after = Sessions::at(&mount, &instance).unwrap();
    let found = after.leftovers();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, "session-s-crashed");
    assert!(found[0].1.contains(&job.id()), "{found:?}");
    let status = job.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "killed"
    );
    assert!(!cg.dir().exists(), "its cgroup removed");
    after.close();
    assert!(!instance.exists());
}

/// Two sessions of the same user at once: each one's programs are in its own recording
/// only; an argument area too long to keep is cut and marked; a program whose file is
/// deleted while it runs is recorded under the file's path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sessions_at_once_each_get_their_own_programs_only() {
    use crate::agent::RunningAgent;
    use crate::support::*;
    use session_agent::recorder::event::ProcessPhase;
    if !nix::unistd::geteuid().is_root() {
        skipped("the command audit needs root before Linux 6.6; not root");
        return;
    }
    let gw = Gateway::start(session_agent::gateway::GatewayConfig::default()).await;
    let agent = RunningAgent::start(&gw, "audit-two-node").await;
    let (sid_a, mut a) = open_shell(&gw, "audit-two-node").await;
    let (sid_b, mut b) = open_shell(&gw, "audit-two-node").await;
    for round in 0..3 {
        a.type_text(&format!("sleep 0.0{round}1; echo a-$((100+{round}))\r"))
            .await;
        b.type_text(&format!("sleep 0.0{round}2; echo b-$((200+{round}))\r"))
            .await;
        a.expect(&format!("a-{}", 100 + round)).await;
        b.expect(&format!("b-{}", 200 + round)).await;
    }
    // 100 KiB of arguments (the agent keeps 64 KiB), and a program whose file is gone.
    a.type_text(
        "/bin/sh -c 'sleep 0.3' $(head -c 102400 /dev/zero | tr '\\0' x); echo long-$((6*7))\r",
    )
    .await;
    a.expect("long-42").await;
    a.type_text("cp /bin/sleep /tmp/sa-gone-$$ && (/tmp/sa-gone-$$ 0.5 & sleep 0.1; rm /tmp/sa-gone-$$; wait); echo gone-$((6*7))\r")
        .await;
    a.expect("gone-42").await;
    for c in [&mut a, &mut b] {
        c.type_text("exit\r").await;
        c.until_closed().await;
    }
    wait_status(&gw, &sid_a, "History", "Terminated").await;
    wait_status(&gw, &sid_b, "History", "Terminated").await;
    let (spool_a, spool_b) = (agent.spool(&sid_a), agent.spool(&sid_b));
    ended_transcript(&spool_a).await;
    ended_transcript(&spool_b).await;
    let argvs = |spool: &std::path::Path| -> Vec<String> {
        processes(spool)
            .iter()
            .filter(|p| p.phase == ProcessPhase::Exec)
            .map(|p| p.argv.join(" "))
            .collect()
    };
    let (in_a, in_b) = (argvs(&spool_a), argvs(&spool_b));
    for round in 0..3 {
        assert!(in_a.contains(&format!("sleep 0.0{round}1")), "{in_a:?}");
        assert!(in_b.contains(&format!("sleep 0.0{round}2")), "{in_b:?}");
        assert!(
            !in_a.contains(&format!("sleep 0.0{round}2")),
            "b's in a: {in_a:?}"
        );
        assert!(
            !in_b.contains(&format!("sleep 0.0{round}1")),
            "a's in b: {in_b:?}"
        );
    }
    let found = processes(&spool_a);
    let long = found
        .iter()
        .find(|p| p.argv.first().is_some_and(|a| a == "/bin/sh") && p.argv.len() > 2)
        .expect("the long exec");
    assert!(long.argv_truncated, "marked as cut");
    assert!(
        long.argv.iter().map(String::len).sum::<usize>() <= 64 * 1024,
        "kept within the bound"
    );
    let gone = found
        .iter()
        .find(|p| {
            p.argv
                .first()
                .is_some_and(|a| a.starts_with("/tmp/sa-gone-"))
        })
        .expect("the exec of the copied sleep");
    assert!(
        gone.executable
            .as_deref()
            .is_some_and(|e| e.contains("/tmp/sa-gone-")),
        "{gone:?}"
    );
    agent.stop().await;
    gw.stop().await;
}

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

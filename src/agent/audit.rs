//! The command audit in the agent (issue 19): one thread reads the kernel's process
//! events (`audit::cn_proc`), follows each session's processes, reads what every member
//! executes from `/proc` (`audit::procfs`), masks secrets in its arguments
//! (`audit::redact`) and records exec and exit events into the session's recording, which
//! delivers them like the rest (spool, CloudWatch stream with `eventType` `exec` /
//! `exit`).
//!
//! One thread, not a task: the reader must drain the kernel's queue whatever the runtime
//! is doing (a full queue loses events), and `/proc` reads block. Without the kernel
//! facility (no root before Linux 6.6, a kernel without `CONFIG_PROC_EVENTS`), the agent
//! says so once at start and records sessions as before.
//!
//! # Membership
//!
//! A process is a session's when the kernel put it in the session's cgroup
//! (`audit::cgroup`; the shim joins it before the session's first program runs, and the
//! session user cannot leave it), checked at its exec, or when it descends from a member
//! by fork (`audit::tree`; this keeps a process root moved out of the cgroup). The agent
//! announces a session's cgroup *before* starting it ([`Audit::expect`]), so the shell's
//! own exec and its rc files' first forks are caught; its recording exists a moment
//! later ([`Audit::register`]), and what was seen meanwhile is held (at most
//! [`HELD_MAX_BYTES`]; beyond, counted and written as a gap) and recorded then. Without
//! a cgroup (not root, no cgroup v2) membership is by descent from the first process,
//! registered just after it starts: a fork in that first instant can be missed.
//!
//! # Loss
//!
//! A full kernel queue is reported once by the socket (`ENOBUFS`); the per-CPU sequence
//! numbers then say how many events were dropped. Both become a gap record in every
//! running session's recording (from the last event read to the first after the loss,
//! with the count, host-wide: an upper bound for the session) — never silence — and each
//! session's cgroup is re-read, so its processes that were missed are recorded as found
//! after the loss (`detailsUnavailable: "found-after-event-loss"`: their exec's time
//! and arguments at that time are unknown).

use super::recording::Tap;
use crate::audit::cn_proc::{Event, Kind, Listener, LossCounter, Received};
use crate::audit::redact::Redactor;
use crate::audit::{procfs, tree};
use crate::recorder::event::{Process, ProcessPhase};
use std::collections::HashMap;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long one read of the kernel's events waits, so registrations are taken promptly.
const POLL: Duration = Duration::from_millis(50);

/// Records of a session held before its recording exists, in bytes of arguments (a
/// session that execs a storm in its first milliseconds costs no more than this).
pub(crate) const HELD_MAX_BYTES: usize = 1024 * 1024;

/// User names kept by the audit thread (one per uid seen).
const USER_NAMES: usize = 4096;

/// The reader thread's nice value (the sessions' programs run at 0).
const READER_NICE: i32 = -10;

/// How long after a loss the count of lost events is gathered before the gap is written.
const LOSS_SETTLE: Duration = Duration::from_millis(200);

/// Why a gap was written.
const LOSS_REASON: &str = "the kernel's process events overflowed: programs of this session run meanwhile may be missing from the audit";

enum Cmd {
    /// A session is about to start in `cgroup` (as `/proc/PID/cgroup` names it).
    Expect {
        session: String,
        cgroup: String,
        dir: std::path::PathBuf,
    },
    Register {
        root: u32,
        session: String,
        tap: Tap,
    },
    /// Everything the kernel reported so far is recorded, then the session forgotten;
    /// the answer says so.
    Unregister {
        session: String,
        done: tokio::sync::oneshot::Sender<()>,
    },
}

/// The agent's handle on the audit thread.
#[derive(Debug, Clone)]
pub(crate) struct Audit {
    tx: mpsc::Sender<Cmd>,
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cmd")
    }
}

impl Audit {
    /// Subscribes to the kernel's process events and starts the thread; `None` (said
    /// once, with why) when the kernel facility cannot be used.
    pub(crate) fn start(redactor: Redactor) -> Option<Self> {
        let listener = match Listener::subscribe(POLL) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "The command audit is off: sessions are recorded as before, without the programs they run");
                return None;
            }
        };
        let (tx, rx) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("command-audit".into())
            .spawn(move || {
                // Ahead of the sessions' programs: a process's details can only be read
                // while it lives, so the reader must run as soon as the kernel reports an
                // exec (root may raise a priority; elsewhere this fails and is harmless).
                let tid = rustix::thread::gettid();
                let _ = rustix::process::setpriority_process(Some(tid), READER_NICE);
                Thread::new(redactor).run(listener, &rx);
            });
        match spawned {
            Ok(_) => {
                tracing::info!(
                    "Command audit on: every program a session runs is recorded, from the kernel"
                );
                Some(Self { tx })
            }
            Err(e) => {
                tracing::warn!(error = %e, "The command audit is off: its thread could not start");
                None
            }
        }
    }

    /// Announces `session`, about to start in `cgroup`: its processes are followed from
    /// their first exec.
    pub(crate) fn expect(&self, session: &str, cgroup: &crate::audit::cgroup::SessionCgroup) {
        let _ = self.tx.send(Cmd::Expect {
            session: session.to_owned(),
            cgroup: cgroup.relative().to_owned(),
            dir: cgroup.dir().to_owned(),
        });
    }

    /// Follows the processes of `session`, whose first process is `root`, into `tap`.
    pub(crate) fn register(&self, root: u32, session: &str, tap: Tap) {
        let _ = self.tx.send(Cmd::Register {
            root,
            session: session.to_owned(),
            tap,
        });
    }

    /// Records what is left of `session`'s processes (call after they were ended), then
    /// forgets it. Also for a session announced by [`Self::expect`] that never started.
    pub(crate) async fn unregister(&self, session: &str) {
        let (done, recorded) = tokio::sync::oneshot::channel();
        if self
            .tx
            .send(Cmd::Unregister {
                session: session.to_owned(),
                done,
            })
            .is_ok()
        {
            let _ = tokio::time::timeout(Duration::from_secs(2), recorded).await;
        }
    }
}

/// One followed session.
#[derive(Default)]
struct Followed {
    /// Its recording, once it exists.
    tap: Option<Tap>,
    /// Its cgroup as `/proc` names it, and its directory.
    cgroup: Option<(String, std::path::PathBuf)>,
    /// Records seen before the recording existed (with their arguments' secrets).
    held: Vec<(Vec<String>, Process)>,
    held_bytes: usize,
    /// Records not held (over [`HELD_MAX_BYTES`]).
    held_lost: u64,
}

/// A loss being counted.
struct Loss {
    /// When the last event before it was read.
    since: Instant,
    /// When it was noticed.
    noticed: Instant,
    /// Events lost (from the sequence numbers).
    events: u64,
}

/// The audit thread's state.
struct Thread {
    tracker: tree::Tracker<String>,
    sessions: HashMap<String, Followed>,
    /// cgroup path -> session.
    by_cgroup: HashMap<String, String>,
    redactor: Redactor,
    loss: LossCounter,
    pending_loss: Option<Loss>,
    last_event: Instant,
    /// uid -> name.
    users: HashMap<u32, Option<String>>,
}

impl Thread {
    fn new(redactor: Redactor) -> Self {
        Self {
            tracker: tree::Tracker::new(),
            sessions: HashMap::new(),
            by_cgroup: HashMap::new(),
            redactor,
            loss: LossCounter::new(),
            pending_loss: None,
            last_event: Instant::now(),
            users: HashMap::new(),
        }
    }

    fn run(mut self, mut listener: Listener, rx: &mpsc::Receiver<Cmd>) {
        loop {
            loop {
                match rx.try_recv() {
                    Ok(Cmd::Unregister { session, done }) => {
                        // What the kernel has queued about the session goes in first.
                        loop {
                            match listener.recv_now() {
                                Ok(Received::Event(e)) => self.on_event(&e),
                                Ok(Received::Skipped) => {}
                                Ok(Received::Overrun) => self.on_overrun(),
                                _ => break,
                            }
                        }
                        self.settle_loss(true);
                        self.forget(&session);
                        let _ = done.send(());
                    }
                    Ok(cmd) => self.on_cmd(cmd),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => return,
                }
            }
            match listener.recv() {
                Ok(Received::Event(e)) => self.on_event(&e),
                Ok(Received::Overrun) => self.on_overrun(),
                Ok(Received::Quiet | Received::Skipped) => {}
                Err(e) => {
                    tracing::error!(error = %e, "The command audit stopped: its kernel socket failed");
                    return;
                }
            }
            self.settle_loss(false);
        }
    }

    fn on_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Expect {
                session,
                cgroup,
                dir,
            } => {
                self.by_cgroup.insert(cgroup.clone(), session.clone());
                self.sessions.entry(session).or_default().cgroup = Some((cgroup, dir));
            }
            Cmd::Register { root, session, tap } => {
                let followed = self.sessions.entry(session.clone()).or_default();
                // With a cgroup, the session's first program is found by it at its exec
                // (the shim joins the cgroup, then becomes the session user, then
                // executes it). Adding the root pid here as well would race the shim's
                // own exec: if that event is still queued when this command arrives, the
                // agent's shim (root, before it changed user) would be recorded as the
                // session's first program.
                if followed.cgroup.is_none() && self.tracker.session_of(root).is_none() {
                    self.tracker.add_root(root, session, 0);
                }
                for (secrets, process) in followed.held.drain(..) {
                    tap.secrets_blocking(secrets);
                    tap.process_blocking(process);
                }
                if followed.held_lost > 0 {
                    tap.audit_gap_blocking(
                        0,
                        followed.held_lost,
                        "the session's first programs were too many to hold until its recording began",
                    );
                }
                followed.held_bytes = 0;
                followed.held_lost = 0;
                followed.tap = Some(tap);
            }
            Cmd::Unregister { .. } => {}
        }
    }

    fn forget(&mut self, session: &str) {
        self.tracker.remove_session(&session.to_owned());
        if let Some(f) = self.sessions.remove(session) {
            if let Some((cg, _)) = f.cgroup {
                self.by_cgroup.remove(&cg);
            }
        }
    }

    fn on_overrun(&mut self) {
        tracing::warn!("The kernel's process events overflowed: some programs of running sessions may not be recorded (written as a gap in their recordings)");
        if self.pending_loss.is_none() {
            self.pending_loss = Some(Loss {
                since: self.last_event,
                noticed: Instant::now(),
                events: 0,
            });
        }
    }

    /// Writes a counted loss into every session's recording once its count has settled
    /// (or now, with `now`), then finds the sessions' processes that were missed.
    fn settle_loss(&mut self, now: bool) {
        let Some(loss) = &self.pending_loss else {
            return;
        };
        if !now && loss.noticed.elapsed() < LOSS_SETTLE {
            return;
        }
        let Some(loss) = self.pending_loss.take() else {
            return;
        };
        let lost_ms = u64::try_from(loss.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        for f in self.sessions.values_mut() {
            match &f.tap {
                Some(tap) => {
                    let from = tap.now_ms().saturating_sub(lost_ms);
                    tap.audit_gap_blocking(from, loss.events.max(1), LOSS_REASON);
                }
                None => f.held_lost += loss.events.max(1),
            }
        }
        self.resync();
    }

    /// Every process in a session's cgroup that is not followed yet (its fork or exec
    /// was lost) is followed from now on and recorded as found.
    fn resync(&mut self) {
        let now_ns = monotonic_ns();
        let cgroups: Vec<(String, std::path::PathBuf)> = self
            .sessions
            .iter()
            .filter_map(|(s, f)| Some((s.clone(), f.cgroup.as_ref()?.1.clone())))
            .collect();
        for (session, dir) in cgroups {
            for pid in crate::audit::cgroup::pids_in(&dir) {
                if self.tracker.session_of(pid).is_some() {
                    continue;
                }
                self.tracker.add_member(pid, session.clone(), 0, now_ns);
                let (mut process, secrets) = self.exec_record(pid, 0);
                process.details_unavailable = Some("found-after-event-loss".to_owned());
                self.deliver(&session, secrets, process);
            }
        }
    }

    fn on_event(&mut self, event: &Event) {
        self.last_event = Instant::now();
        let lost = self.loss.on_event(event);
        if lost > 0 {
            match &mut self.pending_loss {
                Some(loss) => loss.events += lost,
                None => {
                    self.pending_loss = Some(Loss {
                        since: self.last_event,
                        noticed: Instant::now(),
                        events: lost,
                    });
                }
            }
        }
        // A process not followed yet that executes in a session's cgroup is the
        // session's (its first program, or one whose fork was not seen).
        if let Kind::Exec { tgid, .. } = event.kind {
            if !self.by_cgroup.is_empty() && self.tracker.session_of(tgid).is_none() {
                if let Some(session) =
                    procfs::cgroup_of(tgid).and_then(|cg| self.by_cgroup.get(&cg).cloned())
                {
                    self.tracker
                        .add_member(tgid, session, 0, event.timestamp_ns);
                }
            }
        }
        let Some(audited) = self.tracker.on_event(event) else {
            return;
        };
        match audited {
            tree::Audited::Exec {
                session, pid, ppid, ..
            } => {
                let (process, secrets) = self.exec_record(pid, ppid);
                self.deliver(&session, secrets, process);
            }
            tree::Audited::Exit {
                session,
                pid,
                status,
                duration_ns,
            } => {
                let (exit_code, signal) = Kind::exit_code_or_signal(status);
                self.deliver(
                    &session,
                    Vec::new(),
                    Process {
                        phase: ProcessPhase::Exit,
                        pid,
                        ppid: None,
                        user: None,
                        uid: None,
                        euid: None,
                        cwd: None,
                        executable: None,
                        argv: Vec::new(),
                        argv_truncated: false,
                        redactions: 0,
                        details_unavailable: None,
                        login_uid: None,
                        audit_session: None,
                        exit_code,
                        signal,
                        duration_ms: duration_ns.map(|ns| ns / 1_000_000),
                    },
                );
            }
        }
    }

    /// What `pid` executes, read from `/proc` now, secrets masked; what could not be
    /// read (it was gone) filled from what the event stream says of it.
    fn exec_record(&mut self, pid: u32, ppid: u32) -> (Process, Vec<String>) {
        // The audit ids are read where they are not known from the parent (a session's
        // first process, one found by its cgroup), and from a program that may have
        // changed them (root, by writing its login uid).
        let inherited = self.tracker.known(pid);
        let read_ids =
            inherited.audit_session.is_none() || inherited.uids.is_some_and(|(_, euid)| euid == 0);
        let want = procfs::Want {
            status: inherited.uids.is_none() || ppid == 0,
            audit_ids: read_ids,
        };
        let details = procfs::read(pid, want).unwrap_or_default();
        self.tracker.learn(
            pid,
            tree::Known {
                uids: details.uids,
                login_uid: details.loginuid,
                audit_session: details.audit_session,
            },
        );
        let known = self.tracker.known(pid);
        let (argv, redactions, secrets) = self.redactor.redact_with_secrets(&details.argv);
        let incomplete = details.incomplete();
        let process = Process {
            phase: ProcessPhase::Exec,
            pid,
            ppid: if ppid != 0 { Some(ppid) } else { details.ppid },
            user: known.uids.and_then(|(uid, _)| self.user_name(uid)),
            uid: known.uids.map(|u| u.0),
            euid: known.uids.map(|u| u.1),
            cwd: details.cwd,
            executable: details.exe.or(details.comm),
            argv,
            argv_truncated: details.argv_cut,
            redactions,
            details_unavailable: incomplete.then(|| "exited-before-read".to_owned()),
            login_uid: known.login_uid,
            audit_session: known.audit_session,
            exit_code: None,
            signal: None,
            duration_ms: None,
        };
        (process, secrets)
    }

    /// The name of `uid`, looked up once (the host's user database may be remote) and
    /// kept; at most [`USER_NAMES`] names are kept.
    fn user_name(&mut self, uid: u32) -> Option<String> {
        if let Some(name) = self.users.get(&uid) {
            return name.clone();
        }
        if self.users.len() >= USER_NAMES {
            self.users.clear();
        }
        let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|u| u.name);
        self.users.insert(uid, name.clone());
        name
    }

    /// Into the session's recording, or held until it exists. The secrets its arguments
    /// held go first: the recording masks them from then on wherever they appear (the
    /// program may print them; the user may type them again).
    fn deliver(&mut self, session: &str, secrets: Vec<String>, process: Process) {
        let Some(f) = self.sessions.get_mut(session) else {
            return;
        };
        match &f.tap {
            Some(tap) => {
                tap.secrets_blocking(secrets);
                tap.process_blocking(process);
            }
            None => {
                let size = 256
                    + process.argv.iter().map(String::len).sum::<usize>()
                    + secrets.iter().map(String::len).sum::<usize>();
                if f.held_bytes + size > HELD_MAX_BYTES {
                    f.held_lost += 1;
                } else {
                    f.held_bytes += size;
                    f.held.push((secrets, process));
                }
            }
        }
    }
}

/// CLOCK_MONOTONIC in nanoseconds (the clock of the kernel's event timestamps).
fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(t.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(t.tv_nsec).unwrap_or(0))
}

/// How long the end of a session waits for its cgroup to empty after the kill.
const CGROUP_KILL_WAIT: Duration = Duration::from_secs(5);

/// A session's cgroup: every process still in it is killed and the cgroup removed by
/// [`Contained::end`] (after the shell was terminated), or when dropped on a way out
/// that did not get there.
#[derive(Debug)]
pub(crate) struct Contained {
    cgroup: Option<crate::audit::cgroup::SessionCgroup>,
    session: String,
}

impl Contained {
    /// A cgroup for `session` (`None` when the agent has none for its sessions, said at
    /// start, or this one cannot be made, said now), announced to the audit.
    pub(crate) fn create(
        sessions: Option<&crate::audit::cgroup::Sessions>,
        audit: Option<&Audit>,
        session: &str,
    ) -> Option<Self> {
        let cgroup = match sessions?.create(session) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(session, error = %e, "Cannot create the session's cgroup: its processes that call setsid can outlive it");
                return None;
            }
        };
        if let Some(audit) = audit {
            audit.expect(session, &cgroup);
        }
        Some(Self {
            cgroup: Some(cgroup),
            session: session.to_owned(),
        })
    }

    /// The directory the shim joins.
    pub(crate) fn dir(&self) -> Option<std::path::PathBuf> {
        self.cgroup.as_ref().map(|c| c.dir().to_owned())
    }

    /// Ends every process left in the session's cgroup (`setsid` jobs included) and
    /// removes it.
    pub(crate) async fn end(mut self) {
        let Some(cgroup) = self.cgroup.take() else {
            return;
        };
        let session = std::mem::take(&mut self.session);
        let _ = tokio::task::spawn_blocking(move || end_cgroup(&cgroup, &session)).await;
    }
}

impl Drop for Contained {
    fn drop(&mut self) {
        if let Some(cgroup) = self.cgroup.take() {
            end_cgroup(&cgroup, &self.session);
        }
    }
}

fn end_cgroup(cgroup: &crate::audit::cgroup::SessionCgroup, session: &str) {
    let killed = cgroup.kill_all(CGROUP_KILL_WAIT);
    if !killed.pids.is_empty() {
        tracing::info!(session, pids = ?killed.pids, "Ended the processes the session left running");
    }
    if !killed.removed {
        tracing::warn!(session, left = ?killed.left, dir = %cgroup.dir().display(), "The session's cgroup could not be removed: processes are still in it");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The root pid handed over at registration is the agent's shim until it has joined
    /// the session's cgroup, become the session user and executed the session's program:
    /// with a cgroup, membership comes from the cgroup at that exec, never from the
    /// registration (a shim exec still queued would be recorded as a root program of the
    /// session, as seen under load).
    #[test]
    fn with_a_cgroup_the_registered_root_is_not_a_member_until_its_exec_there() {
        let mut thread = Thread::new(Redactor::default());
        thread.on_cmd(Cmd::Expect {
            session: "s-1".into(),
            cgroup: "/session-agent/test/session-s-1".into(),
            dir: std::path::PathBuf::from("/nonexistent/session-s-1"),
        });
        let (tap, mut recorded) = Tap::counting();
        // This test's own process stands for the shim: it is not in that cgroup.
        let shim = std::process::id();
        thread.on_cmd(Cmd::Register {
            root: shim,
            session: "s-1".into(),
            tap,
        });
        assert!(thread.tracker.session_of(shim).is_none());
        thread.on_event(&Event {
            cpu: 0,
            seq: 0,
            timestamp_ns: 1,
            kind: Kind::Exec {
                pid: shim,
                tgid: shim,
            },
        });
        assert_eq!(
            recorded(),
            0,
            "the shim's exec outside the cgroup was recorded"
        );

        // Without a cgroup (none could be made), the root is all there is to follow.
        let mut thread = Thread::new(Redactor::default());
        let (tap, _recorded) = Tap::counting();
        thread.on_cmd(Cmd::Register {
            root: shim,
            session: "s-2".into(),
            tap,
        });
        assert_eq!(thread.tracker.session_of(shim), Some(&"s-2".to_owned()));
    }
}

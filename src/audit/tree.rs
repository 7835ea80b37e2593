//! Which processes belong to which session, from the kernel's fork/exec/exit stream
//! (pure: events in, audit records out; no `/proc`, no clock).
//!
//! A session's processes are its root (the shell or command the agent started) and
//! everything descended from it: a FORK whose parent is a member makes the child a
//! member, whatever it does afterwards (`setsid`, `nohup`, double forks, a new process
//! group), because the kernel reports the fork before the child can run. Only processes
//! count (`pid == tgid`); threads are ignored. A member is forgotten at its EXIT, so a
//! recycled pid is never taken for the old process (`audit-notes.md` §2.4: pid reuse is
//! common). This is one of the membership facts the design asks for; the audit session
//! id and the per-session cgroup, which the agent reads at EXEC, are the others (they
//! survive a lost FORK, which this cannot).
//!
//! Memory: one entry per live member process, bounded by what the sessions run (the
//! kernel's pid space); nothing is kept for processes of other sessions or of the host.

use super::cn_proc::{Event, Kind};
use std::collections::HashMap;

/// What the tracker says about one member process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audited<S> {
    /// A member executed a program (its details are to be read from `/proc` now).
    Exec {
        /// The member's session.
        session: S,
        /// The process.
        pid: u32,
        /// Its parent when it was forked (0 for a session's root).
        ppid: u32,
        /// Monotonic nanoseconds of the exec.
        at_ns: u64,
    },
    /// A member ended.
    Exit {
        /// The member's session.
        session: S,
        /// The process.
        pid: u32,
        /// The wait(2) status word.
        status: u32,
        /// Nanoseconds since it was forked (`None` for a root added without its start).
        duration_ns: Option<u64>,
    },
}

/// What is known of a member without `/proc`: inherited from its parent at fork,
/// updated by the kernel's uid events and by what was read of it. So a process gone
/// before its details could be read is still recorded with its user and audit ids.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Known {
    /// Real and effective uid.
    pub uids: Option<(u32, u32)>,
    /// Audit login uid.
    pub login_uid: Option<u32>,
    /// Audit session id.
    pub audit_session: Option<u32>,
}

impl Known {
    /// `self`, with what `newer` knows taking precedence.
    fn merged(self, newer: Known) -> Known {
        Known {
            uids: newer.uids.or(self.uids),
            login_uid: newer.login_uid.or(self.login_uid),
            audit_session: newer.audit_session.or(self.audit_session),
        }
    }
}

#[derive(Debug, Clone)]
struct Member<S> {
    session: S,
    ppid: u32,
    since_ns: u64,
    known: Known,
}

/// Session membership of live processes. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Tracker<S> {
    members: HashMap<u32, Member<S>>,
}

impl<S> Default for Tracker<S> {
    fn default() -> Self {
        Self {
            members: HashMap::new(),
        }
    }
}

impl<S: Clone> Tracker<S> {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// `pid` (a session's shell or command, already running) belongs to `session`;
    /// `now_ns`: when it started (monotonic), 0 when not known.
    pub fn add_root(&mut self, pid: u32, session: S, now_ns: u64) {
        self.members.insert(
            pid,
            Member {
                session,
                ppid: 0,
                since_ns: now_ns,
                known: Known::default(),
            },
        );
    }

    /// `pid` belongs to `session`, found there at its exec (by its cgroup) rather than by
    /// its fork; `ppid` its parent, `since_ns` when it was first seen (monotonic).
    pub fn add_member(&mut self, pid: u32, session: S, ppid: u32, since_ns: u64) {
        self.members.insert(
            pid,
            Member {
                session,
                ppid,
                since_ns,
                known: Known::default(),
            },
        );
    }

    /// What was read of member `pid` (its details at exec).
    pub fn learn(&mut self, pid: u32, known: Known) {
        if let Some(m) = self.members.get_mut(&pid) {
            m.known = m.known.merged(known);
        }
    }

    /// What is known of member `pid` (nothing for a non-member).
    pub fn known(&self, pid: u32) -> Known {
        self.members.get(&pid).map(|m| m.known).unwrap_or_default()
    }

    /// The session `pid` belongs to, if any.
    pub fn session_of(&self, pid: u32) -> Option<&S> {
        self.members.get(&pid).map(|m| &m.session)
    }

    /// Live member processes.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// No live member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Forgets every process of `session` (it ended; anything left was killed).
    pub fn remove_session(&mut self, session: &S)
    where
        S: PartialEq,
    {
        self.members.retain(|_, m| &m.session != session);
    }

    /// One event from the kernel; what it means for the sessions' members.
    pub fn on_event(&mut self, event: &Event) -> Option<Audited<S>> {
        match event.kind {
            Kind::Fork {
                parent_tgid,
                child_pid,
                child_tgid,
                ..
            } if child_pid == child_tgid => {
                let parent = self.members.get(&parent_tgid)?;
                let (session, known) = (parent.session.clone(), parent.known);
                // A recycled pid of a process whose exit was lost is replaced, not kept.
                self.members.insert(
                    child_tgid,
                    Member {
                        session,
                        ppid: parent_tgid,
                        since_ns: event.timestamp_ns,
                        known,
                    },
                );
                None
            }
            Kind::Uid {
                tgid, ruid, euid, ..
            } => {
                if let Some(m) = self.members.get_mut(&tgid) {
                    m.known.uids = Some((ruid, euid));
                }
                None
            }
            Kind::Exec { tgid, .. } => {
                let m = self.members.get(&tgid)?;
                Some(Audited::Exec {
                    session: m.session.clone(),
                    pid: tgid,
                    ppid: m.ppid,
                    at_ns: event.timestamp_ns,
                })
            }
            Kind::Exit {
                pid, tgid, status, ..
            } if pid == tgid => {
                let m = self.members.remove(&tgid)?;
                Some(Audited::Exit {
                    session: m.session,
                    pid: tgid,
                    status,
                    duration_ns: (m.since_ns != 0)
                        .then(|| event.timestamp_ns.saturating_sub(m.since_ns)),
                })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(ts: u64, kind: Kind) -> Event {
        Event {
            cpu: 0,
            seq: 0,
            timestamp_ns: ts,
            kind,
        }
    }
    fn fork(ts: u64, parent: u32, child: u32) -> Event {
        ev(
            ts,
            Kind::Fork {
                parent_pid: parent,
                parent_tgid: parent,
                child_pid: child,
                child_tgid: child,
            },
        )
    }
    fn exec(ts: u64, pid: u32) -> Event {
        ev(ts, Kind::Exec { pid, tgid: pid })
    }
    fn exit(ts: u64, pid: u32, status: u32) -> Event {
        ev(
            ts,
            Kind::Exit {
                pid,
                tgid: pid,
                status,
                parent_pid: 1,
                parent_tgid: 1,
            },
        )
    }

    #[test]
    fn descendants_belong_to_their_session_whatever_they_do() {
        let mut t = Tracker::new();
        t.add_root(100, "s-1", 0);
        t.add_root(200, "s-2", 0);
        // bash -c "curl ...; sh -c 'exit 7'": forks, execs, exits.
        assert_eq!(t.on_event(&fork(10, 100, 101)), None);
        assert_eq!(
            t.on_event(&exec(11, 101)),
            Some(Audited::Exec {
                session: "s-1",
                pid: 101,
                ppid: 100,
                at_ns: 11
            })
        );
        // A grandchild that called setsid is still the session's (descent, not group).
        t.on_event(&fork(12, 101, 102));
        assert_eq!(t.session_of(102), Some(&"s-1"));
        assert_eq!(
            t.on_event(&exit(30, 102, 0x700)),
            Some(Audited::Exit {
                session: "s-1",
                pid: 102,
                status: 0x700,
                duration_ns: Some(18)
            })
        );
        // Forgotten at exit: a recycled 102 forked by the host is nobody's.
        assert_eq!(t.session_of(102), None);
        t.on_event(&fork(40, 1, 102));
        assert_eq!(t.on_event(&exec(41, 102)), None);
        // Another session's children are its own; the host's are ignored.
        t.on_event(&fork(50, 200, 201));
        assert_eq!(t.session_of(201), Some(&"s-2"));
        assert_eq!(t.on_event(&fork(51, 999, 998)), None);
        assert_eq!(t.session_of(998), None);
        // Threads are not processes.
        t.on_event(&ev(
            60,
            Kind::Fork {
                parent_pid: 101,
                parent_tgid: 101,
                child_pid: 150,
                child_tgid: 101,
            },
        ));
        assert_eq!(t.session_of(150), None);
        assert_eq!(
            t.on_event(&ev(
                61,
                Kind::Exit {
                    pid: 150,
                    tgid: 101,
                    status: 0,
                    parent_pid: 100,
                    parent_tgid: 100
                }
            )),
            None,
            "a thread's exit is not the process's"
        );
        assert_eq!(t.session_of(101), Some(&"s-1"));
        t.remove_session(&"s-1");
        assert_eq!(t.session_of(101), None);
        assert_eq!(t.session_of(201), Some(&"s-2"));
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn a_child_inherits_what_is_known_of_its_parent_and_uid_changes_are_followed() {
        let mut t = Tracker::new();
        t.add_root(100, "s", 0);
        let read = Known {
            uids: Some((1000, 1000)),
            login_uid: Some(1000),
            audit_session: Some(7),
        };
        t.learn(100, read);
        t.on_event(&fork(1, 100, 101));
        assert_eq!(t.known(101), read, "inherited at fork");
        // A setuid program: the kernel reports the new ids before its exec.
        t.on_event(&ev(
            2,
            Kind::Uid {
                pid: 101,
                tgid: 101,
                ruid: 1000,
                euid: 0,
            },
        ));
        assert_eq!(t.known(101).uids, Some((1000, 0)));
        assert_eq!(
            t.known(100).uids,
            Some((1000, 1000)),
            "the parent's unchanged"
        );
        // A partial read does not forget what was known.
        t.learn(101, Known::default());
        assert_eq!(t.known(101).audit_session, Some(7));
        assert_eq!(t.known(999), Known::default(), "not a member");
    }

    #[test]
    fn a_storm_of_short_processes_leaves_nothing_behind() {
        let mut t = Tracker::new();
        t.add_root(10, 7u8, 0);
        let mut execs = 0;
        let mut exits = 0;
        for i in 0..10_000u32 {
            let child = 1000 + (i % 500); // pids recycle
            let ts = u64::from(i) * 10;
            t.on_event(&fork(ts, 10, child));
            execs += usize::from(t.on_event(&exec(ts + 1, child)).is_some());
            exits += usize::from(t.on_event(&exit(ts + 2, child, 0)).is_some());
        }
        assert_eq!((execs, exits), (10_000, 10_000));
        assert_eq!(t.len(), 1, "only the root is left");
    }
}

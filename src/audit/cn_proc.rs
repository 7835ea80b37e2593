//! The kernel's process events connector (`cn_proc`): every fork, exec, uid change and
//! exit on the host, as netlink datagrams (issue 19's sensor; design and measurements in
//! `../shared/docs/audit-notes.md` §2).
//!
//! Two parts:
//! * [`decode`] — pure: one datagram (`nlmsghdr` + `cn_msg` + `struct proc_event`,
//!   `include/uapi/linux/cn_proc.h`, native byte order) to an [`Event`]. Hand-written: the
//!   layout is four fixed structs, and the crates that parse it (`proc-connector`,
//!   `cnproc`) either use `unsafe` casts or lose the per-CPU sequence number that makes
//!   loss visible.
//! * [`Listener`] — the socket, in safe code on `rustix`: bound to the `CN_IDX_PROC`
//!   group, subscribed to every event (`PROC_CN_MCAST_LISTEN`; a type filter, from 6.6,
//!   would also filter the kernel's ack and hide the per-CPU sequence's meaning), with a
//!   receive buffer forced large (a full queue drops events; the next read then fails
//!   once with `ENOBUFS`, reported as [`Received::Overrun`], never hidden). Blocking
//!   reads with a timeout: the agent drains it on one thread of its own.
//!
//! Needs CAP_NET_ADMIN before Linux 6.6 (and then sees every process of the host; from
//! 6.6 any user may). Pids are the initial pid namespace's.

use std::os::fd::OwnedFd;
use std::time::Duration;

/// `CN_IDX_PROC`: the connector's id (and multicast group) for process events.
const CN_IDX_PROC: u32 = 1;
/// `CN_VAL_PROC`.
const CN_VAL_PROC: u32 = 1;
/// `PROC_CN_MCAST_LISTEN`.
const MCAST_LISTEN: u32 = 1;
/// `NLMSG_DONE`: the message type of every connector message.
const NLMSG_DONE: u16 = 3;
/// `nlmsghdr`.
const NLMSG_LEN: usize = 16;
/// `cn_msg` (without its data).
const CN_MSG_LEN: usize = 20;
/// `proc_event` up to its union: what, cpu, timestamp_ns.
const EVENT_HEAD: usize = 16;
/// Where a `proc_event` starts in a datagram.
const EVENT_AT: usize = NLMSG_LEN + CN_MSG_LEN;

/// The receive buffer asked for (tens of MiB: a short stall of the reader during a
/// fork storm must not lose the tree; measured in the notes).
pub const RECEIVE_BUFFER: usize = 32 * 1024 * 1024;

/// One process event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// The CPU that sent it (the loss check is per CPU).
    pub cpu: u32,
    /// `cn_msg.seq`: the sending CPU's counter of events, before any filtering.
    pub seq: u32,
    /// `ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds.
    pub timestamp_ns: u64,
    /// What happened.
    pub kind: Kind,
}

/// What happened (thread ids are `*_pid`, process ids `*_tgid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The kernel's answer to the subscription (`err` 0: subscribed).
    Ack {
        /// An errno, or 0.
        err: u32,
    },
    /// A new thread or process (`child_pid == child_tgid`: a process).
    Fork {
        /// Parent thread.
        parent_pid: u32,
        /// Parent process.
        parent_tgid: u32,
        /// Child thread.
        child_pid: u32,
        /// Child process.
        child_tgid: u32,
    },
    /// A program was executed (its details are in `/proc` now, while it lives).
    Exec {
        /// Thread.
        pid: u32,
        /// Process.
        tgid: u32,
    },
    /// Real and effective user ids changed.
    Uid {
        /// Thread.
        pid: u32,
        /// Process.
        tgid: u32,
        /// Real uid.
        ruid: u32,
        /// Effective uid.
        euid: u32,
    },
    /// A thread or process ended (`pid == tgid`: the process).
    Exit {
        /// Thread.
        pid: u32,
        /// Process.
        tgid: u32,
        /// The wait(2) status word: `code << 8`, or the killing signal (+ 0x80 with a
        /// core dump).
        status: u32,
        /// Parent thread.
        parent_pid: u32,
        /// Parent process.
        parent_tgid: u32,
    },
    /// Another event (gid, sid, ptrace, comm, coredump): its `what`.
    Other(u32),
}

impl Kind {
    /// For [`Kind::Exit`]: the exit code, or the signal that ended it.
    pub fn exit_code_or_signal(status: u32) -> (Option<i32>, Option<i32>) {
        let signal = status & 0x7f;
        if signal == 0 {
            (i32::try_from((status >> 8) & 0xff).ok(), None)
        } else {
            (None, i32::try_from(signal).ok())
        }
    }
}

/// A datagram that is not a process event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than its structures.
    #[error("process event datagram of {0} bytes is too short")]
    Short(usize),
    /// Not from the process connector.
    #[error("netlink message from connector {idx}.{val}, not the process connector")]
    NotProc {
        /// `cn_msg.id.idx`.
        idx: u32,
        /// `cn_msg.id.val`.
        val: u32,
    },
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Decodes one datagram.
///
/// # Errors
/// Too short for what it says it is, or not from the process connector.
pub fn decode(datagram: &[u8]) -> Result<Event, DecodeError> {
    let short = || DecodeError::Short(datagram.len());
    let idx = u32_at(datagram, NLMSG_LEN).ok_or_else(short)?;
    let val = u32_at(datagram, NLMSG_LEN + 4).ok_or_else(short)?;
    if (idx, val) != (CN_IDX_PROC, CN_VAL_PROC) {
        return Err(DecodeError::NotProc { idx, val });
    }
    let seq = u32_at(datagram, NLMSG_LEN + 8).ok_or_else(short)?;
    let e = datagram.get(EVENT_AT..).ok_or_else(short)?;
    let what = u32_at(e, 0).ok_or_else(short)?;
    let cpu = u32_at(e, 4).ok_or_else(short)?;
    let timestamp_ns = u64::from_ne_bytes(
        e.get(8..16)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(short)?,
    );
    let f = |i: usize| u32_at(e, EVENT_HEAD + 4 * i).ok_or_else(short);
    let kind = match what {
        0 => Kind::Ack { err: f(0)? },
        1 => Kind::Fork {
            parent_pid: f(0)?,
            parent_tgid: f(1)?,
            child_pid: f(2)?,
            child_tgid: f(3)?,
        },
        2 => Kind::Exec {
            pid: f(0)?,
            tgid: f(1)?,
        },
        4 => Kind::Uid {
            pid: f(0)?,
            tgid: f(1)?,
            ruid: f(2)?,
            euid: f(3)?,
        },
        0x8000_0000 => Kind::Exit {
            pid: f(0)?,
            tgid: f(1)?,
            status: f(2)?,
            parent_pid: f(4)?,
            parent_tgid: f(5)?,
        },
        other => Kind::Other(other),
    };
    Ok(Event {
        cpu,
        seq,
        timestamp_ns,
        kind,
    })
}

/// What a read gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// An event.
    Event(Event),
    /// The receive queue overflowed: events were lost before this point.
    Overrun,
    /// Nothing within the timeout.
    Quiet,
    /// A datagram that is not a process event (skipped).
    Skipped,
}

/// A subscribed process-events socket.
#[derive(Debug)]
pub struct Listener {
    fd: OwnedFd,
    buf: Vec<u8>,
}

/// Why the connector cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// A system call failed (EPERM: needs CAP_NET_ADMIN before Linux 6.6; EPROTONOSUPPORT:
    /// a kernel without `CONFIG_PROC_EVENTS`).
    #[error("the kernel's process events connector is not available ({what}: {source}); commands are not audited")]
    Sys {
        /// The step.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// The kernel refused the subscription.
    #[error(
        "the kernel refused the process events subscription (error {0}); commands are not audited"
    )]
    Refused(u32),
}

impl Listener {
    /// Opens, binds and subscribes; waits up to `timeout` for the kernel's ack.
    ///
    /// # Errors
    /// What failed (see [`ListenError`]).
    pub fn subscribe(timeout: Duration) -> Result<Self, ListenError> {
        Self::subscribe_with_buffer(timeout, RECEIVE_BUFFER)
    }

    /// [`Self::subscribe`] with a receive buffer of `bytes` (tests make it small to
    /// provoke an overrun).
    ///
    /// # Errors
    /// What failed (see [`ListenError`]).
    pub fn subscribe_with_buffer(timeout: Duration, bytes: usize) -> Result<Self, ListenError> {
        use rustix::net::{self, netlink, AddressFamily, SendFlags, SocketFlags, SocketType};
        let sys = |what| {
            move |e: rustix::io::Errno| ListenError::Sys {
                what,
                source: e.into(),
            }
        };
        let fd = net::socket_with(
            AddressFamily::NETLINK,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC,
            Some(netlink::CONNECTOR),
        )
        .map_err(sys("socket"))?;
        // Forced past net.core.rmem_max when allowed (CAP_NET_ADMIN), else as large as
        // the limit lets.
        if net::sockopt::set_socket_recv_buffer_size_force(&fd, bytes).is_err() {
            let _ = net::sockopt::set_socket_recv_buffer_size(&fd, bytes);
        }
        net::bind(&fd, &netlink::SocketAddrNetlink::new(0, CN_IDX_PROC)).map_err(sys("bind"))?;
        net::sockopt::set_socket_timeout(&fd, net::sockopt::Timeout::Recv, Some(timeout))
            .map_err(sys("timeout"))?;
        let mut msg = Vec::with_capacity(NLMSG_LEN + CN_MSG_LEN + 4);
        let len = u32::try_from(NLMSG_LEN + CN_MSG_LEN + 4).unwrap_or(u32::MAX);
        msg.extend_from_slice(&len.to_ne_bytes());
        msg.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
        msg.extend_from_slice(&0u16.to_ne_bytes()); // flags
        msg.extend_from_slice(&0u32.to_ne_bytes()); // seq
        msg.extend_from_slice(&std::process::id().to_ne_bytes());
        msg.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
        msg.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes()); // seq
        msg.extend_from_slice(&0u32.to_ne_bytes()); // ack
        msg.extend_from_slice(&4u16.to_ne_bytes()); // len
        msg.extend_from_slice(&0u16.to_ne_bytes()); // flags
        msg.extend_from_slice(&MCAST_LISTEN.to_ne_bytes());
        net::send(&fd, &msg, SendFlags::empty()).map_err(sys("subscribe"))?;
        let mut listener = Self {
            fd,
            buf: vec![0u8; 4096],
        };
        // The ack (events may come before it: they are not lost, the caller sees them
        // from its first read; here only the ack's verdict matters).
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            match listener.recv() {
                Ok(Received::Event(Event {
                    kind: Kind::Ack { err },
                    ..
                })) => {
                    return if err == 0 {
                        Ok(listener)
                    } else {
                        Err(ListenError::Refused(err))
                    };
                }
                Ok(_) => {}
                Err(e) => {
                    return Err(ListenError::Sys {
                        what: "the subscription's answer",
                        source: e,
                    })
                }
            }
        }
        // No ack (a non-initial namespace): nothing would come.
        Err(ListenError::Sys {
            what: "the subscription's answer",
            source: std::io::ErrorKind::TimedOut.into(),
        })
    }

    /// The next datagram if one is queued now ([`Received::Quiet`] otherwise).
    ///
    /// # Errors
    /// The socket failed.
    pub fn recv_now(&mut self) -> std::io::Result<Received> {
        self.recv_with(rustix::net::RecvFlags::DONTWAIT)
    }

    /// The next datagram, waiting up to the timeout given at subscription.
    ///
    /// # Errors
    /// The socket failed (other than by overflow or timeout, which are [`Received`]s).
    pub fn recv(&mut self) -> std::io::Result<Received> {
        self.recv_with(rustix::net::RecvFlags::empty())
    }

    fn recv_with(&mut self, flags: rustix::net::RecvFlags) -> std::io::Result<Received> {
        use rustix::io::Errno;
        match rustix::net::recv(&self.fd, &mut self.buf[..], flags) {
            Ok((_, n)) => Ok(match decode(&self.buf[..n.min(self.buf.len())]) {
                Ok(e) => Received::Event(e),
                Err(_) => Received::Skipped,
            }),
            Err(Errno::NOBUFS) => Ok(Received::Overrun),
            Err(Errno::AGAIN | Errno::INTR) => Ok(Received::Quiet),
            Err(e) => Err(e.into()),
        }
    }
}

/// Counts the events lost between reads from the kernel's per-CPU sequence numbers
/// (`cn_msg.seq` counts every event a CPU sent while anyone listened; this listener takes
/// them all, so a jump on one CPU is that many events dropped by a full queue). Pure; one
/// entry per CPU seen.
#[derive(Debug, Default, Clone)]
pub struct LossCounter {
    last: std::collections::HashMap<u32, u32>,
}

impl LossCounter {
    /// A counter that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// One event received: how many events from its CPU were lost just before it.
    pub fn on_event(&mut self, event: &Event) -> u64 {
        let lost = match self.last.get(&event.cpu) {
            Some(&last) => u64::from(event.seq.wrapping_sub(last).wrapping_sub(1)),
            None => 0,
        };
        self.last.insert(event.cpu, event.seq);
        // A sequence that went backwards (a counter that restarted: it is per CPU and
        // only counts while someone listens) is not a loss of four billion events.
        if lost > u64::from(u32::MAX / 2) {
            0
        } else {
            lost
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_events_are_counted_per_cpu_from_the_sequence() {
        let ev = |cpu, seq| Event {
            seq,
            cpu,
            timestamp_ns: 0,
            kind: Kind::Other(0),
        };
        let mut c = LossCounter::new();
        assert_eq!(c.on_event(&ev(0, 10)), 0, "the first of a CPU");
        assert_eq!(c.on_event(&ev(1, 500)), 0);
        assert_eq!(c.on_event(&ev(0, 11)), 0);
        assert_eq!(c.on_event(&ev(1, 501)), 0);
        assert_eq!(c.on_event(&ev(0, 15)), 3, "12, 13, 14 lost");
        assert_eq!(c.on_event(&ev(1, 502)), 0);
        assert_eq!(c.on_event(&ev(0, 3)), 0, "backwards: a restart, not a loss");
        assert_eq!(c.on_event(&ev(2, u32::MAX - 1)), 0);
        assert_eq!(
            c.on_event(&ev(2, 1)),
            2,
            "wrapped past zero: MAX and 0 lost"
        );
    }

    fn datagram(seq: u32, what: u32, cpu: u32, ts: u64, fields: &[u32]) -> Vec<u8> {
        let mut d = vec![0u8; NLMSG_LEN];
        for v in [CN_IDX_PROC, CN_VAL_PROC, seq, 0] {
            d.extend_from_slice(&v.to_ne_bytes());
        }
        d.extend_from_slice(&[0u8; 4]); // len, flags
        d.extend_from_slice(&what.to_ne_bytes());
        d.extend_from_slice(&cpu.to_ne_bytes());
        d.extend_from_slice(&ts.to_ne_bytes());
        for f in fields {
            d.extend_from_slice(&f.to_ne_bytes());
        }
        d
    }

    #[test]
    fn each_event_decodes_with_its_cpu_sequence_and_time() {
        let fork = decode(&datagram(7, 1, 1, 99, &[10, 10, 11, 11])).unwrap();
        assert_eq!((fork.seq, fork.cpu, fork.timestamp_ns), (7, 1, 99));
        assert_eq!(
            fork.kind,
            Kind::Fork {
                parent_pid: 10,
                parent_tgid: 10,
                child_pid: 11,
                child_tgid: 11
            }
        );
        assert_eq!(
            decode(&datagram(8, 2, 0, 1, &[11, 11])).unwrap().kind,
            Kind::Exec { pid: 11, tgid: 11 }
        );
        assert_eq!(
            decode(&datagram(9, 4, 0, 1, &[11, 11, 65534, 0]))
                .unwrap()
                .kind,
            Kind::Uid {
                pid: 11,
                tgid: 11,
                ruid: 65534,
                euid: 0
            }
        );
        let exit = decode(&datagram(
            10,
            0x8000_0000,
            0,
            5,
            &[11, 11, 0x700, 17, 10, 10],
        ))
        .unwrap();
        assert_eq!(
            exit.kind,
            Kind::Exit {
                pid: 11,
                tgid: 11,
                status: 0x700,
                parent_pid: 10,
                parent_tgid: 10
            }
        );
        assert_eq!(Kind::exit_code_or_signal(0x700), (Some(7), None));
        assert_eq!(Kind::exit_code_or_signal(0x9), (None, Some(9)));
        assert_eq!(Kind::exit_code_or_signal(0x8b), (None, Some(11)));
        assert_eq!(
            decode(&datagram(1, 0, 0, 0, &[0])).unwrap().kind,
            Kind::Ack { err: 0 }
        );
        assert_eq!(
            decode(&datagram(1, 0x200, 0, 0, &[1, 1])).unwrap().kind,
            Kind::Other(0x200)
        );
    }

    #[test]
    fn short_or_foreign_datagrams_are_errors_never_panics() {
        let full = datagram(10, 0x8000_0000, 0, 5, &[11, 11, 0x700, 17, 10, 10]);
        for cut in 0..full.len() {
            assert!(decode(&full[..cut]).is_err(), "{cut}");
        }
        let mut foreign = full.clone();
        foreign[NLMSG_LEN] = 9;
        assert_eq!(
            decode(&foreign),
            Err(DecodeError::NotProc { idx: 9, val: 1 })
        );
    }
}

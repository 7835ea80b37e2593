//! Command audit (issue 19): what every session runs, from the kernel, that typing tricks
//! cannot hide. Being built in steps; what exists today (nothing in the agent uses it yet):
//!
//! * [`cn_proc`] — the kernel's process events connector (fork, exec, uid change, exit of
//!   every process on the host), decoded and read in safe code, with loss made visible.
//! * [`tree`] — which live processes belong to which session, from the fork tree (pure).
//! * [`redact`] — secrets in command lines masked before anything is written (pure).
//! * [`procfs`] — what a process runs (argv, executable, working directory, uids), read
//!   from `/proc` through one directory descriptor right after its exec.
//!
//! Still to come (see issue 19 and `../shared/docs/audit-notes.md`): membership by audit
//! session id and a per-session cgroup, enrichment from `/proc` at exec, the spool and
//! CloudWatch events, redaction of secrets in arguments, commands as typed.

#[cfg(target_os = "linux")]
pub mod cgroup;
#[cfg(target_os = "linux")]
pub mod cn_proc;
#[cfg(target_os = "linux")]
pub mod procfs;
pub mod redact;
#[cfg(target_os = "linux")]
pub mod tree;

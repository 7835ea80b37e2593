//! # session-agent
//!
//! An on-instance session agent in the style of the AWS SSM Agent's Session Manager,
//! speaking the real Session Manager wire protocol, plus a local gateway that plays AWS's
//! part. This crate root is the architecture map.
//!
//! ## Layout
//!
//! ```text
//!  main.rs ─▶ cli ─┬─▶ gateway ─────────────────────────┐
//!   (bin)          ├─▶ agent ─┬─▶ session               ├─▶ protocol
//!                  │          ├─▶ recorder (pure) ◀─────┼── replay     (L0, pure)
//!                  │          ├─▶ delivery ─┐  (sink traits, retry, stream, upload; aws)
//!                  │          └─▶ spool ◀───┘  (a recording directory's layout)
//!                  ├─▶ client ──────────────────────────┘
//!                  └─▶ dev (gateway + agent + client in one process)
//! ```
//!
//! * [`protocol`] — **pure** (no sockets, files or clocks): the AgentMessage frame codec,
//!   typed JSON payloads, the session document, and the reliability state machine
//!   (sequence numbers, acks, retransmission) shared by agent, gateway and client.
//! * [`gateway`] — `session-agent gateway`: the SSM API subset (AWS JSON 1.1) and the
//!   message gateway (channel tokens, control and data websockets, relay), with session
//!   history on disk.
//! * [`agent`] — `session-agent run`: the daemon. `agent::control` keeps the control
//!   channel; `agent::channel` is the agent's end of one data channel as a pure state
//!   machine (frames, terminal output and time in, effects out: the protocol's decisions,
//!   unit-tested like `client::channel`); `agent::session` is the small I/O pump around
//!   it, between the network and a shell; `agent::mgs` is its client side of the message
//!   gateway; `agent::config` its settings;
//!   `agent::recording` records each session (the tap and the writer task around
//!   `spool::writer`, on the output path; `background`: the shared nice-19 workers;
//!   `derive`: transcript, asciicast and stream records read back from the spool;
//!   `deliver`: a finished recording's delivery job — it runs `delivery`'s streamer and
//!   uploads through the AWS sinks and writes `delivery.json`).
//! * [`session`] — the host side of a session, with no knowledge of the protocol:
//!   `session::pty` (a shell on a PTY, the privilege-dropping `__exec-as` shim, process
//!   group termination) and `session::user` (ssm-user provisioning, RunAs resolution).
//! * [`recorder`] — **pure** session recording: one timed event stream (output, input
//!   with echo-off redaction, resizes, start/end, gaps), a clean transcript rendered
//!   through a terminal emulator, the command lines typed at prompts read from that
//!   emulator's screen (`recorder::commands`), asciicast v2, and reading recordings back.
//!   `agent::recording` runs it per session and writes the files.
//! * [`delivery`] — where recordings go, in the shape of vector's sinks (each concern in
//!   its own file, the sink generic over its I/O service):
//!   * [`delivery::sink`] — the I/O edge as two small traits, `ObjectSink` (S3) and
//!     `LogSink` (CloudWatch Logs), and their error kinds;
//!   * [`delivery::retry`] — **the retry policy** of every S3 and CloudWatch call
//!     (`Patience`: what is retried and for how long, `DELIVERY_PATIENCE`) — change
//!     CloudWatch's or S3's retries here;
//!   * [`delivery::stream`] — the CloudWatch streamer (`stream.jsonl` → PutLogEvents,
//!     acknowledged in `stream.ack`); [`delivery::upload`] — the uploads at close (S3,
//!     CloudWatch), acknowledged in `s3.ack` / `upload.ack`;
//!   * [`delivery::cwl`] — pure CloudWatch event shaping, the hash chain and batching;
//!     the module itself — destinations, S3 keys, encryption verdicts;
//!   * [`delivery::aws`] — the AWS implementation of the sinks (aws-config, standard
//!     credential and endpoint chain); `delivery::memory` (test builds only) is its
//!     in-memory twin, which can be told to fail, so the streamer's and the uploads'
//!     batching, retries, acks, restarts and outages are unit-tested without LocalStack
//!     (the LocalStack tests in `tests/it` still cover the AWS side).
//! * [`spool`] — the spool, every byte of it: `spool::format` (the documented on-disk
//!   format, pure), `spool::reader` (the one reader: the deriver following a live file,
//!   the rebuild, `verify`, `replay`), `spool::verify` (intact, broken, complete), `spool::writer`
//!   (appends, gaps, group commit; `spool::reserve`: space reserved ahead), and a
//!   recording directory's layout (`spool::layout`: file names, the sinks' ack files, the
//!   atomic owner-only write), shared by `agent::recording`, which writes the recording,
//!   and `delivery`, which acknowledges what it sent.
//! * [`replay`] — `session-agent replay`, `transcript`, `verify` and `audit` (file, S3
//!   and terminal I/O over `recorder::playback`, `recorder::audit_table` and [`spool`]).
//! * [`export`] — `session-agent export --html`: a recording as one self-contained HTML
//!   page that plays it in a browser (the vendored asciinema-player, `assets/`), with the
//!   timeline and the transcript; the page's content and escaping are pure
//!   (`export::page`).
//! * [`sessions`] — `session-agent sessions` (the local recordings, from their
//!   `summary.json` or the head of their spool) and the lookup of a recording by session
//!   id that `replay`, `transcript`, `verify` and `audit` share.
//! * [`client`] — `session-agent connect`: an interactive terminal client that can stand in
//!   for session-manager-plugin.
//! * [`ssm`] — the few SSM API calls (StartSession, ResumeSession, TerminateSession for
//!   the client; UpdateInstanceInformation for the agent), signed through [`sign`].
//! * [`sign`] — SigV4 signing of our own requests with cached, renewed credentials from
//!   the SDK's chain; [`tls`] — the TLS client set-up the agent, client and API share.
//! * [`dev`] — `session-agent dev`: composition root wiring all three on loopback.
//! * [`doctor`] — `session-agent doctor`: checks of the configuration, the state
//!   directory, the gateway, AWS credentials and each sink, with what to do.
//! * [`logging`] — the log formats (plain, journal-aware, JSON) `main` installs.
//! * [`audit`] — command audit from the kernel (issue 19, in progress): today the process
//!   events connector (`audit::cn_proc`), read in safe code; nothing uses it yet.
//! * [`platform`] — the few host facts asked everywhere (privileged?, free space, host
//!   name, default state directory), answered for Unix and Windows.
//! * `windows` (Windows builds only) — the thin Windows layer: the service control
//!   manager, the ssm-user account, the logon shim, console modes. `session::pty` and
//!   `session::user` have a Windows file each; all other modules are the same code.
//! * [`backoff`] — the one retry schedule (pure), by name: the control channel, a data
//!   channel's reopen and the client's reconnect, delivery calls. What delivery retries
//!   and for how long is [`delivery::retry`]'s `Patience`.
//! * [`bounded`] — queues bounded in bytes (every queue between a socket and its
//!   consumer), shared by gateway and agent.
//! * [`cli`] — the clap definition of the commands (exit code 64 on invalid
//!   configuration); each command's flags live with their domain (`agent::config`,
//!   `gateway::args`, `client`, `dev`, `doctor`).
//! * [`config`] — [`config::ConfigError`] and the parsers every command's configuration
//!   shares: a leaf, so the command layer and the domains never import each other.
//!
//! ## Dependency rules
//!
//! 1. `protocol` (and the tiny `timefmt`) import nothing else from this crate and do no I/O; time and
//!    randomness are parameters. It is what the fuzz targets and property tests exercise.
//! 2. `session` knows nothing of `protocol`, sockets or delivery: the agent drives it.
//!    `recorder` and the pure parts of `delivery` (`cwl`, the verdicts) do no I/O either.
//!    `delivery` imports neither `agent` nor `session`: it reads a recording through
//!    `spool::layout` and talks to the services through its sink traits.
//!    The AWS SDK is used in these places only: `delivery::aws` (the S3 and CloudWatch
//!    Logs calls), `sign` (the credential chain behind our own SigV4 requests),
//!    `agent::identity` (IMDS, the SDK configuration; `agent` holds it), `replay`
//!    (recordings read from S3) and `doctor` (checks of credentials and sinks).
//! 3. `gateway`, `agent` and `client` each depend on `protocol` (and `agent` on `session`),
//!    never on each other; only `dev` and `main.rs` wire several together.
//! 4. No import loops: a module never imports one that imports it back (a child may use
//!    its parent's types). The daemon (`agent`) imports no subcommand (`cli`, `replay`,
//!    `doctor`, `dev`, `client`); the command layer (`cli`) imports the domains, whose
//!    flags and validation live with them, and they share `config`'s errors and parsers.
//!    `tests/it/architecture.rs` checks rules 1, 2 and this one against the code.
//! 5. Only `main.rs` chooses the runtime, installs the log subscriber (built by
//!    [`logging`]), turns signals into the graceful stop and maps errors to exit codes.

pub mod agent;
pub mod audit;
pub mod backoff;
pub mod bounded;
pub mod cli;
pub mod client;
pub mod config;
pub mod delivery;
pub mod dev;
pub mod doctor;
pub mod export;
pub mod gateway;
pub mod logging;
pub mod platform;
pub mod protocol;
pub mod recorder;
pub mod replay;
pub mod session;
pub mod sessions;
pub mod sign;
pub mod spool;
pub mod ssm;
pub mod timefmt;
pub mod tls;
#[cfg(windows)]
pub mod windows;

/// An error and each of its causes, joined with ": " (a cause already in the text is
/// not repeated). Some errors (reqwest's) show none of their causes on their own:
/// "error sending request" says nothing of a refused connection or an untrusted
/// certificate.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

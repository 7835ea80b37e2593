//! # session-agent
//!
//! An on-instance session agent in the style of the AWS SSM Agent's Session Manager,
//! speaking the real Session Manager wire protocol, plus a local gateway that plays AWS's
//! part. This crate root is the architecture map.
//!
//! ## Layout
//!
//! ```text
//!  main.rs ─▶ cli ─▶ gateway ─▶ protocol
//!  (bin)      (L3)   (L1/L2)    (L0, pure)
//! ```
//!
//! * [`protocol`] — **pure** (no sockets, files or clocks): the AgentMessage frame codec,
//!   typed JSON payloads, the session document, and the reliability state machine
//!   (sequence numbers, acks, retransmission) shared by agent, gateway and client.
//! * [`gateway`] — `session-agent gateway`: the SSM API subset (AWS JSON 1.1) and the
//!   message gateway (channel tokens, control and data websockets, relay), with session
//!   history on disk. Uses `protocol`; nothing uses it but `cli`/`main`.
//! * [`client`] — `session-agent connect`: StartSession, then an interactive terminal on
//!   the data channel like session-manager-plugin (and in its place, for the AWS CLI).
//!   Uses `protocol`; its data-channel logic is a pure state machine, I/O at the edges.
//! * [`cli`] — clap definitions and the turn from flags into validated configuration
//!   (exit code 64 on invalid configuration).
//!
//! ## Dependency rules
//!
//! 1. `protocol` imports nothing else from this crate and does no I/O; time and
//!    randomness are parameters. It is what the fuzz target and property tests exercise.
//! 2. I/O edges (sockets, files) live in the service modules (`gateway`, later `agent`),
//!    each of which depends only on `protocol` and its own submodules.
//! 3. Only `main.rs` chooses the runtime, installs the log subscriber and maps errors to
//!    exit codes.
//!
//! Later issues add the agent daemon (`run`), a client (`connect`), the recorder and
//! sinks, following the layering in `docs/` and these rules.

pub mod agent;
pub mod cli;
pub mod client;
pub mod dev;
pub mod gateway;
pub mod protocol;
pub mod session;

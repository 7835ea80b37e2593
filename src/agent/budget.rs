//! What one session may hold: the per-session bounds the data channel, the message
//! gateway client and the recording share, in one leaf module (each of them imports it;
//! it imports nothing) so that they do not import each other for a number.

/// Unacknowledged output a session may hold (bounds memory per session: the shell blocks
/// beyond it). 4 MiB covers loopback and LAN bandwidth-delay products many times over; at
/// 1000 sessions the worst case is 4 GiB only if every client stops acknowledging at once.
pub const OUTPUT_IN_FLIGHT: usize = 4 * 1024 * 1024;
/// Largest message accepted on a control channel: `interactive_shell` carries the session
/// document (AWS documents are at most 64 KB) and its parameters.
pub const MAX_CONTROL_MESSAGE: usize = 1024 * 1024;
/// Largest message accepted on a data channel. What comes in is client input (the official
/// plugin sends 1 KiB chunks, `connect` 16 KiB, smux frames for port forwarding at most
/// 64 KiB), acknowledgements and small control messages; a larger message closes the
/// socket (the agent reopens it). It bounds what one session's socket buffers while
/// reading.
pub const MAX_DATA_MESSAGE: usize = 256 * 1024;

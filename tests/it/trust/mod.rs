//! Issue 16 — trust: every attack found by the adversarial review, performed for real
//! (real sockets, PTYs, shells, file systems) and shown to fail.

mod disk;
mod documents;
mod exhaustion;
mod misc;
mod ownership;
mod redaction;

//! The Session Manager wire protocol as pure code: no sockets, files or clocks.
//!
//! [`smux`] is the stream multiplexer (xtaci/smux v1) that port sessions in mux mode run
//! inside the data channel's PayloadType 1 bytes.
pub mod crypto;
pub mod document;
pub mod endpoint;
pub mod frame;
pub mod payload;
pub mod reliability;
pub mod sigv4;
pub mod smux;
pub mod version;

//! The Session Manager wire protocol as pure code: no sockets, files or clocks.
pub mod crypto;
pub mod document;
pub mod endpoint;
pub mod frame;
pub mod payload;
pub mod reliability;
pub mod sigv4;
pub mod version;

//! What keeps an unauthenticated or greedy caller from exhausting the gateway for
//! everyone else: time limits on every phase of a request, caps on connections (in all
//! and per client address), a cap on websockets that have not yet shown a token, and a
//! byte limit on what is read before anything is known of the caller.
//!
//! The figures, and the memory they bound:
//!
//! | Phase | Time limit | Memory per connection |
//! |---|---|---|
//! | TLS handshake | [`TLS_HANDSHAKE_TIMEOUT`] | rustls' buffers |
//! | request head (also an idle keep-alive connection) | [`HEADER_TIMEOUT`] | at most [`MAX_HEAD_BYTES`] |
//! | request body | [`BODY_TIMEOUT`] | at most `--max-body-bytes` |
//! | websocket open frame | `mgs::OPEN_TIMEOUT` | one message, at most `--max-frame-bytes`; at most [`MAX_PREOPEN`] such sockets |
//!
//! Connections beyond `max_connections` (or `max_connections_per_ip` from one address)
//! are closed as soon as they are accepted, before a byte is read. Per-caller quotas of
//! sessions, nodes and tokens live where those are created (`registry`, `api`, `mgs`).

use super::Limits;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A request head (or the first byte of the next request on a kept-alive connection)
/// must arrive within this time.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A request body must arrive whole within this time.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// A TLS handshake must finish within this time.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head (request line and headers) read; SigV4-signed requests carry a
/// few KiB.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Websockets upgraded but not yet opened with a token, at once; beyond this, upgrades
/// are answered 503 (agents and clients retry).
pub const MAX_PREOPEN: usize = 512;

/// The HTTP/1 server settings: head timeout (with hyper's timer, without which hyper
/// silently applies none), head size, no HTTP/2 sniffing (which would read the first
/// bytes with no time limit).
pub(crate) fn http_builder() -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES);
    builder
}

/// Open connections, in all and per client address.
#[derive(Debug, Clone)]
pub(crate) struct Connections {
    limits: Limits,
    open: Arc<Mutex<(usize, HashMap<IpAddr, usize>)>>,
    refused: Arc<std::sync::atomic::AtomicU64>,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub(crate) struct Slot {
    ip: IpAddr,
    open: Arc<Mutex<(usize, HashMap<IpAddr, usize>)>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        open.0 = open.0.saturating_sub(1);
        if let Some(n) = open.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.ip);
            }
        }
    }
}

impl Connections {
    pub(crate) fn new(limits: Limits) -> Self {
        Self {
            limits,
            open: Arc::default(),
            refused: Arc::default(),
        }
    }

    /// A place for a connection from `ip`, or `None` over a limit (logged, at most once
    /// per 1000 refusals).
    pub(crate) fn admit(&self, ip: IpAddr) -> Option<Slot> {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let from_ip = open.1.get(&ip).copied().unwrap_or(0);
        if open.0 >= self.limits.max_connections || from_ip >= self.limits.max_connections_per_ip {
            drop(open);
            let n = self
                .refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if n % 1000 == 0 {
                tracing::warn!(%ip, from_this_address = from_ip, max_connections = self.limits.max_connections, max_connections_per_ip = self.limits.max_connections_per_ip, refused_so_far = n + 1, "Connection refused: too many open connections");
            }
            return None;
        }
        open.0 += 1;
        *open.1.entry(ip).or_default() += 1;
        Some(Slot {
            ip,
            open: self.open.clone(),
        })
    }
}

/// A request body that could not be read.
#[derive(Debug)]
pub enum BodyError {
    /// Larger than the limit (bytes).
    TooLarge(usize),
    /// Not complete within [`BODY_TIMEOUT`].
    TooSlow,
    /// The connection failed while reading.
    Broken(String),
}

impl BodyError {
    /// The answer in the format of `path`'s endpoint (JSON for the API, XML for the
    /// message gateway).
    pub fn into_response_for(self, path: &str) -> Response {
        use axum::http::StatusCode;
        let (status, kind, message) = match self {
            Self::TooLarge(max) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "SerializationException",
                format!("request body exceeds {max} bytes"),
            ),
            Self::TooSlow => (
                StatusCode::REQUEST_TIMEOUT,
                "RequestTimeout",
                format!(
                    "the request body did not arrive within {} s",
                    BODY_TIMEOUT.as_secs()
                ),
            ),
            Self::Broken(e) => (
                StatusCode::BAD_REQUEST,
                "SerializationException",
                format!("the request body could not be read: {e}"),
            ),
        };
        if path == "/" {
            super::reply::ApiError::with_status(status, kind, message).into_response()
        } else {
            super::reply::xml_response(status, "BadRequest", " xmlns=\"\"", "message", &message)
        }
    }
}

/// Reads a whole request body, at most `max` bytes within [`BODY_TIMEOUT`].
///
/// # Errors
/// Too large, too slow, or broken.
pub async fn read_body(body: Body, max: usize) -> Result<Bytes, BodyError> {
    match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, max)).await {
        Err(_) => Err(BodyError::TooSlow),
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => {
            let text = crate::error_chain(&e);
            if text.contains("length limit") {
                Err(BodyError::TooLarge(max))
            } else {
                Err(BodyError::Broken(text))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_capped_in_all_and_per_address() {
        let c = Connections::new(Limits {
            max_connections: 3,
            max_connections_per_ip: 2,
            ..Limits::default()
        });
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let s1 = c.admit(a).unwrap();
        let _s2 = c.admit(a).unwrap();
        assert!(c.admit(a).is_none(), "per address");
        let _s3 = c.admit(b).unwrap();
        assert!(c.admit(b).is_none(), "in all");
        drop(s1);
        assert!(c.admit(b).is_some(), "a closed connection frees its place");
    }
}

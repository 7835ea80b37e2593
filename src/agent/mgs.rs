//! The agent's client side of the message gateway (protocol.md §1.2–§1.4, §2.1–§2.2):
//! channel-creation POSTs (expect 201 + XML token), websocket dialing with the first text
//! frame, TLS with the system's web roots or a custom CA.
//!
//! Must not know: sessions, PTYs, recording. Signing (SigV4) arrives with the AWS issue;
//! the local gateway accepts unsigned requests.

use crate::protocol::payload::{
    to_json, CreateChannelRequest, TokenResponse, MESSAGE_SCHEMA_VERSION,
};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use uuid::Uuid;

/// A websocket to the gateway.
pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// REST timeout, as upstream (§1.2).
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(15);

/// Talking to the gateway failed.
#[derive(Debug, thiserror::Error)]
pub enum MgsError {
    /// Transport-level failure (DNS, TCP, TLS, timeout); shown with its causes (reqwest's
    /// own text hides them: "error sending request" says nothing of an untrusted
    /// certificate or a refused connection).
    #[error("{what}: {}", crate::error_chain(.source))]
    Http {
        /// What was attempted.
        what: String,
        /// Cause.
        #[source]
        source: reqwest::Error,
    },
    /// The gateway answered, but not 201.
    #[error("{what}: the gateway answered {status}: {body}")]
    Refused {
        /// What was attempted.
        what: String,
        /// HTTP status.
        status: u16,
        /// Response body (the XML error text).
        body: String,
    },
    /// The 201 body had no token.
    #[error("{what}: {source}")]
    Token {
        /// What was attempted.
        what: String,
        /// Cause.
        #[source]
        source: crate::protocol::payload::PayloadError,
    },
    /// Websocket dial or first frame failed.
    #[error("{what}: {source}")]
    Websocket {
        /// What was attempted.
        what: String,
        /// Cause.
        #[source]
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },
    /// TLS material could not be loaded.
    #[error("tls: {0}")]
    Tls(String),
}

impl MgsError {
    /// True when the gateway says the session is over, so retrying is pointless (§1.6).
    pub fn session_terminated(&self) -> bool {
        matches!(self, Self::Refused { body, .. } if body.contains("Session is already terminated"))
    }
}

/// Connection details for one gateway.
#[derive(Debug, Clone)]
pub struct Mgs {
    base: String,
    http: reqwest::Client,
    tls: Arc<rustls::ClientConfig>,
}

impl Mgs {
    /// `endpoint` is `http(s)://host:port`; `ca_file` adds a PEM CA to the web roots.
    ///
    /// # Errors
    /// Unreadable or invalid CA file.
    pub fn new(endpoint: &str, ca_file: Option<&Path>) -> Result<Self, MgsError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let mut http = reqwest::Client::builder()
            .timeout(HTTP_TIMEOUT)
            .use_rustls_tls();
        if let Some(path) = ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| MgsError::Tls(format!("cannot read {}: {e}", path.display())))?;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| MgsError::Tls(format!("{}: {e}", path.display())))?;
                roots
                    .add(cert.clone())
                    .map_err(|e| MgsError::Tls(format!("{}: {e}", path.display())))?;
                let c = reqwest::Certificate::from_der(&cert)
                    .map_err(|e| MgsError::Tls(format!("{}: {e}", path.display())))?;
                http = http.add_root_certificate(c);
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| MgsError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let http = http.build().map_err(|e| MgsError::Tls(e.to_string()))?;
        Ok(Self {
            base: endpoint.trim_end_matches('/').to_owned(),
            http,
            tls: Arc::new(tls),
        })
    }

    /// `POST /v1/<kind>/<id>` → token (§1.2, §2.1).
    ///
    /// # Errors
    /// Transport failure, a non-201 answer, or a body without a token.
    pub async fn create_channel(
        &self,
        kind: &str,
        id: &str,
        client_id: Option<&str>,
    ) -> Result<String, MgsError> {
        let what = format!("creating {kind} {id}");
        let body = CreateChannelRequest {
            message_schema_version: MESSAGE_SCHEMA_VERSION.into(),
            request_id: Uuid::new_v4().to_string(),
            client_id: client_id.map(str::to_owned),
        };
        let resp = self
            .http
            .post(format!("{}/v1/{kind}/{id}", self.base))
            .header("content-type", "application/json")
            .body(to_json(&body))
            .send()
            .await
            .map_err(|source| MgsError::Http {
                what: what.clone(),
                source,
            })?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|source| MgsError::Http {
            what: what.clone(),
            source,
        })?;
        if status != 201 {
            return Err(MgsError::Refused {
                what,
                status,
                body: text,
            });
        }
        Ok(TokenResponse::from_xml(&text)
            .map_err(|source| MgsError::Token { what, source })?
            .token_value)
    }

    /// Dials `ws(s)://<host>/v1/<kind>/<id>?<query>` and sends `open` as the first text frame.
    ///
    /// # Errors
    /// Dial, TLS or send failure.
    pub async fn dial(
        &self,
        kind: &str,
        id: &str,
        query: &str,
        open: &impl serde::Serialize,
    ) -> Result<Socket, MgsError> {
        use futures_util::SinkExt;
        let ws_base = if let Some(rest) = self.base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = self.base.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            self.base.clone()
        };
        let url = format!("{ws_base}/v1/{kind}/{id}?{query}");
        let what = format!("opening {kind} {id}");
        let wrap = |e| MgsError::Websocket {
            what: what.clone(),
            source: Box::new(e),
        };
        let connector = tokio_tungstenite::Connector::Rustls(self.tls.clone());
        let dial = tokio_tungstenite::connect_async_tls_with_config(
            url.as_str(),
            None,
            true,
            Some(connector),
        );
        let (mut ws, _) = tokio::time::timeout(HTTP_TIMEOUT, dial)
            .await
            .map_err(|_| {
                wrap(tokio_tungstenite::tungstenite::Error::Io(
                    std::io::ErrorKind::TimedOut.into(),
                ))
            })?
            .map_err(wrap)?;
        let text = String::from_utf8(to_json(open)).unwrap_or_default();
        ws.send(Message::text(text)).await.map_err(wrap)?;
        Ok(ws)
    }
}

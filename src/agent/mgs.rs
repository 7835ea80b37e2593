//! The agent's client side of the message gateway (protocol.md §1.2–§1.4, §2.1–§2.2):
//! channel-creation POSTs (expect 201 + XML token), websocket dialing with the first text
//! frame, TLS with the system's web roots or a custom CA.
//!
//! With a [`Signer`] (the agent's `gateway = "aws"` mode) every POST and every websocket
//! upgrade is SigV4-signed, service `ssmmessages`: the upgrade by signing a synthetic
//! `GET` of the `wss://` URL with an empty body, as upstream does, and adding the
//! resulting headers to the upgrade request. Without one (the local gateway) requests go
//! unsigned.
//!
//! Must not know: sessions, PTYs, recording.

use super::budget::{MAX_CONTROL_MESSAGE, MAX_DATA_MESSAGE, OUTPUT_IN_FLIGHT};
use crate::protocol::payload::{
    to_json, CreateChannelRequest, TokenResponse, MESSAGE_SCHEMA_VERSION,
};
use crate::sign::{SignError, Signer};
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
    /// The request could not be signed (no credentials).
    #[error("{what}: {source}")]
    Sign {
        /// What was attempted.
        what: String,
        /// Cause.
        #[source]
        source: SignError,
    },
}

impl MgsError {
    /// True when the gateway says the session is over, so retrying is pointless (§1.6).
    pub fn session_terminated(&self) -> bool {
        matches!(self, Self::Refused { body, .. } if body.contains("Session is already terminated"))
    }

    /// True when the gateway refused the request's credentials or signature (HTTP 401 or
    /// 403): fresh credentials may help, and the log should say what to fix.
    pub fn auth_refused(&self) -> bool {
        match self {
            Self::Refused { status, .. } => matches!(status, 401 | 403),
            Self::Websocket { source, .. } => matches!(
                source.as_ref(),
                tokio_tungstenite::tungstenite::Error::Http(r) if matches!(r.status().as_u16(), 401 | 403)
            ),
            _ => false,
        }
    }
}

/// Connection details for one gateway.
#[derive(Debug, Clone)]
pub struct Mgs {
    base: String,
    http: reqwest::Client,
    tls: Arc<rustls::ClientConfig>,
    signer: Option<Arc<Signer>>,
    own_key: bool,
}

impl Mgs {
    /// `endpoint` is `http(s)://host[:port]`; `ca_file` adds PEM CAs to the web roots;
    /// `signer` (service `ssmmessages`) signs every request, or none is signed.
    ///
    /// # Errors
    /// Unreadable or invalid CA file.
    pub fn new(
        endpoint: &str,
        ca_file: Option<&Path>,
        signer: Option<Arc<Signer>>,
    ) -> Result<Self, MgsError> {
        let tls = crate::tls::client_config(ca_file).map_err(MgsError::Tls)?;
        let http = reqwest::Client::builder()
            .timeout(HTTP_TIMEOUT)
            .use_preconfigured_tls(rustls::ClientConfig::clone(&tls))
            .build()
            .map_err(|e| MgsError::Tls(e.to_string()))?;
        Ok(Self {
            base: endpoint.trim_end_matches('/').to_owned(),
            http,
            tls,
            signer,
            own_key: false,
        })
    }

    /// Marks the signer as the local mode's own key (open gateways only; a strict one
    /// refuses it, and the refusal then says to use AWS mode).
    #[must_use]
    pub fn with_own_key(mut self, own_key: bool) -> Self {
        self.own_key = own_key;
        self
    }

    /// Whether requests are signed with real credentials (AWS mode, `dev`): a strict
    /// gateway may accept them. The local mode's own key is not.
    pub fn signs_with_credentials(&self) -> bool {
        self.signer.is_some() && !self.own_key
    }

    /// The gateway's base URL.
    pub fn endpoint(&self) -> &str {
        &self.base
    }

    /// Whether requests are signed.
    pub fn signs(&self) -> bool {
        self.signer.is_some()
    }

    /// Forgets cached credentials after the gateway refused them (401/403), so the next
    /// request, whoever makes it, loads fresh ones (the instance role's may have rotated).
    async fn forget_credentials(&self) {
        if let Some(signer) = &self.signer {
            signer.forget().await;
        }
    }

    async fn signed(
        &self,
        what: &str,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Vec<(String, String)>, MgsError> {
        match &self.signer {
            None => Ok(Vec::new()),
            Some(signer) => signer
                .sign(method, url, headers, body)
                .await
                .map_err(|source| MgsError::Sign {
                    what: what.to_owned(),
                    source,
                }),
        }
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
        let url = format!("{}/v1/{kind}/{id}", self.base);
        let body = to_json(&body);
        let content_type = [("content-type", "application/json")];
        let signed = self
            .signed(&what, "POST", &url, &content_type, &body)
            .await?;
        let mut request = self
            .http
            .post(&url)
            .header("content-type", "application/json");
        for (k, v) in signed {
            request = request.header(k, v);
        }
        let resp = request
            .body(body)
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
            if matches!(status, 401 | 403) {
                self.forget_credentials().await;
            }
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
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let ws_base = crate::protocol::endpoint::websocket_base(&self.base);
        let url = format!("{ws_base}/v1/{kind}/{id}?{query}");
        let what = format!("opening {kind} {id}");
        let wrap = |e| MgsError::Websocket {
            what: what.clone(),
            source: Box::new(e),
        };
        let mut request = url.as_str().into_client_request().map_err(wrap)?;
        for (k, v) in self.signed(&what, "GET", &url, &[], b"").await? {
            let name = tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes());
            let value = tokio_tungstenite::tungstenite::http::HeaderValue::from_str(&v);
            if let (Ok(name), Ok(value)) = (name, value) {
                request.headers_mut().insert(name, value);
            }
        }
        let connector = tokio_tungstenite::Connector::Rustls(self.tls.clone());
        // A hostile or broken peer must not make the agent buffer tungstenite's default
        // 64 MiB per message: the largest message a channel legitimately carries.
        let max = if kind == "control-channel" {
            MAX_CONTROL_MESSAGE
        } else {
            MAX_DATA_MESSAGE
        };
        // The write buffer is bounded too (tungstenite's default is unbounded, and a send
        // that timed out leaves its frame in it): the output window and a frame beyond.
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(max))
            .max_frame_size(Some(max))
            .write_buffer_size(128 * 1024)
            .max_write_buffer_size(128 * 1024 + OUTPUT_IN_FLIGHT + MAX_CONTROL_MESSAGE);
        let dial = tokio_tungstenite::connect_async_tls_with_config(
            request,
            Some(config),
            true,
            Some(connector),
        );
        let (mut ws, _) = match tokio::time::timeout(HTTP_TIMEOUT, dial).await {
            Ok(Ok(dialled)) => dialled,
            Ok(Err(e)) => {
                let e = wrap(e);
                if e.auth_refused() {
                    self.forget_credentials().await;
                }
                return Err(e);
            }
            Err(_) => {
                return Err(wrap(tokio_tungstenite::tungstenite::Error::Io(
                    std::io::ErrorKind::TimedOut.into(),
                )))
            }
        };
        let text = String::from_utf8(to_json(open)).unwrap_or_default();
        ws.send(Message::text(text)).await.map_err(wrap)?;
        Ok(ws)
    }
}

//! The gateway's error replies in AWS's shapes: the SSM API's JSON errors ([`ApiError`])
//! and the message gateway's XML ones (`xml_response`). A leaf, shared by the API, the
//! message gateway, the auth middleware and the limits, so none of them imports another
//! for its error type.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// The SSM API's content type.
pub(crate) const CONTENT_TYPE: &str = "application/x-amz-json-1.1";

/// An AWS-shaped API error.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    pub(crate) message: String,
}

impl ApiError {
    pub(crate) fn new(kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind,
            message: message.into(),
        }
    }

    /// An error with its own HTTP status (the strict mode's refusals).
    pub(crate) fn with_status(
        status: StatusCode,
        kind: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
        }
    }

    pub(crate) fn validation(message: impl Into<String>) -> Self {
        Self::new("ValidationException", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        tracing::debug!(kind = self.kind, message = %self.message, "API error");
        (
            self.status,
            [
                ("content-type", CONTENT_TYPE),
                ("x-amzn-errortype", self.kind),
            ],
            json!({"__type": self.kind, "message": self.message}).to_string(),
        )
            .into_response()
    }
}

/// An XML error body as the message gateway answers: `<root attrs><child>message</child></root>`,
/// the message escaped.
pub(crate) fn xml_response(
    status: StatusCode,
    root: &str,
    attrs: &str,
    child: &str,
    message: &str,
) -> Response {
    let escaped = message
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    (
        status,
        [("content-type", "application/xml")],
        format!("<{root}{attrs}><{child}>{escaped}</{child}></{root}>"),
    )
        .into_response()
}

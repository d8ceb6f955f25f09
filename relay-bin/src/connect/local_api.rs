//! The connector's local API for the PBX on its host: short-lived TURN
//! credentials from the relay, through the connector's channel. Loopback
//! only (the configuration refuses anything else): it takes no token.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use relay_core::codes::ErrorCode;
use relay_core::connector::{ConnectorError, ConnectorHandle};
use serde::Deserialize;
use serde_json::json;

/// Largest request body.
const MAX_BODY: usize = 4096;

/// The local API's own code (the relay's refusals pass on with theirs).
#[derive(Debug, Clone, Copy)]
enum LocalCode {
    /// The connector has no channel to the relay now.
    NotConnected,
}

impl LocalCode {
    fn as_str(self) -> &'static str {
        match self {
            LocalCode::NotConnected => "not_connected",
        }
    }
}

/// `POST /v1/turn/credentials`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialsRequest {
    /// Who they are for (an extension, a device id).
    user: String,
    /// How long they stay valid (the relay's default when left out).
    #[serde(default)]
    lifetime_secs: Option<u64>,
}

/// Binds `addr` and serves the API on the current runtime; the bound
/// address.
pub(super) async fn serve(addr: SocketAddr, connector: ConnectorHandle) -> Result<SocketAddr, String> {
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("local_api {addr}: cannot listen: {e}"))?;
    let bound = listener.local_addr().map_err(|e| format!("local_api {addr}: {e}"))?;
    let app = Router::new()
        .route("/v1/turn/credentials", post(turn_credentials))
        .fallback(|| async { error(StatusCode::NOT_FOUND, ErrorCode::NotFound.as_str(), "no such endpoint") })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(connector);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "connector local API stopped");
        }
    });
    Ok(bound)
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({ "code": code, "message": message }))).into_response()
}

/// Credentials and an `iceServers` entry, or why not: 400 for a request
/// the relay refuses as malformed, 409 when it serves no TURN for this
/// tenant, 503 while the channel is down. Never logs the password.
async fn turn_credentials(
    State(connector): State<ConnectorHandle>,
    body: Result<Json<CredentialsRequest>, JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, ErrorCode::InvalidJson.as_str(), &e.body_text()),
    };
    match connector.turn_credentials(&req.user, req.lifetime_secs.map(Duration::from_secs)).await {
        Ok(g) => Json(json!({
            "username": g.username,
            "password": g.password,
            "realm": g.realm,
            "ttl_secs": g.ttl.as_secs(),
            "uris": g.uris,
            "ice_servers": [{ "urls": g.uris, "username": g.username, "credential": g.password }],
        }))
        .into_response(),
        Err(e) => {
            let status = match e.code() {
                Some(ErrorCode::InvalidField | ErrorCode::InvalidJson) => StatusCode::BAD_REQUEST,
                Some(ErrorCode::TurnNotConfigured) => StatusCode::CONFLICT,
                _ if matches!(e, ConnectorError::Refused { .. }) => StatusCode::BAD_GATEWAY,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            let code = match &e {
                ConnectorError::Refused { code, .. } => code.clone(),
                _ => LocalCode::NotConnected.as_str().to_string(),
            };
            error(status, &code, &e.to_string())
        }
    }
}

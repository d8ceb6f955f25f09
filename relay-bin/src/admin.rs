//! The admin HTTP API: health, readiness, metrics and session management.
//!
//! Every error is JSON `{"code": "...", "message": "..."}` with a stable
//! code; bad input is always a 4xx.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use relay_core::wire::srtp_auth::TagLen;
use relay_core::{
    LatchPolicy, LegInfo, LegLimits, LegSpec, RelayError, RelayHandle, SessionId, SessionInfo, SessionSpec, SrtpAuth,
    Verify,
};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::metrics::{self, ControlStats};

/// The OpenAPI document served at `/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Shared state of the admin server.
pub struct AdminState {
    /// The relay.
    pub handle: RelayHandle,
    /// SHA-256 of the bearer token; `None` = unauthenticated (loopback only).
    pub token_sha256: RwLock<Option<[u8; 32]>>,
    /// Request counters.
    pub stats: ControlStats,
    /// Datapath name for build info.
    pub backend: String,
    /// Start time.
    pub started: Instant,
    /// Cleared while draining.
    pub ready: AtomicBool,
}

/// A JSON error response.
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }
    fn bad(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "code": self.code, "message": self.message }))).into_response()
    }
}

impl From<RelayError> for ApiError {
    fn from(e: RelayError) -> Self {
        let msg = e.to_string();
        match e {
            RelayError::PortsExhausted => Self::new(StatusCode::SERVICE_UNAVAILABLE, "ports_exhausted", msg),
            RelayError::QuotaExceeded(_) => Self::new(StatusCode::CONFLICT, "quota_exceeded", msg),
            RelayError::UnknownSession(_) => Self::new(StatusCode::NOT_FOUND, "unknown_session", msg),
            RelayError::InvalidSpec(_) => Self::bad("invalid_spec", msg),
            RelayError::Busy => Self::new(StatusCode::SERVICE_UNAVAILABLE, "busy", msg),
            RelayError::Draining => Self::new(StatusCode::SERVICE_UNAVAILABLE, "draining", msg),
            RelayError::Stopped => Self::new(StatusCode::SERVICE_UNAVAILABLE, "stopped", msg),
        }
    }
}

/// Builds the router.
pub fn router(state: Arc<AdminState>) -> Router {
    let api = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/v1/sessions", get(list_sessions).post(create_session))
        .route("/v1/sessions/{id}", get(get_session).delete(delete_session))
        .route("/v1/openapi.json", get(openapi))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .route("/readyz", get(readyz))
        .merge(api)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .layer(middleware::from_fn_with_state(state.clone(), count_requests))
        .with_state(state)
}

/// Serves the API until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AdminState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state).into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await
}

async fn authenticate(State(st): State<Arc<AdminState>>, headers: HeaderMap, req: Request, next: Next) -> Response {
    let expected = *st.token_sha256.read().unwrap_or_else(|p| p.into_inner());
    if let Some(expected) = expected {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| Sha256::digest(t.trim().as_bytes()));
        let ok = presented.is_some_and(|p| relay_core::wire::ct_eq(&p, &expected));
        if !ok {
            let mut r = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "a valid bearer token is required")
                .into_response();
            r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    next.run(req).await
}

async fn count_requests(State(st): State<Arc<AdminState>>, req: Request, next: Next) -> Response {
    let op = match (req.method().as_str(), req.uri().path()) {
        ("POST", "/v1/sessions") => 0,
        ("GET", p) if p.starts_with("/v1/sessions/") => 1,
        ("GET", "/v1/sessions") => 2,
        ("DELETE", _) => 3,
        _ => 4,
    };
    let t0 = Instant::now();
    let resp = next.run(req).await;
    st.stats.record(op, resp.status().as_u16(), t0.elapsed());
    resp
}

async fn readyz(State(st): State<Arc<AdminState>>) -> Response {
    if st.ready.load(Ordering::SeqCst) && !st.handle.is_draining() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", "draining or not started").into_response()
    }
}

async fn metrics_text(State(st): State<Arc<AdminState>>) -> Result<Response, ApiError> {
    let counters = st.handle.counters().await?;
    let body = metrics::render(&counters, &st.stats, &st.backend, st.handle.is_draining(), st.started.elapsed());
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response())
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// `POST /v1/sessions` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    tenant: String,
    #[serde(default)]
    pbx: LegBody,
    #[serde(default)]
    endpoint: LegBody,
    latch: Option<String>,
    verify: Option<String>,
    learning_window_ms: Option<u64>,
    idle_timeout_secs: Option<u64>,
    max_duration_secs: Option<u64>,
    quality: Option<bool>,
    clock_rate: Option<u32>,
}

/// One leg in `POST /v1/sessions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LegBody {
    rtcp_mux: bool,
    hint: Option<String>,
    srtp_auth: Option<SrtpAuthBody>,
    stun_password: Option<String>,
    max_pps: Option<u32>,
    max_bytes_per_sec: Option<u64>,
}

impl Default for LegBody {
    fn default() -> Self {
        Self {
            rtcp_mux: true,
            hint: None,
            srtp_auth: None,
            stun_password: None,
            max_pps: None,
            max_bytes_per_sec: None,
        }
    }
}

/// SRTP authentication keys of a leg (never the master key).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SrtpAuthBody {
    rtp_key: String,
    rtcp_key: String,
    #[serde(default)]
    tag_bits: Option<u16>,
}

impl std::fmt::Debug for SrtpAuthBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SrtpAuthBody(<masked>)")
    }
}

fn key20(hex_key: &str, field: &'static str) -> Result<[u8; 20], ApiError> {
    hex::decode(hex_key.trim()).ok().and_then(|b| <[u8; 20]>::try_from(b).ok()).ok_or_else(|| {
        ApiError::bad("invalid_field", format!("{field}: expected 40 hex digits (a 20-byte HMAC-SHA1 key)"))
    })
}

fn leg_spec(body: LegBody, side: &'static str) -> Result<LegSpec, ApiError> {
    let hint = match body.hint {
        None => None,
        Some(h) => Some(
            h.parse::<SocketAddr>()
                .or_else(|_| h.parse::<std::net::IpAddr>().map(|ip| SocketAddr::new(ip, 0)))
                .map_err(|_| ApiError::bad("invalid_field", format!("{side}.hint: {h:?} is not an IP or IP:port")))?,
        ),
    };
    let srtp_auth = match body.srtp_auth {
        None => None,
        Some(a) => {
            let rtp_tag = match a.tag_bits.unwrap_or(80) {
                80 => TagLen::Bits80,
                32 => TagLen::Bits32,
                other => {
                    return Err(ApiError::bad(
                        "invalid_field",
                        format!("{side}.srtp_auth.tag_bits: {other} is not 80 or 32"),
                    ))
                }
            };
            Some(SrtpAuth {
                rtp_key: key20(
                    &a.rtp_key,
                    if side == "pbx" { "pbx.srtp_auth.rtp_key" } else { "endpoint.srtp_auth.rtp_key" },
                )?,
                rtcp_key: key20(
                    &a.rtcp_key,
                    if side == "pbx" { "pbx.srtp_auth.rtcp_key" } else { "endpoint.srtp_auth.rtcp_key" },
                )?,
                rtp_tag,
                rtcp_tag: TagLen::Bits80,
            })
        }
    };
    let limits = (body.max_pps.is_some() || body.max_bytes_per_sec.is_some())
        .then_some(LegLimits { max_pps: body.max_pps, max_bytes_per_sec: body.max_bytes_per_sec });
    Ok(LegSpec {
        rtcp_mux: body.rtcp_mux,
        hint,
        srtp_auth,
        stun_password: body.stun_password.map(String::into_bytes),
        limits,
    })
}

fn session_spec(b: CreateSession) -> Result<SessionSpec, ApiError> {
    let latch = match b.latch.as_deref() {
        None => None,
        Some("window") => Some(LatchPolicy::Window),
        Some("authenticated") => Some(LatchPolicy::Authenticated),
        Some("open") => Some(LatchPolicy::Open),
        Some(other) => {
            return Err(ApiError::bad(
                "invalid_field",
                format!("latch: {other:?} is not window, authenticated or open"),
            ))
        }
    };
    let verify = match b.verify.as_deref() {
        None => None,
        Some("latch") => Some(Verify::Latch),
        Some("all") => Some(Verify::All),
        Some(other) => return Err(ApiError::bad("invalid_field", format!("verify: {other:?} is not latch or all"))),
    };
    Ok(SessionSpec {
        tenant: b.tenant,
        pbx: leg_spec(b.pbx, "pbx")?,
        endpoint: leg_spec(b.endpoint, "endpoint")?,
        latch,
        verify,
        learning_window: b.learning_window_ms.map(Duration::from_millis),
        idle_timeout: b.idle_timeout_secs.map(Duration::from_secs),
        max_duration: b.max_duration_secs.map(Duration::from_secs),
        quality: b.quality,
        clock_rate: b.clock_rate,
    })
}

fn leg_json(l: &LegInfo) -> Value {
    let drops: serde_json::Map<String, Value> =
        l.stats.drops.iter().filter(|(_, n)| *n > 0).map(|(r, n)| (r.as_str().to_string(), json!(n))).collect();
    json!({
        "relay_ports": { "rtp": l.ports.rtp, "rtcp": l.ports.rtcp },
        "hint": l.hint.map(|h| h.to_string()),
        "remote_rtp": l.remote_rtp.map(|a| a.to_string()),
        "remote_rtcp": l.remote_rtcp.map(|a| a.to_string()),
        "has_srtp_auth": l.has_srtp_auth,
        "has_stun_password": l.has_stun_password,
        "packets_received": l.stats.packets_received,
        "bytes_received": l.stats.bytes_received,
        "packets_forwarded": l.stats.packets_forwarded,
        "bytes_forwarded": l.stats.bytes_forwarded,
        "latches": l.stats.latches,
        "relatches": l.stats.relatches,
        "drops": drops,
        "quality": l.quality.iter().map(|q| json!({
            "ssrc": q.ssrc, "packets": q.packets, "lost": q.lost, "duplicates": q.duplicates,
            "reordered": q.reordered, "jitter": q.jitter, "jitter_ms": q.jitter_ms,
        })).collect::<Vec<_>>(),
    })
}

fn session_json(s: &SessionInfo) -> Value {
    json!({
        "id": s.id.to_string(),
        "tenant": s.tenant,
        "latch": s.latch.as_str(),
        "verify": match s.verify { Verify::Latch => "latch", Verify::All => "all" },
        "age_ms": s.age.as_millis() as u64,
        "idle_ms": s.idle.as_millis() as u64,
        "learning": s.learning,
        "pbx": leg_json(&s.pbx),
        "endpoint": leg_json(&s.endpoint),
    })
}

fn parse_id(id: &str) -> Result<SessionId, ApiError> {
    if id.len() != 16 {
        return Err(ApiError::bad("invalid_id", "session ids are 16 hex digits"));
    }
    id.parse().map_err(|_| ApiError::bad("invalid_id", "session ids are 16 hex digits"))
}

async fn create_session(
    State(st): State<Arc<AdminState>>,
    body: Result<Json<CreateSession>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(|e| ApiError::bad("invalid_json", e.body_text()))?;
    let spec = session_spec(body)?;
    let a = st.handle.allocate(spec).await?;
    let legs = |l: relay_core::LegAddrs| json!({ "rtp": l.rtp.to_string(), "rtcp": l.rtcp.map(|a| a.to_string()) });
    let body = json!({ "id": a.id.to_string(), "pbx": legs(a.pbx), "endpoint": legs(a.endpoint) });
    Ok((StatusCode::CREATED, [(header::LOCATION, format!("/v1/sessions/{}", a.id))], Json(body)).into_response())
}

async fn get_session(State(st): State<Arc<AdminState>>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let info = st.handle.session(parse_id(&id)?).await?;
    Ok(Json(session_json(&info)))
}

async fn delete_session(State(st): State<Arc<AdminState>>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let info = st.handle.release(parse_id(&id)?).await?;
    Ok(Json(session_json(&info)))
}

/// `GET /v1/sessions` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    after: Option<String>,
    limit: Option<usize>,
}

async fn list_sessions(
    State(st): State<Arc<AdminState>>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad("invalid_query", e.body_text()))?;
    let after = q.after.as_deref().map(parse_id).transpose()?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::bad("invalid_query", "limit must be 1 to 1000"));
    }
    let page = st.handle.list(after, limit).await?;
    Ok(Json(json!({
        "sessions": page.sessions.iter().map(session_json).collect::<Vec<_>>(),
        "next": page.next.map(|n| n.to_string()),
    })))
}

//! The admin HTTP API: health, readiness, metrics and session management.
//!
//! Every error is JSON `{"code": "...", "message": "..."}` with a stable
//! code; bad input is always a 4xx.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use relay_core::api::{AllocationReply, FieldError, Object, SessionRequest, UpdateRequest};
use relay_core::codes::ErrorCode;
use relay_core::control::server::ControlServer;
use relay_core::session::SpecErrorKind;
use relay_core::tunnel::server::TunnelServer;
use relay_core::{LegInfo, RelayError, RelayHandle, SessionId, SessionInfo};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::metrics::{self, AdminStats};

/// Largest request body accepted (a session request is a few hundred bytes).
pub const MAX_BODY: usize = 64 * 1024;

/// Shared state of the admin server.
pub struct AdminState {
    /// The relay.
    pub handle: RelayHandle,
    /// SHA-256 of the bearer token; `None` = unauthenticated (loopback only).
    pub token_sha256: RwLock<Option<[u8; 32]>>,
    /// Session defaults and ceilings (for the OpenAPI document; reloaded).
    pub defaults: RwLock<relay_core::SessionDefaults>,
    /// Request counters.
    pub stats: AdminStats,
    /// Datapath name for build info.
    pub backend: String,
    /// Start time.
    pub started: Instant,
    /// Cleared while draining.
    pub ready: AtomicBool,
    /// The connectors' control listener, when configured.
    pub control: Option<ControlServer>,
    /// The tunnel listeners, when configured.
    pub tunnels: Option<TunnelServer>,
    /// The ng protocol engine, when enabled.
    pub ng: Option<Arc<relay_core::ng::NgEngine>>,
    /// The ng transports' counters.
    pub ng_transport: Arc<crate::ng::NgTransportStats>,
    /// Whether `[cluster]` is configured.
    pub clustered: bool,
    /// The cluster node, once started.
    pub cluster: std::sync::OnceLock<relay_cluster::ClusterView>,
    /// The TURN server, once started.
    pub turn: std::sync::OnceLock<relay_core::turn::service::TurnService>,
    /// The TURN URIs derived from its bound listeners (told with
    /// credentials when `[turn] uris` is not set).
    pub turn_uris: std::sync::OnceLock<Vec<String>>,
}

impl AdminState {
    /// Whether this relay serves requests: always without a cluster; with
    /// one, only while it holds the lease (a standby serves nothing).
    pub fn serving(&self) -> bool {
        match self.cluster.get() {
            Some(c) => c.is_active(),
            None => !self.clustered,
        }
    }
}

/// A JSON error response.
pub struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }
    fn bad(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "code": self.code.as_str(), "message": self.message }))).into_response()
    }
}

impl From<RelayError> for ApiError {
    fn from(e: RelayError) -> Self {
        let status = match &e {
            RelayError::PortsExhausted
            | RelayError::Busy
            | RelayError::Draining
            | RelayError::Standby
            | RelayError::NotReplicated
            | RelayError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
            RelayError::QuotaExceeded(_) | RelayError::RestoreConflict(_) => StatusCode::CONFLICT,
            RelayError::UnknownSession(_) => StatusCode::NOT_FOUND,
            RelayError::InvalidSpec(s) => match s.kind {
                SpecErrorKind::AddressRefused => {
                    return Self::new(StatusCode::FORBIDDEN, ErrorCode::ForbiddenAddress, e.to_string())
                }
                // In a create, the rule is part of the request's schema: 400
                // `invalid_spec`; an update gets 409 (see `update_session`).
                SpecErrorKind::MissingCredentials | SpecErrorKind::Invalid => StatusCode::BAD_REQUEST,
            },
        };
        Self::new(status, e.code(), e.to_string())
    }
}

/// A JSON body the extractor refused: too large (413), not JSON (415), or
/// not the expected shape (400).
fn body_error(e: JsonRejection) -> ApiError {
    match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::BodyTooLarge,
            format!("bodies are at most {MAX_BODY} bytes"),
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnsupportedMediaType,
            "send the body as Content-Type: application/json",
        ),
        _ => ApiError::bad(ErrorCode::InvalidJson, e.body_text()),
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        Self::bad(e.code, e.message)
    }
}

/// Builds the router.
pub fn router(state: Arc<AdminState>) -> Router {
    let api = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/v1/sessions", get(list_sessions).post(create_session))
        .route("/v1/sessions/{id}", get(get_session).patch(update_session).delete(delete_session))
        .route("/v1/connectors", get(list_connectors))
        .route("/v1/turn/allocations", get(list_turn_allocations))
        .route("/v1/cluster", get(cluster))
        .route("/v1/openapi.json", get(openapi))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .route("/readyz", get(readyz))
        .merge(api)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::MethodNotAllowed,
                "this route does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
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

/// Whether a `Host` header names this machine's loopback (`localhost`,
/// `127.x.y.z`, `[::1]`, with or without a port). Without a token, the API
/// answers only such requests: a web page that rebinds its own DNS name to
/// 127.0.0.1 still sends its own name, so a browser cannot be turned
/// against a tokenless admin API (DNS rebinding).
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((ip, tail)) if tail.is_empty() || tail.strip_prefix(':').is_some_and(|p| p.parse::<u16>().is_ok()) => {
                ip
            }
            _ => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.parse::<u16>().is_ok() => name,
            Some(_) => return false,
            None => host,
        }
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

async fn authenticate(State(st): State<Arc<AdminState>>, headers: HeaderMap, req: Request, next: Next) -> Response {
    let expected = *st.token_sha256.read().unwrap_or_else(|p| p.into_inner());
    if expected.is_none() {
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
        if !is_loopback_host(host) {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                ErrorCode::ForbiddenHost,
                "without a token the admin API answers only requests for localhost (Host header)",
            )
            .into_response();
        }
    }
    if let Some(expected) = expected {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| Sha256::digest(t.trim().as_bytes()));
        let ok = presented.is_some_and(|p| relay_core::wire::ct_eq(&p, &expected));
        if !ok {
            let mut r =
                ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, "a valid bearer token is required")
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
        ("PATCH", _) => 5,
        _ => 4,
    };
    let t0 = Instant::now();
    let resp = next.run(req).await;
    st.stats.record(op, resp.status().as_u16(), t0.elapsed());
    resp
}

async fn readyz(State(st): State<Arc<AdminState>>) -> Response {
    if !st.handle.shard_failures().is_empty() {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::ShardFailed,
            "a shard thread failed; sessions were lost",
        )
        .into_response()
    } else if st.ready.load(Ordering::SeqCst) && !st.handle.is_draining() && !st.serving() {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::NotReady, "cluster standby: another node serves")
            .into_response()
    } else if st.ready.load(Ordering::SeqCst) && !st.handle.is_draining() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::NotReady, "draining or not started").into_response()
    }
}

async fn metrics_text(State(st): State<Arc<AdminState>>) -> Result<Response, ApiError> {
    let counters = st.handle.counters().await?;
    let connectors = st.control.as_ref().map(ControlServer::stats);
    let tunnels = st.tunnels.as_ref().map(TunnelServer::stats);
    let ng = st.ng.as_ref().map(|e| e.stats().snapshot());
    let turn = st.turn.get().map(turn_figures);
    let body = metrics::render(&metrics::Figures {
        ng: ng.as_ref().map(|s| (s, st.ng_transport.as_ref())),
        fast_path: st.handle.fast_path_outcomes(),
        counters: &counters,
        admin: &st.stats,
        connectors: connectors.as_ref(),
        tunnels: tunnels.as_ref(),
        backend: &st.backend,
        draining: st.handle.is_draining(),
        uptime: st.started.elapsed(),
        shard_failures: st.handle.shard_failures().len(),
        cluster: st.cluster.get().map(relay_cluster::ClusterView::status).as_ref(),
        turn: turn.as_ref(),
    });
    Ok(([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], body).into_response())
}

/// The TURN server's figures: counters, and allocations by tenant (every
/// configured tenant, zero included).
fn turn_figures(service: &relay_core::turn::service::TurnService) -> metrics::TurnFigures {
    // What the kernel relayed since its last sync counts in this scrape.
    service.sync_kernel_counters();
    let (stats, allocations) = service.with_server(|server| {
        let by = server.allocations_by_tenant();
        let mut tenants: Vec<(String, u64)> = server
            .settings()
            .realms
            .iter()
            .map(|r| (r.tenant.clone(), by.get(r.tenant.as_str()).copied().unwrap_or(0) as u64))
            .collect();
        tenants.sort();
        tenants.dedup();
        (server.stats().clone(), tenants)
    });
    metrics::TurnFigures {
        stats,
        allocations,
        send_failures: service.send_failures(),
        oversize_drops: service.oversize_drops(),
        streams_refused: service.streams_refused(),
        in_kernel: service.offloaded_allocations() as u64,
    }
}

/// `GET /v1/cluster`: this node's role, lease and replication figures, and
/// every node registered in the cluster with its load.
async fn cluster(State(st): State<Arc<AdminState>>) -> Result<Response, ApiError> {
    let Some(view) = st.cluster.get() else {
        return Ok(Json(json!({ "enabled": false })).into_response());
    };
    let s = view.status();
    // The list the node last read (every second): never waits on Redis.
    let nodes: Vec<_> = s
        .nodes
        .iter()
        .map(|n| {
            json!({
                "node": n.node, "group": n.group, "role": n.role, "address": n.address,
                "sessions": n.sessions, "ports_in_use": n.ports_in_use, "ports_total": n.ports_total,
                "updated_unix_ms": n.updated_unix_ms,
            })
        })
        .collect();
    Ok(Json(json!({
        "enabled": true,
        "node": view.node_id(),
        "group": view.group(),
        "role": s.role.as_str(),
        "epoch": s.epoch,
        "holder": s.holder.as_ref().map(|h| json!({ "node": h.node, "epoch": h.epoch })),
        "redis_up": s.redis_up,
        "redis_errors": s.redis_errors,
        "queue_depth": s.queue_depth,
        "replication_lag_ms": s.replication_lag.as_millis() as u64,
        "warm_sessions": s.warm_sessions,
        "warm_calls": s.warm_calls,
        "warm_turn": s.warm_turn,
        "replication_rounds": s.replication_rounds,
        "takeovers": s.takeovers,
        "demotions": s.demotions,
        "fences": s.fences,
        "resyncs": s.resyncs,
        "bad_records": s.bad_records,
        "rollbacks_refused": s.rollbacks_refused,
        "ignored_names": s.ignored_names,
        "last_write": s.last_write.map(|v| json!({ "epoch": v.epoch, "seq": v.seq })),
        "last_takeover": s.last_takeover.as_ref().map(|t| json!({
            "epoch": t.epoch, "restored": t.restored, "failed": t.failed, "calls": t.calls,
            "turn_allocations": t.turn_allocations,
            "took_ms": t.took.as_secs_f64() * 1000.0, "reloaded": t.reloaded,
        })),
        "nodes": nodes,
    }))
    .into_response())
}

async fn openapi(State(st): State<Arc<AdminState>>) -> Response {
    let tokenless = st.token_sha256.read().unwrap_or_else(|p| p.into_inner()).is_none();
    let defaults = st.defaults.read().unwrap_or_else(|p| p.into_inner()).clone();
    Json(crate::openapi::document(&defaults, tokenless)).into_response()
}

#[cfg(test)]
mod tests {
    use super::is_loopback_host;

    #[test]
    fn only_loopback_hosts_pass_without_a_token() {
        for ok in ["localhost", "LOCALHOST:9180", "127.0.0.1", "127.0.0.1:9180", "127.9.9.9:1", "[::1]", "[::1]:9180"] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "",
            "evil.example",
            "evil.example:9180",
            "10.0.0.1",
            "[::2]:80",
            "127.0.0.1:x",
            "localhost.evil.example",
            "[::1]x",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }
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
        "reports": l.reports.iter().map(|r| json!({
            "ssrc": r.ssrc, "samples": r.samples, "mos_samples": r.mos_samples,
            "cumulative_lost": r.cumulative_lost, "average": r.average.map(mos_json),
            "lowest": r.lowest.map(mos_json), "highest": r.highest.map(mos_json),
        })).collect::<Vec<_>>(),
    })
}

fn mos_json(s: relay_core::session::MosSample) -> Value {
    let micros = |d: Option<std::time::Duration>| d.map(|d| d.as_micros() as u64);
    json!({
        "mos": s.mos, "round_trip_us": micros(s.round_trip), "round_trip_leg_us": micros(s.round_trip_leg),
        "jitter_ms": s.jitter_ms, "loss_percent": s.loss_percent, "age_ms": s.age.as_millis() as u64,
    })
}

fn session_json(s: &SessionInfo) -> Value {
    json!({
        "id": s.id.to_string(),
        "tenant": s.tenant,
        "latch": s.latch.as_str(),
        "verify": s.verify.as_str(),
        "age_ms": s.age.as_millis() as u64,
        "idle_ms": s.idle.as_millis() as u64,
        "learning": s.learning,
        "pbx": leg_json(&s.pbx),
        "endpoint": leg_json(&s.endpoint),
    })
}

fn parse_id(id: &str) -> Result<SessionId, ApiError> {
    relay_core::api::parse_session_id(id).map_err(ApiError::from)
}

async fn create_session(
    State(st): State<Arc<AdminState>>,
    body: Result<Json<Object<SessionRequest>>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(Object(body)) = body.map_err(body_error)?;
    let tenant = body.tenant.clone().ok_or_else(|| ApiError::bad(ErrorCode::InvalidField, "tenant: required"))?;
    let spec = body.to_spec(&tenant)?;
    let a = st.handle.allocate_committed(spec).await?;
    let body = serde_json::to_value(AllocationReply::of(&a)).unwrap_or_default();
    Ok((StatusCode::CREATED, [(header::LOCATION, format!("/v1/sessions/{}", a.id))], Json(body)).into_response())
}

async fn update_session(
    State(st): State<Arc<AdminState>>,
    Path(id): Path<String>,
    body: Result<Json<Object<UpdateRequest>>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let Json(Object(body)) = body.map_err(body_error)?;
    st.handle.update_committed(id, body.to_update()?).await.map_err(|e| match &e {
        // The rule depends on what the session already holds: a conflict with its state.
        RelayError::InvalidSpec(s) if s.kind == SpecErrorKind::MissingCredentials => {
            ApiError::new(StatusCode::CONFLICT, ErrorCode::MissingCredentials, e.to_string())
        }
        _ => ApiError::from(e),
    })?;
    let info = st.handle.session(id).await?;
    Ok(Json(session_json(&info)))
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
    let Query(q) = q.map_err(|e| ApiError::bad(ErrorCode::InvalidQuery, e.body_text()))?;
    let after = q.after.as_deref().map(parse_id).transpose()?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::bad(ErrorCode::InvalidQuery, "limit must be 1 to 1000"));
    }
    let page = st.handle.list(after, limit).await?;
    Ok(Json(json!({
        "sessions": page.sessions.iter().map(session_json).collect::<Vec<_>>(),
        "next": page.next.map(|n| n.to_string()),
    })))
}

/// Most allocations one `GET /v1/turn/allocations` lists.
const MAX_LISTED_ALLOCATIONS: usize = 1000;

/// `GET /v1/turn/allocations`: the TURN server's allocations (no secret:
/// usernames, addresses, lifetimes, counts), at most
/// [`MAX_LISTED_ALLOCATIONS`] of them, with the total.
async fn list_turn_allocations(State(st): State<Arc<AdminState>>) -> Json<Value> {
    let Some(service) = st.turn.get() else {
        return Json(json!({ "enabled": false, "total": 0, "allocations": [] }));
    };
    // What the kernel relayed since its last sync counts in the listing.
    service.sync_kernel_counters();
    let now = std::time::Instant::now();
    service.with_server(|server| {
        let realms = &server.settings().realms;
        let listed: Vec<Value> = server
            .allocations()
            .filter(|a| a.opened)
            .take(MAX_LISTED_ALLOCATIONS)
            .map(|a| {
                let mut listed = json!({
                    "tenant": realms[a.realm].tenant,
                    "realm": realms[a.realm].name,
                    "username": a.username,
                    "transport": a.client.transport.label(),
                    "client": a.client.source.to_string(),
                    "relayed": a.relayed.to_string(),
                    "relayed_transport": if a.tcp { "tcp" } else { "udp" },
                    "expires_in_secs": a.expires.saturating_duration_since(now).as_secs(),
                    "permissions": a.permission_count(now),
                    "channels": a.channels(now).count(),
                    "connections": a.connections,
                    "to_peer": { "packets": a.to_peer.0, "bytes": a.to_peer.1 },
                    "to_client": { "packets": a.to_client.0, "bytes": a.to_client.1 },
                });
                if let Some(second) = a.second.as_ref().filter(|s| s.opened) {
                    listed["relayed_second"] = json!(second.relayed.to_string());
                }
                listed
            })
            .collect();
        Json(json!({ "enabled": true, "total": server.allocations().filter(|a| a.opened).count(), "allocations": listed }))
    })
}

async fn list_connectors(State(st): State<Arc<AdminState>>) -> Json<Value> {
    let list = st.control.as_ref().map(ControlServer::connectors).unwrap_or_default();
    Json(json!({
        "enabled": st.control.is_some(),
        "connectors": list.iter().map(|c| json!({
            "tenant": c.tenant,
            "connector_id": c.connector_id,
            "peer": c.peer.to_string(),
            "services": c.services,
            "connected_secs": c.connected_for.as_secs(),
        })).collect::<Vec<_>>(),
    }))
}

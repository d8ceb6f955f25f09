//! Where the load's sessions come from: an in-process relay (default), or
//! an external one through its admin API. A test can supply its own target
//! (e.g. one that puts a corrupting proxy in front of the relay).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use relay_core::api::{SessionRequest, SrtpAuthKeys};
use relay_core::{BackendKind, Relay, RelayConfig, SessionDefaults};

/// The relay addresses of one allocated call.
#[derive(Debug, Clone)]
pub struct CallLegs {
    /// Session id (for release).
    pub id: String,
    /// Where the PBX side sends.
    pub to_pbx_leg: SocketAddr,
    /// Where the endpoint side sends.
    pub to_endpoint_leg: SocketAddr,
}

/// A source of sessions.
pub trait Target: Send {
    /// Allocates one call; `request` already carries hints and keys.
    fn allocate(&mut self, request: &SessionRequest) -> Result<CallLegs, String>;
    /// Releases every call allocated (best effort).
    fn release(&mut self, legs: &[CallLegs]);
    /// Relay CPU time so far (ns), when the relay runs in this process.
    fn relay_cpu_ns(&self) -> Option<u64> {
        None
    }
    /// Packets the relay has forwarded so far, when it can tell.
    fn relay_forwarded(&self) -> Option<u64> {
        None
    }
    /// What this target is, for the report.
    fn describe(&self) -> String;
}

/// A relay started inside the load generator.
pub struct InProcess {
    relay: Option<Relay>,
    /// Its shard threads' name prefix (unique in this process).
    threads: String,
}

static RELAYS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl InProcess {
    /// Starts a loopback relay with `backend` and `workers` shards, with
    /// ports for `calls` calls (two rtcp-mux legs each) and some slack.
    pub fn start(backend: BackendKind, workers: usize, calls: usize) -> Result<Self, String> {
        // Below Linux's ephemeral ports (32768+), where the generator's own
        // sockets live: a relay never takes its own port range for a peer.
        let ports = (calls * 2 + 256).next_multiple_of(2 * workers.max(1)).min(30_000) as u16;
        // Unique thread names: the CPU figure must count this relay's threads only.
        let threads = format!("ltr{}", RELAYS.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let relay = Relay::start(RelayConfig {
            thread_name: threads.clone(),
            backend,
            workers,
            port_min: 2000,
            port_max: 2000 + ports - 1,
            // One tenant runs every call, at rates above a production relay's ceilings.
            tenant_port_share_percent: 100,
            defaults: SessionDefaults {
                limits: relay_core::LegLimits { max_pps: Some(100_000), max_bytes_per_sec: None },
                ceilings: relay_core::session::Ceilings {
                    max_pps: None,
                    max_bytes_per_sec: None,
                    ..Default::default()
                },
                ..SessionDefaults::default()
            },
            ..RelayConfig::default()
        })
        .map_err(|e| format!("relay: {e}"))?;
        Ok(Self { relay: Some(relay), threads })
    }

    fn relay(&self) -> Result<&Relay, String> {
        self.relay.as_ref().ok_or_else(|| "relay stopped".to_string())
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(r) = self.relay.take() {
            r.shutdown(Duration::ZERO);
        }
    }
}

impl Target for InProcess {
    fn allocate(&mut self, request: &SessionRequest) -> Result<CallLegs, String> {
        let spec = request.to_spec("loadtest").map_err(|e| e.message)?;
        let a = self.relay()?.handle().allocate(spec).wait().map_err(|e| e.to_string())?;
        Ok(CallLegs { id: a.id.to_string(), to_pbx_leg: a.pbx.rtp, to_endpoint_leg: a.endpoint.rtp })
    }

    fn release(&mut self, legs: &[CallLegs]) {
        if let Ok(r) = self.relay() {
            for l in legs {
                if let Ok(id) = l.id.parse() {
                    let _ = r.handle().release(id).wait();
                }
            }
        }
    }

    fn relay_cpu_ns(&self) -> Option<u64> {
        Some(crate::cpu::threads_cpu_ns(&format!("{}-", self.threads)))
    }

    fn relay_forwarded(&self) -> Option<u64> {
        let c = self.relay().ok()?.handle().counters().wait().ok()?;
        Some(c.total.packets_forwarded)
    }

    fn describe(&self) -> String {
        match self.relay() {
            Ok(r) => match &r.datapath().fast_path {
                Some(Ok(_)) => {
                    format!("in-process relay ({} datapath + kernel fast path)", r.datapath().running.as_str())
                }
                Some(Err(why)) => {
                    format!(
                        "in-process relay ({} datapath; kernel fast path unavailable: {why})",
                        r.datapath().running.as_str()
                    )
                }
                None => format!("in-process relay ({} datapath)", r.datapath().running.as_str()),
            },
            Err(_) => "in-process relay".into(),
        }
    }
}

/// An external relay driven through its admin API.
pub struct Admin {
    addr: SocketAddr,
    token: Option<String>,
    tenant: String,
}

impl Admin {
    /// `url` is `http://HOST:PORT` (loopback or a host you own).
    pub fn new(url: &str, token: Option<String>, tenant: &str) -> Result<Self, String> {
        let hostport = url.strip_prefix("http://").unwrap_or(url).trim_end_matches('/');
        let addr = std::net::ToSocketAddrs::to_socket_addrs(hostport)
            .map_err(|e| format!("admin URL {url}: {e}"))?
            .next()
            .ok_or_else(|| format!("admin URL {url}: no address"))?;
        Ok(Self { addr, token, tenant: tenant.into() })
    }

    fn request(&self, method: &str, path: &str, body: Option<&str>) -> Result<(u16, String), String> {
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n", self.addr);
        if let Some(t) = &self.token {
            req += &format!("Authorization: Bearer {t}\r\n");
        }
        match body {
            Some(b) => req += &format!("Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}", b.len()),
            None => req += "\r\n",
        }
        s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&raw).to_string();
        let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).ok_or("bad HTTP response")?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        Ok((status, body))
    }
}

impl Target for Admin {
    fn allocate(&mut self, request: &SessionRequest) -> Result<CallLegs, String> {
        let mut req = request.clone();
        req.tenant = Some(self.tenant.clone());
        let body = serde_json::to_string(&req).map_err(|e| e.to_string())?;
        let (status, text) = self.request("POST", "/v1/sessions", Some(&body))?;
        if status != 201 {
            return Err(format!("allocate: HTTP {status}: {text}"));
        }
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("allocate reply: {e}"))?;
        let addr = |leg: &str| -> Result<SocketAddr, String> {
            v[leg]["rtp"].as_str().and_then(|a| a.parse().ok()).ok_or_else(|| format!("allocate reply: no {leg}.rtp"))
        };
        Ok(CallLegs {
            id: v["id"].as_str().unwrap_or_default().to_string(),
            to_pbx_leg: addr("pbx")?,
            to_endpoint_leg: addr("endpoint")?,
        })
    }

    fn release(&mut self, legs: &[CallLegs]) {
        for l in legs {
            let _ = self.request("DELETE", &format!("/v1/sessions/{}", l.id), None);
        }
    }

    fn describe(&self) -> String {
        format!("external relay, admin API http://{}", self.addr)
    }
}

/// The session request for one call: both sides' addresses as hints (what
/// the SDP offer and answer say, so media flows both ways from the first
/// packet), the authentication keys of both directions when known (SDES;
/// not with DTLS, whose keys exist only after the handshake), the latching
/// policy.
pub fn call_request(
    pbx: SocketAddr,
    endpoint: SocketAddr,
    keys: Option<(SrtpAuthKeys, SrtpAuthKeys)>,
    latch: &str,
) -> SessionRequest {
    let mut r = match keys {
        Some((pbx_sends, endpoint_sends)) => SessionRequest::default().with_srtp_auth(pbx_sends, endpoint_sends),
        None => SessionRequest::default(),
    };
    r.pbx.hint = Some(pbx.to_string());
    r.endpoint.hint = Some(endpoint.to_string());
    r.latch = Some(latch.to_string());
    r.idle_timeout_secs = Some(300);
    r
}

/// An external relay driven through a connector's control channel (as a
/// PBX would), with a tokio runtime of its own.
pub struct ViaConnector {
    runtime: tokio::runtime::Runtime,
    connector: Option<relay_core::connector::Connector>,
    relay: String,
}

impl ViaConnector {
    /// Connects and authenticates (waits up to 10 s).
    pub fn connect(config: relay_core::connector::ConnectorConfig) -> Result<Self, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("lt-connector")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let relay = config.relay.clone();
        let connector = runtime.block_on(async {
            let c = relay_core::connector::Connector::start(config).map_err(|e| e.to_string())?;
            let h = c.handle();
            if let Err(e) = h.wait_connected(1, Duration::from_secs(10)).await {
                let why = h.status().last_error.unwrap_or_default();
                c.stop().await;
                return Err(format!("connector: {e} ({why})"));
            }
            Ok(c)
        })?;
        Ok(Self { runtime, connector: Some(connector), relay })
    }

    fn handle(&self) -> Result<relay_core::connector::ConnectorHandle, String> {
        self.connector.as_ref().map(|c| c.handle()).ok_or_else(|| "connector stopped".to_string())
    }
}

impl Drop for ViaConnector {
    fn drop(&mut self) {
        if let Some(c) = self.connector.take() {
            self.runtime.block_on(c.stop());
        }
    }
}

impl Target for ViaConnector {
    fn allocate(&mut self, request: &SessionRequest) -> Result<CallLegs, String> {
        let h = self.handle()?;
        let a = self.runtime.block_on(h.allocate(request.clone())).map_err(|e| e.to_string())?;
        let addr = |l: &relay_core::api::LegAddressReply| l.rtp_socket_addr().ok_or("bad address in reply".to_string());
        Ok(CallLegs { to_pbx_leg: addr(&a.pbx)?, to_endpoint_leg: addr(&a.endpoint)?, id: a.id })
    }

    fn release(&mut self, legs: &[CallLegs]) {
        if let Ok(h) = self.handle() {
            for l in legs {
                let _ = self.runtime.block_on(h.release(&l.id));
            }
        }
    }

    fn describe(&self) -> String {
        format!("external relay through a connector ({})", self.relay)
    }
}

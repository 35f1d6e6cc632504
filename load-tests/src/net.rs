//! Everything that touches the network: the loopback-only target policy, source addresses, the
//! WebSocket connect (with an explicit client source address), and a minimal HTTP/1.1 client for
//! the admin top-up, `/healthz` and `/metrics`.
//!
//! Only loopback targets are allowed (127.0.0.0/8 and ::1): the generator refuses anything else
//! before it opens a socket. Past ~28,000 connections one source address runs out of ephemeral
//! ports, so clients bind to 127.0.0.2, 127.0.0.3, ... before connecting; [`SourcePlan`] says
//! which address the n-th connection of a run uses.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

/// A client WebSocket over plain TCP.
pub(crate) type Ws = WebSocketStream<TcpStream>;

/// Microseconds since the Unix epoch. Every process of a run is on one machine, so wall-clock
/// stamps taken in different worker processes are comparable.
pub(crate) fn wall_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Resolves `target` (`HOST:PORT`) and refuses anything that is not loopback.
pub(crate) async fn resolve_loopback(target: &str) -> Result<SocketAddr> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(target)
        .await
        .with_context(|| format!("resolving {target}"))?
        .collect();
    if addrs.is_empty() {
        bail!("{target} resolves to no address");
    }
    if let Some(bad) = addrs.iter().find(|a| !a.ip().is_loopback()) {
        bail!(
            "refusing target {target}: {} is not a loopback address (only 127.0.0.0/8 and ::1 are allowed)",
            bad.ip()
        );
    }
    Ok(addrs[0])
}

/// Which client source address each connection of a run binds to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SourcePlan {
    /// Empty: let the kernel choose (used for IPv6 targets).
    pub(crate) ips: Vec<IpAddr>,
    pub(crate) per_ip_max: usize,
}

impl SourcePlan {
    /// Enough 127.0.0.x addresses for `connections`, starting at 127.0.0.`first_octet`.
    pub(crate) fn for_target(
        target: SocketAddr,
        connections: usize,
        per_ip_max: usize,
        first_octet: u8,
    ) -> SourcePlan {
        if !target.is_ipv4() {
            return SourcePlan {
                ips: Vec::new(),
                per_ip_max,
            };
        }
        let per_ip_max = per_ip_max.max(1);
        let needed = connections.div_ceil(per_ip_max).max(1);
        let ips = (0..needed)
            .map(|i| {
                // Cycle within 127.0.0.2..=127.0.0.254 (never .0, .1 or .255).
                let octet = 2 + (first_octet as usize - 2 + i) % 253;
                IpAddr::V4(Ipv4Addr::new(127, 0, 0, octet as u8))
            })
            .collect();
        SourcePlan { ips, per_ip_max }
    }

    /// The source address of the run's `index`-th connection.
    pub(crate) fn source(&self, index: usize) -> Option<IpAddr> {
        if self.ips.is_empty() {
            return None;
        }
        Some(self.ips[(index / self.per_ip_max) % self.ips.len()])
    }
}

/// WebSocket settings for clients: small read buffers, because a run holds thousands of them.
fn client_ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20))
}

/// Opens `ws://target/ws` from `source` with a bearer token.
pub(crate) async fn connect_ws(
    target: SocketAddr,
    source: Option<IpAddr>,
    token: &str,
) -> Result<Ws> {
    let socket = if target.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("binding source address {ip}"))?;
    }
    let stream = socket.connect(target).await.context("tcp connect")?;
    stream.set_nodelay(true)?;
    let mut request = format!("ws://{target}/ws").into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(client_ws_config()))
            .await
            .context("websocket handshake")?;
    Ok(ws)
}

/// One HTTP/1.1 response: status and body.
pub(crate) struct HttpResponse {
    pub(crate) status: u16,
    pub(crate) body: String,
}

/// Sends one request with `Connection: close` and reads the whole response.
pub(crate) async fn http(
    target: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&str>,
) -> Result<HttpResponse> {
    let fut = async {
        let mut stream = TcpStream::connect(target).await?;
        let mut req =
            format!("{method} {path} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n");
        if let Some(token) = bearer {
            req.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        if let Some(b) = body {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        req.push_str("\r\n");
        if let Some(b) = body {
            req.push_str(b);
        }
        stream.write_all(req.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        parse_response(&raw)
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| anyhow!("{method} {path}: timed out"))?
}

fn parse_response(raw: &[u8]) -> Result<HttpResponse> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("malformed HTTP response"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("malformed HTTP status line"))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok(HttpResponse { status, body })
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    // Bounded: each round consumes at least the size line.
    while let Some((size_line, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size_line.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// Credits `user` with `coins` web coins through the admin API.
pub(crate) async fn top_up(
    target: SocketAddr,
    admin_token: &str,
    user: &str,
    coins: u64,
    purchase_id: &str,
) -> Result<()> {
    let body = serde_json::json!({
        "user": user, "channel": "web", "coins": coins, "purchase_id": purchase_id
    })
    .to_string();
    let res = http(
        target,
        "POST",
        "/admin/topup",
        Some(admin_token),
        Some(&body),
    )
    .await?;
    if res.status != 200 {
        bail!("top-up of {user} failed: HTTP {} {}", res.status, res.body);
    }
    Ok(())
}

/// Waits until `path` (`/healthz` or `/readyz`) answers 200, for at most `timeout`.
pub(crate) async fn wait_healthy(target: SocketAddr, path: &str, timeout: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Ok(r) = http(target, "GET", path, None, None).await {
            if r.status == 200 {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("giftd at {target}: {path} not 200 after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_non_loopback() {
        assert!(resolve_loopback("127.0.0.1:8080").await.is_ok());
        assert!(resolve_loopback("[::1]:8080").await.is_ok());
        assert!(resolve_loopback("10.0.0.1:8080").await.is_err());
        assert!(resolve_loopback("192.168.1.2:80").await.is_err());
    }

    #[test]
    fn spreads_sources() {
        let plan = SourcePlan::for_target("127.0.0.1:1".parse().unwrap(), 25_000, 10_000, 2);
        assert_eq!(plan.ips.len(), 3);
        assert_eq!(plan.source(0), Some("127.0.0.2".parse().unwrap()));
        assert_eq!(plan.source(10_000), Some("127.0.0.3".parse().unwrap()));
        assert_eq!(plan.source(24_999), Some("127.0.0.4".parse().unwrap()));
        let wrapped = SourcePlan::for_target("127.0.0.1:1".parse().unwrap(), 10, 10, 254);
        assert_eq!(wrapped.source(0), Some("127.0.0.254".parse().unwrap()));
    }

    #[test]
    fn parses_chunked() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "abcde"));
    }
}

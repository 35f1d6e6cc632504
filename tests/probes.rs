//! Operator endpoints on their own listener: however many sockets crowd the public port, health
//! checks, readiness, metrics and the admin API still answer (docs/PROTOCOL.md §11).

mod support;

use std::time::Duration;

use giftd::bounds::HTTP_HEADROOM_CONNECTIONS;
use support::TestServer;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

#[tokio::test]
async fn idle_sockets_filling_the_public_port_cannot_starve_the_probes() {
    let connections_max = 4;
    let server = TestServer::start_with(|c| {
        c.server.connections_max = connections_max;
        // Long enough that the idle sockets are still there while the probes run.
        c.server.handshake_timeout_ms = 30_000;
    })
    .await;
    let mut viewers = Vec::new();
    for i in 0..connections_max {
        viewers.push(server.viewer(&format!("v{i}")).await);
    }
    // More idle TCP sockets than the public listener's headroom: every slot is taken.
    let mut idle = Vec::new();
    for _ in 0..HTTP_HEADROOM_CONNECTIONS + 50 {
        idle.push(TcpStream::connect(server.addr).await.unwrap());
    }
    // The public port is full: a further connection is refused at once with 503.
    let mut late = TcpStream::connect(server.addr).await.unwrap();
    let mut refusal = String::new();
    tokio::time::timeout(Duration::from_secs(10), late.read_to_string(&mut refusal))
        .await
        .expect("refused at once")
        .unwrap();
    assert!(refusal.starts_with("HTTP/1.1 503"), "{refusal}");
    assert!(
        refusal.contains(r#""reason":"too_many_connections""#),
        "{refusal}"
    );

    // The operator endpoints, on the admin listener, all answer.
    assert_eq!(server.http("GET", "/healthz", None, None).await.0, 200);
    let (status, body) = server.http("GET", "/readyz", None, None).await;
    assert_eq!(status, 200, "{body}");
    assert!(server.metrics().await.contains("giftd_connections 4"));
    assert_eq!(server.wallet("v0").await["balance_coins"], 0);
    drop(idle);
}

#[tokio::test]
async fn operator_endpoints_are_served_only_on_the_admin_listener() {
    let server = TestServer::start().await;
    for path in ["/metrics", "/healthz", "/readyz", "/admin/wallets/bob"] {
        let (status, _) = support::http(server.addr, "GET", path, None, None).await;
        assert_eq!(status, 404, "{path} on the public listener");
    }
    let (status, _) = support::http(server.admin_addr, "GET", "/rooms", None, None).await;
    assert_eq!(status, 404, "/rooms on the admin listener");
    assert_eq!(server.http("GET", "/rooms", None, None).await.0, 200);
}

//! The floor's HTTP: the WebSocket upgrade on the viewers' listener, and the two admin routes the
//! generator calls (`GET /healthz` before a run, `POST /admin/topup` for its senders).
//!
//! The floor keeps no money, so a top-up is answered and forgotten: the floor measures the
//! cheapest fan-out, and a gift in it is only a numbered frame.

use anyhow::{bail, Context, Result};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// A request head larger than this is refused (giftd's own limit is of the same order).
const HEAD_BYTES_MAX: usize = 8 * 1024;
/// An admin body larger than this is refused.
const BODY_BYTES_MAX: usize = 4 * 1024;
const HEADERS_MAX: usize = 32;

struct Request {
    method: String,
    path: String,
    websocket_key: Option<String>,
    content_length: usize,
}

/// Reads one request head; returns it and the bytes already read past it.
async fn read_head(stream: &mut TcpStream) -> Result<(Request, BytesMut)> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if buf.len() >= HEAD_BYTES_MAX {
            bail!("request head over {HEAD_BYTES_MAX} bytes");
        }
        if stream.read_buf(&mut buf).await? == 0 {
            bail!("connection closed before the request head");
        }
        let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
        let mut req = httparse::Request::new(&mut headers);
        let httparse::Status::Complete(used) = req.parse(&buf)? else {
            continue;
        };
        let header = |name: &str| {
            req.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .and_then(|h| std::str::from_utf8(h.value).ok())
                .map(str::to_owned)
        };
        let head = Request {
            method: req.method.unwrap_or_default().to_owned(),
            path: req.path.unwrap_or_default().to_owned(),
            websocket_key: header("sec-websocket-key"),
            content_length: header("content-length")
                .map(|v| v.trim().parse())
                .transpose()
                .context("bad content-length")?
                .unwrap_or(0),
        };
        let rest = buf.split_off(used);
        return Ok((head, rest));
    }
}

/// Upgrades a viewer's connection at `/ws`; returns the bytes read past the request.
pub(crate) async fn upgrade(stream: &mut TcpStream) -> Result<BytesMut> {
    let (req, rest) = read_head(stream).await?;
    let key = match (req.method.as_str(), req.path.as_str(), req.websocket_key) {
        ("GET", "/ws", Some(key)) => key,
        _ => {
            respond(stream, "404 Not Found", "").await?;
            bail!("not a WebSocket upgrade at /ws");
        }
    };
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    stream.write_all(response.as_bytes()).await?;
    Ok(rest)
}

/// Serves one admin request (`Connection: close`, as the generator sends them).
pub(crate) async fn admin(mut stream: TcpStream) -> Result<()> {
    let (req, mut body) = read_head(&mut stream).await?;
    if req.content_length > BODY_BYTES_MAX {
        return respond(&mut stream, "413 Payload Too Large", "").await;
    }
    while body.len() < req.content_length {
        if stream.read_buf(&mut body).await? == 0 {
            bail!("connection closed inside the body");
        }
    }
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/healthz") => respond(&mut stream, "200 OK", "ok").await,
        ("POST", "/admin/topup") => respond(&mut stream, "200 OK", "{}").await,
        _ => respond(&mut stream, "404 Not Found", "").await,
    }
}

async fn respond(stream: &mut TcpStream, status: &str, body: &str) -> Result<()> {
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await?;
    Ok(())
}

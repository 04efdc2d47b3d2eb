//! The public HTTP port (callback, health, metrics) under clients that connect and stall:
//! headers must arrive in time, and only so many connections are served at once.

mod common;

use authgate::config::Config;
use authgate::server::StartOptions;
use common::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the server closes the connection; `None` if it is still open after `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<()> {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

async fn healthz(addr: std::net::SocketAddr, within: Duration) -> Result<String, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(within)
        .build()?
        .get(format!("http://{addr}/healthz"))
        .send()
        .await?
        .text()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_are_cut_off_and_connections_are_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = Config::parse(&config_text(tmp.path(), "")).unwrap();
    cfg.server.http_header_read_timeout_seconds = 1;
    cfg.server.max_http_connections = 2;
    let gw = Gateway::start_config(tmp.path(), cfg, StartOptions::default()).await;
    let addr = gw.http_addr();
    assert_eq!(healthz(addr, Duration::from_secs(5)).await.unwrap(), "ok\n");

    // Two clients take both connections and send half a request line, then nothing.
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        stalled.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A third is not served while they hold the port...
    assert!(
        healthz(addr, Duration::from_millis(400)).await.is_err(),
        "served beyond server.max_http_connections"
    );
    // ...and is once the header timeout has cut them off.
    for s in &mut stalled {
        assert!(
            closed_within(s, Duration::from_secs(5)).await.is_some(),
            "a stalled client kept its connection past http_header_read_timeout_seconds"
        );
    }
    assert_eq!(healthz(addr, Duration::from_secs(5)).await.unwrap(), "ok\n");
}

//! `/metrics` (OpenMetrics when the scraper asks for it, as Prometheus does; the Prometheus text
//! format otherwise) and `/healthz` over HTTP/1.1.
//!
//! Counters are read from the pinned maps at scrape time through [`crate::status::collect`]
//! (the same reader and `state.json` join `swarmlb status` uses), so a scrape shows what the
//! datapath counted, named as the last applied plan names it. Reading runs on the blocking pool;
//! counting the connection table costs one syscall per entry.

mod render;
mod sync;

use std::{convert::Infallible, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Bytes, header, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::status::Report;
use tracing::{debug, info, warn};

pub use render::{CONTENT_TYPE, Snapshot, TEXT_CONTENT_TYPE, health, render, to_text_format};
pub use sync::{SyncState, SyncStatus};

struct Ctx {
    pin_dir: PathBuf,
    state_dir: PathBuf,
    sync: Arc<SyncStatus>,
}

/// Serves `/metrics` and `/healthz` on `addr` until the task is dropped or the listener fails
/// to bind. Per-connection errors are logged and do not end the server.
pub async fn serve(addr: SocketAddr, pin_dir: PathBuf, state_dir: PathBuf, sync: Arc<SyncStatus>) -> Result<()> {
    let listener = TcpListener::bind(addr).await.with_context(|| format!("binding the metrics listener on {addr}"))?;
    info!("metrics on http://{addr}/metrics, health on http://{addr}/healthz");
    let ctx = Arc::new(Ctx { pin_dir, state_dir, sync });
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off rather than spin.
                warn!("metrics: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let ctx = ctx.clone();
                async move { Ok::<_, Infallible>(respond(&ctx, req).await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                debug!("metrics: connection from {peer}: {e}");
            }
        });
    }
}

async fn respond(ctx: &Ctx, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n".into());
    }
    match req.uri().path() {
        "/metrics" => {
            // Prometheus asks for OpenMetrics; anything else (curl, promtool) gets the text format.
            let openmetrics = req
                .headers()
                .get_all(header::ACCEPT)
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| v.contains("application/openmetrics-text")));
            let report = read_report(ctx).await;
            let page = render(&Snapshot { report: report.ok(), sync: ctx.sync.snapshot() });
            if openmetrics {
                reply(StatusCode::OK, CONTENT_TYPE, page)
            } else {
                reply(StatusCode::OK, TEXT_CONTENT_TYPE, to_text_format(&page))
            }
        }
        "/healthz" => {
            let report = read_report(ctx).await;
            let (code, body) = health(report.as_ref().map_err(String::as_str));
            reply(StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE), "text/plain", body)
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "try /metrics or /healthz\n".into()),
    }
}

/// `swarmlb status`'s report, read on the blocking pool.
async fn read_report(ctx: &Ctx) -> Result<Report, String> {
    let (pin_dir, state_dir) = (ctx.pin_dir.clone(), ctx.state_dir.clone());
    match tokio::task::spawn_blocking(move || crate::status::collect(&pin_dir, &state_dir)).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => {
            debug!("metrics: reading the datapath: {e:#}");
            Err(format!("{e:#}"))
        }
        Err(e) => {
            warn!("metrics: reader task failed: {e}");
            Err(e.to_string())
        }
    }
}

fn reply(code: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    r
}

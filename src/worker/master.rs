//! The worker's side of the registry: register through the master (the
//! balancer or a replica), heartbeat at the interval it announces, register
//! again when it no longer knows us, and say "offline" when stopping.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpStream;

use super::jobs::Jobs;
use super::sys::{CpuMeter, memory_percent};
use crate::shutdown::Shutdown;

const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// One JSON POST to the master on a fresh connection.
async fn post(
    master: &hyper::Uri,
    path: &str,
    body: &Value,
) -> Result<(StatusCode, Value), String> {
    let authority = master
        .authority()
        .ok_or("no host in the master URL")?
        .clone();
    let base = master.path().trim_end_matches('/');
    let call = async {
        let stream = TcpStream::connect(authority.as_str())
            .await
            .map_err(|e| format!("connect to {authority}: {e}"))?;
        let (mut sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = Request::post(format!("{base}{path}"))
            .header(hyper::header::HOST, authority.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let bytes = http_body_util::Limited::new(resp.into_body(), 1 << 20)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    };
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .map_err(|_| format!("{authority} did not answer within {CALL_TIMEOUT:?}"))?
}

/// Registers (retrying with back-off); returns the id and the interval.
async fn register(jobs: &Jobs, shutdown: &Shutdown) -> Option<(i64, Duration)> {
    let c = &jobs.config;
    let body = json!({
        "name": c.name,
        "host": c.advertise_host,
        "port": c.listen.port(),
        "serviceType": c.service_type,
        "weight": c.weight,
        "maxConnections": c.concurrency,
    });
    let mut backoff = Duration::from_millis(250);
    let mut warned = false;
    loop {
        match post(&c.master, "/api/v1/worker/register", &body).await {
            Ok((StatusCode::OK, v)) => {
                let id = v["data"]["workerId"].as_i64();
                let every = v["data"]["heartbeatInterval"].as_u64().unwrap_or(30_000);
                if let Some(id) = id {
                    jobs.worker_id.store(id, Relaxed);
                    tracing::info!(worker_id = id, master = %c.master, "registered");
                    return Some((id, Duration::from_millis(every.clamp(100, 3_600_000))));
                }
                tracing::warn!(answer = %v, "registration answer without a workerId");
            }
            Ok((status, v)) if status.is_client_error() => {
                // Our own configuration is wrong: say so, keep trying slowly.
                tracing::error!(%status, answer = %v, "the master refused the registration");
                backoff = Duration::from_secs(30);
            }
            Ok((status, _)) => {
                if !warned {
                    tracing::warn!(%status, "master not ready; retrying");
                    warned = true;
                }
            }
            Err(e) => {
                if !warned {
                    tracing::warn!(error = %e, "cannot reach the master yet; retrying");
                    warned = true;
                }
            }
        }
        tokio::select! {
            () = shutdown.wait() => return None,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Registers, then heartbeats until `shutdown`. Returns the worker id.
pub async fn keep_registered(jobs: Arc<Jobs>, shutdown: Shutdown) -> Option<i64> {
    let (mut id, mut every) = register(&jobs, &shutdown).await?;
    let mut cpu = CpuMeter::new();
    loop {
        tokio::select! {
            () = shutdown.wait() => return Some(id),
            () = tokio::time::sleep(every) => {}
        }
        let body = json!({
            "workerId": id,
            "status": "online",
            "currentConnections": jobs.queue_length(),
            "queueLength": jobs.queue_length(),
            "cpuUsage": cpu.sample(),
            "memoryUsage": memory_percent(),
        });
        match post(&jobs.config.master, "/api/v1/worker/heartbeat", &body).await {
            Ok((StatusCode::OK, _)) => tracing::debug!(worker_id = id, "heartbeat"),
            Ok((StatusCode::NOT_FOUND, _)) => {
                tracing::warn!(
                    worker_id = id,
                    "the master no longer knows this worker; registering again"
                );
                (id, every) = register(&jobs, &shutdown).await?;
            }
            Ok((status, v)) => tracing::warn!(%status, answer = %v, "heartbeat refused"),
            Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
        }
    }
}

/// Tells the master this worker is gone (best effort, on shutdown).
pub async fn report_offline(jobs: &Jobs, id: i64) {
    let body =
        json!({ "workerId": id, "status": "offline", "currentConnections": 0, "queueLength": 0 });
    match post(&jobs.config.master, "/api/v1/worker/heartbeat", &body).await {
        Ok((StatusCode::OK, _)) => tracing::info!(worker_id = id, "reported offline"),
        Ok((status, _)) => tracing::warn!(%status, "could not report offline"),
        Err(e) => tracing::warn!(error = %e, "could not report offline"),
    }
}

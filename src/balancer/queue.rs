//! least-queue's poller: every `QUEUE_POLL_MS`, `GET QUEUE_PATH` on every
//! backend that is up, concurrently, and record its queue length in the
//! backend's load (the strategy adds the requests sent since). It
//! understands ComfyUI's `{"queue_running":[...],"queue_pending":[...]}`
//! (the length of both) and a plain `{"queue": N}`; a failed or unreadable
//! answer takes the backend out of least-queue's rotation until the next
//! good one. A change of the best backend is one log line (each poll's
//! figures at debug).

use std::sync::Arc;

use tokio::task::JoinSet;

use crate::health::probe;
use crate::proxy::Proxy;
use crate::shutdown::Shutdown;

/// Largest queue answer read.
const MAX_ANSWER: usize = 1024 * 1024;

pub async fn run(proxy: Arc<Proxy>, shutdown: Shutdown) {
    let every = proxy.config.strategy.queue_poll;
    let mut best: Option<String> = None;
    loop {
        poll_all(&proxy).await;
        let now = best_backend(&proxy);
        if now != best {
            match &now {
                Some(name) => tracing::info!(backend = %name, "least-queue: best backend changed"),
                None => tracing::warn!("least-queue: no backend answers its queue endpoint"),
            }
            best = now;
        }
        tokio::select! {
            () = shutdown.wait() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

async fn poll_all(proxy: &Proxy) {
    let snapshot = proxy.backends.load();
    let path = &proxy.config.strategy.queue_path;
    let timeout = proxy.config.health.timeout.min(
        proxy
            .config
            .strategy
            .queue_poll
            .max(std::time::Duration::from_millis(100)),
    );
    let mut polls = JoinSet::new();
    for backend in snapshot
        .backends
        .iter()
        .filter(|b| b.health.is_up())
        .cloned()
    {
        let path = path.clone();
        polls.spawn(async move {
            let answer =
                probe::fetch(backend.addr(), backend.name(), &path, timeout, MAX_ANSWER).await;
            let queue = match answer {
                Ok((status, body)) if status.is_success() => parse(&body),
                Ok((status, _)) => Err(format!("answered {status}")),
                Err(e) => Err(e),
            };
            match &queue {
                Ok(n) => tracing::debug!(backend = %backend.name(), queue = n, "queue polled"),
                Err(e) => {
                    tracing::debug!(backend = %backend.name(), error = %e, "queue poll failed")
                }
            }
            backend.load.set_queue(queue.ok());
        });
    }
    drop(snapshot);
    while polls.join_next().await.is_some() {}
}

/// The backend least-queue would pick now (for the change log).
fn best_backend(proxy: &Proxy) -> Option<String> {
    let snapshot = proxy.backends.load();
    snapshot
        .backends
        .iter()
        .filter(|b| proxy.available(b))
        .filter_map(|b| b.load.queue_score().map(|s| (s, b.name().to_owned())))
        .min()
        .map(|(_, name)| name)
}

/// A queue length from a queue endpoint's JSON.
fn parse(body: &[u8]) -> Result<u64, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    if let Some(n) = v.get("queue").and_then(serde_json::Value::as_u64) {
        return Ok(n);
    }
    let len = |key: &str| {
        v.get(key)
            .and_then(serde_json::Value::as_array)
            .map(Vec::len)
    };
    match (len("queue_running"), len("queue_pending")) {
        (None, None) => Err("neither queue nor queue_running/queue_pending".to_owned()),
        (r, p) => Ok((r.unwrap_or(0) + p.unwrap_or(0)) as u64),
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn comfyui_and_plain_queues_parse_and_nonsense_does_not() {
        assert_eq!(
            parse(br#"{"queue_running":[[1,"a"]],"queue_pending":[[2,"b"],[3,"c"]]}"#),
            Ok(3)
        );
        assert_eq!(parse(br#"{"queue_running":[]}"#), Ok(0));
        assert_eq!(parse(br#"{"queue": 7}"#), Ok(7));
        for bad in [
            &b"nope"[..],
            b"{}",
            br#"{"queue":-1}"#,
            br#"{"queue":"3"}"#,
            b"[]",
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}

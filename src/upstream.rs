//! Keep-alive connections to one backend.
//!
//! Each backend owns a [`ConnPool`] of idle HTTP/1.1 connections. A request
//! checks one out (or opens a new one), and the response body hands it back
//! when the backend has sent the whole response. Owning the pool, rather than
//! using hyper-util's generic client, is what lets the proxy tell "nothing
//! reached the backend" (connect failed, or hyper hands the request back
//! unsent) from "the backend failed mid-request", which decides whether a
//! request may be retried elsewhere.
//!
//! Each connection worker thread has its own idle list (see
//! [`crate::workers`]): a connection is driven by a task on the thread that
//! opened it, so handing it to a request on another thread would turn every
//! exchange into cross-thread wake-ups. Each list sits behind a `std` mutex
//! held only to push or pop, never across an await, and in practice only
//! ever taken by its own thread.

use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::workers;

/// The body sent upstream: the client's own stream, or nothing (a retried
/// bodiless request, a health probe).
pub type UpstreamBody = Either<Incoming, Empty<Bytes>>;

/// A connection's request handle.
pub type Sender = http1::SendRequest<UpstreamBody>;

/// One thread's idle connections, newest last, with the time each was put back.
type IdleList = Mutex<Vec<(Sender, Instant)>>;

/// Idle keep-alive connections to one backend.
#[derive(Debug)]
pub struct ConnPool {
    addr: SocketAddr,
    /// One idle list per worker slot ([`crate::workers::slot`]).
    idle: Box<[IdleList]>,
    max_idle: usize,
    idle_timeout: Duration,
    connect_timeout: Duration,
}

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {0} timed out")]
    Timeout(SocketAddr),
    #[error("connect to {0}: {1}")]
    Io(SocketAddr, io::Error),
    #[error("handshake with {0}: {1}")]
    Handshake(SocketAddr, hyper::Error),
}

impl ConnPool {
    pub fn new(
        addr: SocketAddr,
        max_idle: usize,
        idle_timeout: Duration,
        connect_timeout: Duration,
    ) -> Self {
        ConnPool {
            addr,
            idle: (0..workers::slots()).map(|_| Mutex::default()).collect(),
            max_idle,
            idle_timeout,
            connect_timeout,
        }
    }

    /// The calling thread's idle list.
    fn own(&self) -> &IdleList {
        &self.idle[workers::slot() % self.idle.len()]
    }

    /// An idle connection ready for a request, if the pool holds one.
    /// Connections the backend closed, or idle too long, are dropped on the way.
    pub async fn checkout(&self) -> Option<Sender> {
        loop {
            let (mut sender, since) = {
                let mut idle = self.own().lock().unwrap_or_else(|p| p.into_inner());
                idle.pop()?
            };
            if sender.is_closed() || since.elapsed() > self.idle_timeout {
                continue;
            }
            // A connection put back as its response ended may still be
            // finishing that exchange in its task: wait for it, briefly.
            if sender.is_ready() || sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    /// Puts a connection back for reuse, unless the pool is full or it closed.
    pub fn checkin(&self, sender: Sender) {
        if sender.is_closed() || self.max_idle == 0 {
            return;
        }
        let now = Instant::now();
        let mut idle = self.own().lock().unwrap_or_else(|p| p.into_inner());
        // Checkout takes the newest (LIFO keeps few connections warm), so
        // the oldest sit at the front: drop one that outlived the idle
        // timeout on each check-in, so a burst's surplus drains away.
        if idle
            .first()
            .is_some_and(|(_, since)| now.duration_since(*since) > self.idle_timeout)
        {
            idle.remove(0);
        }
        if idle.len() < self.max_idle {
            idle.push((sender, now));
        }
    }

    /// Opens a new connection. `upgrades` keeps the socket usable after a
    /// `101 Switching Protocols` (such a connection is never pooled).
    pub async fn connect(&self) -> Result<Sender, ConnectError> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(self.addr))
            .await
            .map_err(|_| ConnectError::Timeout(self.addr))?
            .map_err(|e| ConnectError::Io(self.addr, e))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ConnectError::Handshake(self.addr, e))?;
        let addr = self.addr;
        // Driven on the calling thread's runtime: the worker whose idle
        // list this connection will go back to.
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(backend = %addr, error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// Idle connections held now, over all threads (for the status page
    /// and tests).
    pub fn idle_count(&self) -> usize {
        self.idle
            .iter()
            .map(|l| l.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    /// Drops every idle connection (the backend went down or left the set).
    pub fn clear(&self) {
        for list in &self.idle {
            list.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
    }
}

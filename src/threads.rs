//! Per-core connection workers: one single-threaded tokio runtime per OS
//! thread, each owning the client connections it was handed and the upstream
//! connections it opened.
//!
//! This is the event-loop-per-thread layout of HAProxy's `nbthread` and
//! nginx's workers, and it is why the balancer does not use tokio's
//! work-stealing runtime for its connections: there, a request's client task
//! and the task driving its upstream connection may sit on different cores,
//! and every hand-off between them is a cross-core wake-up (a futex call and
//! cache-line traffic). Profiles showed that cost per request. Here a
//! connection, every request on it, and the pooled upstream connections
//! those requests use all stay on one thread; nothing on the request path
//! crosses threads.
//!
//! The control plane (accept loop, discovery, health checks, signals) runs
//! on the main thread's own runtime. The accept loop hands each accepted
//! socket to the next worker, round-robin ([`Workers::spawn_conn`]): the
//! socket is moved to that worker's reactor and its task spawned there.
//! [`upstream::ConnPool`](crate::upstream::ConnPool) keeps one idle list per
//! worker ([`slot`], [`slots`]) so a request only ever checks out a
//! connection its own thread drives.
//!
//! Installed once per process by [`crate::server::main_with`] for binaries
//! that ask for it; without it (tests, the API instances) connections are
//! spawned on the current runtime.

use std::cell::Cell;
use std::future::Future;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

static INSTALLED: OnceLock<Workers> = OnceLock::new();

thread_local! {
    /// 0 on every thread that is not a worker; worker `i` has slot `i + 1`.
    static SLOT: Cell<usize> = const { Cell::new(0) };
}

/// The per-thread slot of the calling thread (0 outside the workers).
pub fn slot() -> usize {
    SLOT.with(Cell::get)
}

/// How many slots a per-thread structure needs: the installed workers plus
/// slot 0 for every other thread.
pub fn slots() -> usize {
    INSTALLED.get().map_or(1, |w| w.handles.len() + 1)
}

/// The installed workers, if this process runs with them.
pub fn installed() -> Option<&'static Workers> {
    INSTALLED.get()
}

/// The worker runtimes' handles and the round-robin cursor.
pub struct Workers {
    handles: Box<[Handle]>,
    next: AtomicUsize,
}

/// Stops the worker threads when dropped: each runtime is shut down (its
/// remaining tasks dropped) and its thread joined.
pub struct Running {
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stops.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Workers {
    /// Starts `n` worker threads (0 = one per core), named
    /// `{name}-worker-{i}`, and installs them for this process. Fails when
    /// they were already installed or a runtime cannot be built.
    pub fn install(n: usize, name: &str) -> std::io::Result<Running> {
        let n = match n {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        let mut handles = Vec::with_capacity(n);
        let mut running = Running {
            stops: Vec::with_capacity(n),
            threads: Vec::with_capacity(n),
        };
        for i in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(rt.handle().clone());
            let (stop, stopped) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("{name}-worker-{i}"))
                .spawn(move || {
                    SLOT.with(|s| s.set(i + 1));
                    // Returns when `Running` drops the sender.
                    let _ = rt.block_on(stopped);
                })?;
            running.stops.push(stop);
            running.threads.push(thread);
        }
        INSTALLED
            .set(Workers {
                handles: handles.into_boxed_slice(),
                next: AtomicUsize::new(0),
            })
            .map_err(|_| std::io::Error::other("connection workers already installed"))?;
        Ok(running)
    }

    /// Serves `stream` on the next worker, round-robin: the socket is
    /// registered with that worker's reactor and `serve(stream)` runs there
    /// as a task of its own (no wrapper around it: its size is what every
    /// connection costs).
    pub fn spawn_conn<F>(&self, stream: TcpStream, serve: impl FnOnce(TcpStream) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        // Moving a socket between reactors: deregister here, register there.
        match stream.into_std() {
            Ok(stream) => self.spawn_std(stream, serve),
            Err(e) => tracing::warn!(error = %e, "cannot hand a connection to a worker"),
        }
    }

    /// [`Workers::spawn_conn`] for a socket no reactor holds.
    pub fn spawn_std<F>(&self, stream: std::net::TcpStream, serve: impl FnOnce(TcpStream) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let i = self.next.fetch_add(1, Relaxed) % self.handles.len();
        let handle = &self.handles[i];
        let _worker = handle.enter();
        match TcpStream::from_std(stream) {
            Ok(stream) => {
                handle.spawn(serve(stream));
            }
            Err(e) => tracing::warn!(error = %e, "cannot hand a connection to a worker"),
        }
    }
}

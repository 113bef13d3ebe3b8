//! The response body of a dispatched request: the worker's body streamed
//! to the client, counted, with the usage row written before the last
//! bytes go out (see [`super::meter`] for why) and the worker's connection
//! returned to its pool once the worker has sent everything. A worker that
//! stalls mid-body for `DISPATCH_TIMEOUT_SECS` is cut off (the client's
//! connection then ends early, the only way left to say so).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::oneshot;

use super::conn::{BoxError, Sender};
use super::meter::Meter;
use super::pool::WorkerState;
use crate::store::usage::UsageRow;

/// Counts a request in flight on a worker until dropped.
pub struct InFlight(pub Arc<WorkerState>);

impl InFlight {
    pub fn new(state: Arc<WorkerState>) -> InFlight {
        state.load.enter();
        InFlight(state)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.load.leave();
    }
}

/// What the usage row needs once the response ends.
pub struct Finish {
    pub meter: Arc<Meter>,
    pub row: UsageRow,
    pub started: Instant,
    /// The answer broke off (counts as a failure for the worker).
    pub failed: bool,
}

impl Finish {
    /// Completes and records the row; returns the wait for its commit.
    fn record(
        mut self,
        response_bytes: u64,
    ) -> (Option<oneshot::Receiver<()>>, std::time::Duration) {
        let meter = self.meter.clone();
        self.row.response_bytes = i64::try_from(response_bytes).unwrap_or(i64::MAX);
        self.row.ended_at = crate::store::now_ms();
        self.row.duration_ms =
            i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX);
        if let Some(worker_id) = self.row.worker_id {
            let ok = self.row.status < 500 && !self.failed;
            meter.worker_try(worker_id, ok, self.started.elapsed());
        }
        meter.record(self.row).into_parts()
    }
}

enum State {
    Streaming,
    /// The worker's body ended; its last frame waits for the row's commit.
    Syncing {
        last: Option<Frame<Bytes>>,
        rx: oneshot::Receiver<()>,
        sleep: Pin<Box<tokio::time::Sleep>>,
    },
    /// The last frame, released.
    Release(Option<Frame<Bytes>>),
    Done,
}

pub struct MeteredBody {
    inner: Incoming,
    idle: std::time::Duration,
    stall: Pin<Box<tokio::time::Sleep>>,
    sender: Option<Sender>,
    _in_flight: InFlight,
    bytes: u64,
    finish: Option<Finish>,
    state: State,
}

impl MeteredBody {
    pub fn new(
        inner: Incoming,
        sender: Sender,
        in_flight: InFlight,
        finish: Finish,
        idle: std::time::Duration,
    ) -> Self {
        MeteredBody {
            inner,
            idle,
            stall: Box::pin(tokio::time::sleep(idle)),
            sender: Some(sender),
            _in_flight: in_flight,
            bytes: 0,
            finish: Some(finish),
            state: State::Streaming,
        }
    }

    /// The worker's body broke off: the connection is not reused; the row
    /// keeps the status the client got, costs nothing (the answer is cut)
    /// and counts as a failed try in the worker's statistics.
    fn fail(&mut self) {
        self.sender = None;
        if let Some(mut finish) = self.finish.take() {
            finish.row.cost = 0;
            finish.failed = true;
            let _ = finish.record(self.bytes);
        }
        self.state = State::Done;
    }

    /// The worker sent everything: pool the connection, record the row.
    fn complete(&mut self, last: Option<Frame<Bytes>>) {
        if let Some(sender) = self.sender.take() {
            self._in_flight.0.conns.put(sender);
        }
        let Some(finish) = self.finish.take() else {
            self.state = State::Release(last);
            return;
        };
        match finish.record(self.bytes) {
            (Some(rx), limit) => {
                self.state = State::Syncing {
                    last,
                    rx,
                    sleep: Box::pin(tokio::time::sleep(limit)),
                };
            }
            (None, _) => self.state = State::Release(last),
        }
    }
}

impl Body for MeteredBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::Streaming => match Pin::new(&mut this.inner).poll_frame(cx) {
                    Poll::Pending => {
                        if this.stall.as_mut().poll(cx).is_pending() {
                            return Poll::Pending;
                        }
                        tracing::warn!(idle = ?this.idle, "worker stalled mid-answer; cutting it off");
                        this.fail();
                        return Poll::Ready(Some(Err("worker stalled mid-answer".into())));
                    }
                    Poll::Ready(Some(Ok(frame))) => {
                        let next = tokio::time::Instant::now() + this.idle;
                        this.stall.as_mut().reset(next);
                        if let Some(d) = frame.data_ref() {
                            this.bytes += d.len() as u64;
                        }
                        if this.inner.is_end_stream() {
                            this.complete(Some(frame));
                            continue;
                        }
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    Poll::Ready(None) => {
                        this.complete(None);
                        continue;
                    }
                    Poll::Ready(Some(Err(e))) => {
                        this.fail();
                        tracing::debug!(error = %e, "worker response body failed");
                        return Poll::Ready(Some(Err(Box::new(e))));
                    }
                },
                State::Syncing { last, rx, sleep } => {
                    let committed = Pin::new(rx).poll(cx).is_ready();
                    if !committed && sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    this.state = State::Release(last.take());
                }
                State::Release(last) => {
                    let last = last.take();
                    this.state = State::Done;
                    if let Some(frame) = last {
                        return Poll::Ready(Some(Ok(frame)));
                    }
                }
                State::Done => return Poll::Ready(None),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Streaming => self.inner.size_hint(),
            _ => SizeHint::default(),
        }
    }
}

impl Drop for MeteredBody {
    fn drop(&mut self) {
        // The client went away before the end: the row still counts what
        // was sent (the request reached a worker and may have run).
        if let Some(finish) = self.finish.take() {
            let _ = finish.record(self.bytes);
        }
    }
}

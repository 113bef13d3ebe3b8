//! The parking lot: where a fast-path keep-alive connection waits once it
//! has been idle for a quarter to half a second ([`IdleClock::may_park`]).
//!
//! A waiting connection normally costs a task (a few hundred bytes, cache
//! aligned) and tokio's per-socket readiness state (another 256). Parked, it
//! costs one entry here: the socket, registered in this lot's own epoll set
//! (one `mio::Poll`, waited on by a thread of its own), and what
//! [`Detached`] keeps of the connection: about 50 bytes together. When a parked
//! socket turns readable it leaves the lot, is registered with a worker's
//! reactor again and gets a new task, which serves the request waiting on
//! it. Only long-idle connections pay the moves (four `epoll_ctl` calls and
//! a task spawn), never a busy keep-alive client. This is how nginx keeps an
//! idle connection near half a kilobyte.
//!
//! The lot also closes parked connections whose idle timeout ran out, all
//! of them when the drain begins, and the longest idle when the accept loop
//! needs room for a new client ([`ParkingLot::shed_oldest`]). It knows nothing of how a connection is
//! served: whoever starts it passes the [`Resume`] that gives a woken
//! connection its task back.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use mio::{Events, Interest, Poll, Registry, Token};

use super::idle::IdleClock;
use crate::backend::{Backend, Pinned};
use crate::server::Detached;

/// What the lot does with a connection that turned readable: its socket
/// (registered with no reactor), its place in the drain and its pinned
/// backend. Runs on the lot's thread: it must only hand the work on.
pub type Resume = Box<dyn Fn(std::net::TcpStream, Detached, Pinned) + Send>;

/// One parked connection.
pub(super) struct Parked {
    stream: mio::net::TcpStream,
    /// The idle clock's tick when it went idle.
    since: u64,
    conn: Detached,
    /// The backend its last request went to (see [`Pinned`]).
    pinned: Option<Arc<Backend>>,
}

impl Parked {
    pub(super) fn new(
        stream: std::net::TcpStream,
        conn: Detached,
        pinned: Pinned,
        since: u64,
    ) -> Self {
        Parked {
            stream: mio::net::TcpStream::from_std(stream),
            since,
            conn,
            pinned: pinned.into_backend(),
        }
    }
}

/// Parked connections by token, with a free list of tokens.
#[derive(Default)]
struct Slots {
    entries: Vec<Option<Parked>>,
    free: Vec<usize>,
}

/// Events taken from the lot's epoll set per call.
const EVENTS: usize = 256;
/// The token of the lot's own waker (parked sockets count up from 0).
const WAKE: Token = Token(usize::MAX);

pub struct ParkingLot {
    /// Registers sockets from any thread; `None` when the lot could not be
    /// set up (then nothing parks).
    registry: Option<Registry>,
    /// Wakes the lot's thread for the drain.
    waker: Option<mio::Waker>,
    /// Taken by [`ParkingLot::start`].
    poll: Mutex<Option<Poll>>,
    slots: Mutex<Slots>,
    /// How many are parked, for the status page.
    count: Arc<AtomicUsize>,
}

impl std::fmt::Debug for ParkingLot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParkingLot")
            .field("parked", &self.len())
            .finish()
    }
}

impl ParkingLot {
    /// A lot that keeps `count` equal to the number of connections in it.
    pub fn new(count: Arc<AtomicUsize>) -> Self {
        let made = Poll::new().and_then(|poll| {
            let waker = mio::Waker::new(poll.registry(), WAKE)?;
            Ok((poll.registry().try_clone()?, waker, poll))
        });
        match made {
            Ok((registry, waker, poll)) => ParkingLot {
                registry: Some(registry),
                waker: Some(waker),
                poll: Mutex::new(Some(poll)),
                slots: Mutex::default(),
                count,
            },
            Err(e) => {
                tracing::warn!(error = %e, "no parking lot for idle connections: they keep their tasks");
                ParkingLot {
                    registry: None,
                    waker: None,
                    poll: Mutex::new(None),
                    slots: Mutex::default(),
                    count,
                }
            }
        }
    }

    /// Whether connections can park here.
    pub fn is_open(&self) -> bool {
        self.registry.is_some()
    }

    /// Connections parked now.
    pub fn len(&self) -> usize {
        let slots = self.slots();
        slots.entries.len() - slots.free.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn slots(&self) -> MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Parks a connection; gives it back when it cannot be registered.
    pub(super) fn park(&self, mut parked: Parked) -> Result<(), Parked> {
        let Some(registry) = &self.registry else {
            return Err(parked);
        };
        let mut slots = self.slots();
        let key = slots.free.pop().unwrap_or(slots.entries.len());
        // Registered under the lock: an event for it (a request that
        // arrived meanwhile fires at once) finds the entry in place.
        if let Err(e) = registry.register(&mut parked.stream, Token(key), Interest::READABLE) {
            tracing::debug!(error = %e, "cannot park a connection");
            if key < slots.entries.len() {
                slots.free.push(key);
            }
            return Err(parked);
        }
        if key == slots.entries.len() {
            slots.entries.push(Some(parked));
        } else {
            slots.entries[key] = Some(parked);
        }
        self.count.fetch_add(1, Relaxed);
        Ok(())
    }

    /// Closes the `n` connections parked longest (all of them if fewer
    /// are parked); returns how many it closed. Their places in the
    /// connection budget are free when this returns.
    pub fn shed_oldest(&self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        let mut slots = self.slots();
        let mut parked: Vec<(u64, usize)> = slots
            .entries
            .iter()
            .enumerate()
            .filter_map(|(key, e)| e.as_ref().map(|p| (p.since, key)))
            .collect();
        if parked.len() > n {
            parked.select_nth_unstable(n - 1);
            parked.truncate(n);
        }
        let closed = parked.len();
        for (_, key) in parked {
            drop(self.take(&mut slots, key));
        }
        closed
    }

    fn take(&self, slots: &mut Slots, key: usize) -> Option<Parked> {
        let mut parked = slots.entries.get_mut(key)?.take()?;
        slots.free.push(key);
        self.count.fetch_sub(1, Relaxed);
        if let Some(registry) = &self.registry {
            let _ = registry.deregister(&mut parked.stream);
        }
        Some(parked)
    }

    /// Starts the lot's thread, which until the drain (on `clock`) wakes
    /// parked connections that turned readable and hands them to `resume`,
    /// closes those whose idle timeout ran out, and every one of them when
    /// the drain begins. The thread ends with the drain or with the lot.
    pub fn start(lot: &Arc<ParkingLot>, clock: Arc<IdleClock>, resume: Resume) {
        let taken = lot.poll.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(poll) = taken else {
            return;
        };
        let weak = Arc::downgrade(lot);
        let started = std::thread::Builder::new()
            .name("balancer-parking".into())
            .spawn(move || watch(&weak, poll, &clock, &resume));
        if let Err(e) = started {
            tracing::warn!(error = %e, "cannot start the parking lot: idle connections keep their tasks");
        }
    }

    /// Wakes the lot's thread (the drain began).
    pub fn wake(&self) {
        if let Some(waker) = &self.waker {
            let _ = waker.wake();
        }
    }
}

/// The lot's thread. Returns at the drain, or once the lot is gone.
fn watch(lot: &Weak<ParkingLot>, mut poll: Poll, clock: &IdleClock, resume: &Resume) {
    let mut events = Events::with_capacity(EVENTS);
    let mut woken = Vec::new();
    let mut last_tick = 0;
    loop {
        let Some(lot) = lot.upgrade() else {
            return;
        };
        if clock.draining() {
            let mut slots = lot.slots();
            let n = slots.entries.iter().filter(|e| e.is_some()).count();
            slots.entries.clear();
            slots.free.clear();
            lot.count.fetch_sub(n, Relaxed);
            return;
        }
        if let Err(e) = poll.poll(&mut events, Some(clock.tick())) {
            if e.kind() != std::io::ErrorKind::Interrupted {
                tracing::warn!(error = %e, "parking lot poll failed: its connections close");
                return;
            }
        }
        {
            let mut slots = lot.slots();
            for event in events.iter().filter(|e| e.token() != WAKE) {
                woken.extend(lot.take(&mut slots, event.token().0));
            }
            let now = clock.now();
            if now != last_tick {
                last_tick = now;
                for key in 0..slots.entries.len() {
                    let expired = slots.entries[key]
                        .as_ref()
                        .is_some_and(|p| clock.expired(p.since));
                    if expired {
                        drop(lot.take(&mut slots, key));
                    }
                }
            }
        }
        for parked in woken.drain(..) {
            let Parked {
                stream,
                conn,
                pinned,
                ..
            } = parked;
            resume(
                std::net::TcpStream::from(stream),
                conn,
                Pinned::from_backend(pinned),
            );
        }
    }
}

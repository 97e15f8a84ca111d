//! Parked HTTP/1 connections: idle keep-alive connections whose hyper
//! state and buffers were dropped, waiting for their next request's first
//! byte. One lot per worker holds them all, in one task, in a vector of
//! slots watched by the lot's own poll (an epoll set, itself watched by
//! tokio): a parked cleartext connection is taken off tokio's driver,
//! whose state for a socket (256 bytes) it would otherwise keep, and costs
//! its slot alone. The lot closes connections idle past their limit on a
//! shared sweep, and all of them when the worker shuts down.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use mio::event::Source;
use mio::unix::SourceFd;
use mio::{Events, Poll, Registry, Token};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::client_io::{Clock, Watched};
use super::head_timer::Parking;
use super::{OpenConnection, Server, TlsStream};
use crate::metrics::{Counts, Open};

/// An HTTP/1 connection between hyper's connections: what lasts while it
/// is served, parked, and served again.
pub struct Http1<I> {
    pub io: Watched<I>,
    pub server: Arc<Server>,
    /// The client's address, and whether it is a trusted front proxy: a
    /// `Peer` is made from them each time the connection is served, so a
    /// parked one does not keep the peer's header value.
    pub peer: (SocketAddr, bool),
    /// What counts the connection as open.
    pub held: (Open, OpenConnection),
    /// Where it parks when idle.
    pub lot: Lot<I>,
    /// How soon it parks.
    pub parking: Parking,
}

/// Where one worker's HTTP/1 connections of one kind (cleartext or TLS)
/// park; it also holds their shutdown watch (so a parked connection does
/// not).
pub struct Lot<I>(Arc<(mpsc::UnboundedSender<Http1<I>>, watch::Receiver<bool>)>);

impl<I> Clone for Lot<I> {
    fn clone(&self) -> Lot<I> {
        Lot(self.0.clone())
    }
}

/// Serves a connection again once its next request's first byte came.
pub type Resume<I> = fn(Http1<I>);

/// A client's stream as it waits in a lot.
pub trait Parkable: AsyncRead + AsyncWrite + Unpin + Send + Sized + 'static {
    /// The stream while it waits, watched by the lot's poll.
    type Waiting: Source + Send + 'static;

    fn wait(self) -> io::Result<Self::Waiting>;

    /// Whether a stream the poll woke has bytes to serve: false when it
    /// woke for nothing, an error when the client closed or reset it.
    fn has_bytes(waiting: &Self::Waiting) -> io::Result<bool>;

    /// Back to tokio, to be served.
    fn serve(waiting: Self::Waiting) -> io::Result<Self>;
}

/// A cleartext stream waits as a bare socket: tokio's driver lets it go
/// (and frees its state for it) and takes it again when it is served.
impl Parkable for TcpStream {
    type Waiting = mio::net::TcpStream;

    fn wait(self) -> io::Result<mio::net::TcpStream> {
        self.into_std().map(mio::net::TcpStream::from_std)
    }

    fn has_bytes(waiting: &mio::net::TcpStream) -> io::Result<bool> {
        peeked(waiting.peek(&mut [0]))
    }

    fn serve(waiting: mio::net::TcpStream) -> io::Result<TcpStream> {
        TcpStream::from_std(waiting.into())
    }
}

/// A TLS stream cannot be taken apart without losing rustls's state, so it
/// stays registered with tokio too; the lot watches its socket.
impl Parkable for TlsStream {
    type Waiting = WaitingTls;

    fn wait(self) -> io::Result<WaitingTls> {
        Ok(WaitingTls(self))
    }

    fn has_bytes(waiting: &WaitingTls) -> io::Result<bool> {
        let mut byte = [std::mem::MaybeUninit::uninit()];
        peeked(socket2::SockRef::from(waiting.0.get_ref().0).peek(&mut byte))
    }

    fn serve(waiting: WaitingTls) -> io::Result<TlsStream> {
        Ok(waiting.0)
    }
}

/// A peek's answer: bytes came, none yet, or the client has closed.
fn peeked(peek: io::Result<usize>) -> io::Result<bool> {
    match peek {
        Ok(0) => Err(io::ErrorKind::UnexpectedEof.into()),
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(e),
    }
}

/// A parked TLS stream, its socket registered with the lot's poll.
pub struct WaitingTls(TlsStream);

impl Source for WaitingTls {
    fn register(&mut self, registry: &Registry, token: Token, interests: mio::Interest) -> io::Result<()> {
        SourceFd(&self.0.get_ref().0.as_raw_fd()).register(registry, token, interests)
    }

    fn reregister(&mut self, registry: &Registry, token: Token, interests: mio::Interest) -> io::Result<()> {
        SourceFd(&self.0.get_ref().0.as_raw_fd()).reregister(registry, token, interests)
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        SourceFd(&self.0.get_ref().0.as_raw_fd()).deregister(registry)
    }
}

impl<I: Parkable> Lot<I> {
    /// Starts the lot's task. A connection stays parked until `idle` after
    /// its last answer (less the time it took to park), and none once
    /// `closing` turns true. `counts`: the worker's, whose
    /// parked-connection gauge the lot keeps.
    pub fn start(
        idle: Duration,
        closing: watch::Receiver<bool>,
        counts: Arc<Counts>,
        resume: Resume<I>,
    ) -> io::Result<Lot<I>> {
        // `with_interest` is deprecated because a type could close its fd
        // while tokio watches it; the poll keeps its own until it is
        // dropped, after `AsyncFd` let it go.
        #[allow(deprecated)]
        let poll = AsyncFd::with_interest(Poll::new()?, tokio::io::Interest::READABLE)?;
        let (arrivals, arrived) = mpsc::unbounded_channel();
        let lot = Lot(Arc::new((arrivals, closing)));
        tokio::spawn(keep(arrived, lot.clone(), poll, counts, resume, idle));
        Ok(lot)
    }
}

impl<I> Lot<I> {
    /// Turns true when the worker shuts down.
    pub fn closing(&self) -> &watch::Receiver<bool> {
        &self.0 .1
    }

    /// Parks `conn`, or closes it if the worker is shutting down.
    pub fn park(conn: Http1<I>) {
        let lot = conn.lot.0.clone();
        // Refused once the lot has closed: the connection closes with it.
        let _ = lot.0.send(conn);
    }
}

/// How often the lot looks for connections past their limit: a connection
/// closes at most this much after it (1/16 of the idle time, 1 s at most).
fn sweep_every(idle: Duration) -> Duration {
    (idle / 16).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// Readiness events taken from the lot's poll at a time.
const EVENTS: usize = 256;

/// The lot's task: takes in parked connections, serves again those whose
/// client sends, closes those idle past their deadline or closed by their
/// client.
async fn keep<I: Parkable>(
    mut arrived: mpsc::UnboundedReceiver<Http1<I>>,
    lot: Lot<I>,
    mut poll: AsyncFd<Poll>,
    counts: Arc<Counts>,
    resume: Resume<I>,
    idle: Duration,
) {
    let every = sweep_every(idle);
    // Deadlines in milliseconds since the lot started (4 bytes, not 16).
    let base = Instant::now();
    let millis = |at: Instant| u32::try_from(at.duration_since(base).as_millis()).unwrap_or(u32::MAX);
    let mut parked = Slots::<I>::default();
    let mut events = Events::with_capacity(EVENTS);
    let mut closing = lot.closing().clone();
    let sweep = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(sweep);
    let mut sweeping = false;
    loop {
        tokio::select! {
            conn = arrived.recv() => {
                let Some(conn) = conn else { break };
                // A connection parked late may be due before one parked
                // soon that came earlier.
                let deadline = Instant::now() + idle.saturating_sub(conn.parking.after());
                if !sweeping || deadline < sweep.deadline() {
                    sweep.as_mut().reset(deadline);
                    sweeping = true;
                }
                if parked.add(conn, millis(deadline), poll.get_ref().registry()) {
                    counts.parked(1);
                }
            }
            ready = poll.readable_mut() => {
                let mut ready = match ready {
                    Ok(ready) => ready,
                    Err(e) => break tracing::error!(error = %e, "parked connections: their poll failed"),
                };
                match ready.get_inner_mut().poll(&mut events, Some(Duration::ZERO)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => break tracing::error!(error = %e, "parked connections: their poll failed"),
                }
                let mut woke = 0;
                for event in &events {
                    woke += 1;
                    let registry = ready.get_inner().registry();
                    match parked.woke(event.token().0, registry) {
                        Woke::Nothing => {}
                        Woke::Closed => counts.parked(-1),
                        Woke::Serve(conn) => {
                            counts.parked(-1);
                            if let Some(conn) = conn.serve(&lot, millis(Instant::now()), idle) {
                                resume(conn);
                            }
                        }
                    }
                }
                parked.compact();
                // All taken: tokio may wait for the poll's next event.
                if woke < EVENTS {
                    ready.clear_ready();
                }
            }
            () = &mut sweep, if sweeping => {
                let now = Instant::now();
                let (closed, next) = parked.expire(millis(now));
                counts.parked(-(closed as i64));
                match next {
                    Some(next) => sweep.as_mut().reset((base + Duration::from_millis(next.into())).max(now + every)),
                    None => sweeping = false,
                }
            }
            _ = closing.wait_for(|c| *c) => break,
        }
    }
    counts.parked(-(parked.live as i64));
}

/// One parked connection, as it waits.
struct Waiting<I: Parkable> {
    stream: I::Waiting,
    /// `RESPONSE_IDLE_TIMEOUT_SEC`, for the stream when it is served.
    send_limit: Option<Duration>,
    server: Arc<Server>,
    peer: (SocketAddr, bool),
    held: (Open, OpenConnection),
    parking: Parking,
    /// In milliseconds since the lot started.
    deadline: u32,
}

impl<I: Parkable> Waiting<I> {
    /// The connection as it is served again at `now` (milliseconds since
    /// the lot started), or nothing if tokio could not take its socket
    /// back. One whose client came back within [`Parking::Late`]'s delay
    /// of its parking parks late from now on.
    fn serve(self, lot: &Lot<I>, now: u32, idle: Duration) -> Option<Http1<I>> {
        let Waiting { stream, send_limit, server, peer, held, mut parking, deadline } = self;
        // What it could wait here, less what it has left.
        let may_wait = idle.saturating_sub(parking.after()).as_millis();
        let parked_for = may_wait.saturating_sub(deadline.saturating_sub(now).into());
        if parked_for < Parking::Late.after().as_millis() {
            parking = Parking::Late;
        }
        let io = Watched::new(I::serve(stream).ok()?, Vec::new(), Arc::new(Clock::default()), send_limit);
        Some(Http1 { io, server, peer, held, lot: lot.clone(), parking })
    }
}

/// What a wake-up of the poll meant for a slot.
enum Woke<I: Parkable> {
    Nothing,
    Closed,
    Serve(Waiting<I>),
}

/// The parked connections: their index is their token in the poll; a new
/// one takes the lowest free slot, so that the vector shrinks back when a
/// crowd has gone.
struct Slots<I: Parkable> {
    slots: Vec<Option<Waiting<I>>>,
    free: BinaryHeap<Reverse<usize>>,
    live: usize,
}

impl<I: Parkable> Default for Slots<I> {
    fn default() -> Slots<I> {
        Slots { slots: Vec::new(), free: BinaryHeap::new(), live: 0 }
    }
}

impl<I: Parkable> Slots<I> {
    /// Parks `conn` until `deadline`: false if its socket could not be
    /// moved to the lot's poll (it is closed then).
    fn add(&mut self, conn: Http1<I>, deadline: u32, registry: &Registry) -> bool {
        let Http1 { io, server, peer, held, parking, .. } = conn;
        let (stream, send_limit) = io.into_parked();
        let Ok(mut stream) = I::wait(stream) else { return false };
        let index = self.take_free();
        if let Err(e) = registry.register(&mut stream, Token(index), mio::Interest::READABLE) {
            tracing::debug!(error = %e, "a parked connection could not be watched; closed");
            self.free.push(Reverse(index));
            return false;
        }
        self.slots[index] = Some(Waiting { stream, send_limit, server, peer, held, parking, deadline });
        self.live += 1;
        true
    }

    /// Looks at the connection the poll woke in slot `index`.
    fn woke(&mut self, index: usize, registry: &Registry) -> Woke<I> {
        let Some(slot) = self.slots.get_mut(index) else { return Woke::Nothing };
        let Some(waiting) = slot else { return Woke::Nothing };
        let serve = match I::has_bytes(&waiting.stream) {
            Ok(false) => return Woke::Nothing,
            Ok(true) => true,
            Err(_) => false,
        };
        let Some(mut waiting) = slot.take() else { return Woke::Nothing };
        self.free.push(Reverse(index));
        self.live -= 1;
        match serve {
            true => {
                // Off the lot's poll before tokio takes it (or the slot's
                // next connection would be woken by this one's events).
                let _ = registry.deregister(&mut waiting.stream);
                Woke::Serve(waiting)
            }
            // Closing the socket takes it off the poll.
            false => Woke::Closed,
        }
    }

    /// Closes the connections whose deadline has passed: how many, and the
    /// earliest deadline left.
    fn expire(&mut self, now: u32) -> (usize, Option<u32>) {
        let (mut closed, mut next) = (0, None::<u32>);
        for (index, slot) in self.slots.iter_mut().enumerate() {
            let Some(waiting) = slot else { continue };
            if waiting.deadline > now {
                next = Some(next.map_or(waiting.deadline, |next| next.min(waiting.deadline)));
                continue;
            }
            *slot = None;
            self.free.push(Reverse(index));
            closed += 1;
        }
        self.live -= closed;
        self.compact();
        (closed, next)
    }

    /// The lowest free slot, or a new one. The free list is checked as it
    /// is read: it may name slots that were dropped from the end, or taken
    /// again since they were freed.
    fn take_free(&mut self) -> usize {
        while let Some(Reverse(index)) = self.free.pop() {
            if self.slots.get(index).is_some_and(Option::is_none) {
                return index;
            }
        }
        self.slots.push(None);
        self.slots.len() - 1
    }

    /// Drops empty slots from the end and gives back most of the room a
    /// crowd of connections left; the free list loses the slots that
    /// went once it names many more than there are.
    fn compact(&mut self) {
        while self.slots.last().is_some_and(Option::is_none) {
            self.slots.pop();
        }
        let len = self.slots.len();
        if self.slots.capacity() > 64 && self.slots.capacity() > 4 * len {
            self.slots.shrink_to(2 * len);
        }
        if self.free.len() > 2 * len + 64 {
            // Made again from the slots: exact, so no entry is kept twice.
            let free = self.slots.iter().enumerate().filter(|(_, slot)| slot.is_none());
            self.free = free.map(|(i, _)| Reverse(i)).collect();
        }
    }
}

//! The connections a worker's upstream pool keeps idle, per upstream host:
//! reused newest first, and closed once they are not needed. An idle hyper
//! connection holds about 42 KiB (its read and header buffers, the blocks
//! of its request channel, its task), so the connections a burst opened are
//! closed a few seconds after it (as HAProxy purges its idle connections)
//! rather than kept for the whole idle time.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Mutex, Weak};
use std::time::{Duration, Instant};

use http::uri::Authority;
use hyper::client::conn::http1::SendRequest;

use super::RequestBody;

pub type Sender = SendRequest<RequestBody>;

/// Idle connections are closed after this, before the usual 60-70 s server
/// idle timeouts close them under a request.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The newest idle connections to a host that wait the whole
/// [`IDLE_TIMEOUT`]: a page's worth, so that the next page a person loads
/// finds them.
const KEEP_IDLE: usize = 8;
/// An idle connection past the newest [`KEEP_IDLE`] closes once it has
/// waited this long: reuse is newest first, so the pool has not needed as
/// many connections as it holds for that long (HAProxy's
/// `pool-purge-delay` is 5 s too).
const SURPLUS_IDLE: Duration = Duration::from_secs(5);
/// How often the pool looks for connections to close.
const SWEEP_EVERY: Duration = Duration::from_millis(2500);
const MAX_IDLE_PER_HOST: usize = 512;

/// An upstream host. Compared and hashed as the bytes of its authority, in
/// one call: `Authority`'s own `Hash` lowercases it byte by byte, which made
/// the pool's two lookups a request cost 1.4k instructions. A runner's URL
/// is spelled one way, so nothing is lost.
#[derive(Clone)]
pub struct Key {
    pub(super) https: bool,
    pub(super) authority: Authority,
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.https == other.https && self.authority.as_str() == other.authority.as_str()
    }
}

impl Eq for Key {}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.https.hash(state);
        self.authority.as_str().hash(state);
    }
}

#[derive(Default)]
pub struct Idle {
    /// Oldest first; each with the time it came back.
    hosts: HashMap<Key, VecDeque<(Sender, Instant)>, ahash::RandomState>,
    /// Open connections per host, counted only under a cap.
    pub(super) open: HashMap<Key, usize, ahash::RandomState>,
}

impl Idle {
    /// The newest idle connection to `key` that is still open (`now`: a
    /// clock reading the caller has).
    pub fn take(&mut self, key: &Key, now: Instant) -> Option<Sender> {
        let conns = self.hosts.get_mut(key)?;
        while let Some((sender, since)) = conns.pop_back() {
            if now.saturating_duration_since(since) >= IDLE_TIMEOUT {
                // Everything older is older still.
                conns.clear();
                break;
            }
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    /// A connection back from a request at `now`, for the next one.
    pub fn put(&mut self, key: Key, sender: Sender, now: Instant) {
        let conns = self.hosts.entry(key).or_default();
        if conns.len() >= MAX_IDLE_PER_HOST {
            conns.pop_front();
        }
        conns.push_back((sender, now));
    }

    /// Idle connections still open.
    pub fn count(&self) -> usize {
        self.hosts.values().flatten().filter(|(sender, _)| !sender.is_closed()).count()
    }

    /// Closes the connections that are closed, past [`IDLE_TIMEOUT`], or
    /// surplus: older than the newest [`KEEP_IDLE`] of their host and idle
    /// for [`SURPLUS_IDLE`].
    fn sweep(&mut self, now: Instant) {
        self.hosts.retain(|_, conns| {
            conns.retain(|(s, since)| !s.is_closed() && now.saturating_duration_since(*since) < IDLE_TIMEOUT);
            let surplus = conns.len().saturating_sub(KEEP_IDLE);
            let waited = |(_, since): &&(Sender, Instant)| now.saturating_duration_since(*since) >= SURPLUS_IDLE;
            let unused = conns.iter().take(surplus).take_while(waited).count();
            conns.drain(..unused);
            !conns.is_empty()
        });
    }
}

/// Sweeps the pool's idle connections even when no request comes, so a
/// quiet proxy holds no sockets (or their buffers) it does not need. Ends
/// with the pool.
pub async fn sweep(idle: Weak<Mutex<Idle>>) {
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        let Some(idle) = idle.upgrade() else { return };
        idle.lock().unwrap_or_else(|e| e.into_inner()).sweep(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_util::rt::TokioIo;

    /// Real connections to a listener that accepts and holds them; with
    /// `open` false, each connection's task is dropped (its sender closed).
    async fn connections(n: usize, open: bool) -> Vec<Sender> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let mut out = Vec::new();
        for _ in 0..n {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
            if open {
                tokio::spawn(conn);
            }
            out.push(sender);
        }
        out
    }

    fn key() -> Key {
        Key { https: false, authority: Authority::from_static("runner:8080") }
    }

    async fn senders(n: usize) -> Vec<Sender> {
        connections(n, true).await
    }

    /// When each idle connection to `key()` came back, oldest first.
    fn ages(idle: &Idle) -> Vec<Instant> {
        idle.hosts.get(&key()).map(|c| c.iter().map(|(_, since)| *since).collect()).unwrap_or_default()
    }

    #[tokio::test]
    async fn a_burst_s_surplus_closes_and_a_page_s_worth_stays_until_the_idle_timeout() {
        let t0 = Instant::now();
        let mut idle = Idle::default();
        // 12 connections back one after another, 100 ms apart.
        let at = |i: usize| t0 + Duration::from_millis(100 * i as u64);
        for (i, sender) in senders(12).await.into_iter().enumerate() {
            idle.put(key(), sender, at(i));
        }
        idle.sweep(at(11) + Duration::from_secs(1));
        assert_eq!(idle.count(), 12, "nothing is surplus before it waited {SURPLUS_IDLE:?}");

        // The oldest waited 5 s; the three after it not yet.
        idle.sweep(at(0) + SURPLUS_IDLE);
        assert_eq!(ages(&idle), (1..12).map(at).collect::<Vec<_>>());
        idle.sweep(at(11) + SURPLUS_IDLE);
        assert_eq!(ages(&idle), (4..12).map(at).collect::<Vec<_>>(), "the newest {KEEP_IDLE} stay");

        idle.sweep(at(4) + IDLE_TIMEOUT);
        assert_eq!(ages(&idle), (5..12).map(at).collect::<Vec<_>>());
        idle.sweep(at(11) + IDLE_TIMEOUT);
        assert_eq!(idle.count(), 0);
        assert!(idle.hosts.is_empty(), "a host without connections is forgotten");
    }

    #[tokio::test]
    async fn connections_in_use_are_not_surplus() {
        let t0 = Instant::now();
        let mut idle = Idle::default();
        for sender in senders(12).await {
            idle.put(key(), sender, t0);
        }
        // Load that needs four at a time, every second: the newest four
        // come back each time, so only the oldest wait.
        for s in 1..=6 {
            let now = t0 + Duration::from_secs(s);
            let taken: Vec<_> = (0..4).map(|_| idle.take(&key(), now).unwrap()).collect();
            for sender in taken {
                idle.put(key(), sender, now);
            }
            idle.sweep(now);
        }
        // After 6 s the 8 that waited since t0 are past SURPLUS_IDLE, but
        // only 4 of them are past the newest KEEP_IDLE.
        assert_eq!(idle.count(), 8);
        let ages = ages(&idle);
        assert_eq!(ages.iter().filter(|at| **at == t0).count(), 4);
    }

    #[tokio::test]
    async fn closed_connections_are_not_lent_and_are_swept() {
        let t0 = Instant::now();
        let mut idle = Idle::default();
        let open = senders(1).await.pop().unwrap();
        let mut closed = connections(2, false).await;
        assert!(closed.iter().all(|s| s.is_closed()));
        idle.put(key(), open, t0);
        idle.put(key(), closed.pop().unwrap(), t0);
        let lent = idle.take(&key(), t0).expect("the open one, under the newer closed one");
        assert!(!lent.is_closed());
        idle.put(key(), lent, t0);
        idle.put(key(), closed.pop().unwrap(), t0);
        assert_eq!((idle.count(), ages(&idle).len()), (1, 2));
        idle.sweep(t0);
        assert_eq!(ages(&idle).len(), 1, "the closed one is swept");
    }
}

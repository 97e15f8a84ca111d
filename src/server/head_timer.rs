//! hyper's HTTP/1 header-read timer, made to tell idle keep-alive from a
//! slow request: hyper starts it when it waits for a request. The first
//! request's headers must arrive within `header_read`; between requests
//! the connection may idle for `idle`, and once the next request's first
//! byte arrives its headers have `header_read`. An idle connection is
//! asked to park after its [`Parking`] delay.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use tokio::time::Sleep;

use super::client_io::Clock;
use crate::clock;
use crate::timers::{self, KeptTimers};

/// How long an HTTP/1 connection idles between requests before it is
/// parked (its buffers given back) until the next request's first byte.
/// Soon at first: most idle connections are a browser's once its page has
/// loaded, or clients that asked once, and hyper's buffers (16 KiB) held
/// for a second by each of a crowd of them were most of the memory the
/// crowd left behind. Late for a connection whose client came back within
/// a second of its parking: requests that far apart would each pay a park
/// and a resume (about 22,000 instructions, most of a request's cost).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parking {
    Soon,
    Late,
}

impl Parking {
    pub fn after(self) -> Duration {
        match self {
            Parking::Soon => Duration::from_millis(100),
            Parking::Late => Duration::from_secs(1),
        }
    }
}

/// The timer hyper is given for one HTTP/1 connection (made again when a
/// parked connection wakes).
pub struct HeadTimer {
    header_read: Duration,
    idle: Duration,
    park_after: Duration,
    shared: Arc<Shared>,
    /// A first request has been waited for.
    used: AtomicBool,
}

/// What each wait for a request head shares with the connection.
struct Shared {
    reads: Arc<Clock>,
    /// The tokio timer of the last wait, kept for the next: hyper makes a
    /// wait for each request and drops it once the head is read.
    spare: KeptTimers,
}

impl HeadTimer {
    pub fn new(header_read: Duration, idle: Duration, parking: Parking, reads: Arc<Clock>) -> HeadTimer {
        let shared = Arc::new(Shared { reads, spare: KeptTimers::new(1) });
        HeadTimer { header_read, idle, park_after: parking.after(), shared, used: AtomicBool::new(false) }
    }
}

impl hyper::rt::Timer for HeadTimer {
    /// hyper's reading as it starts to wait for a request head.
    fn now(&self) -> Instant {
        clock::now()
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(HeadSleep::new(self, clock::now(), duration, false))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        let keep_alive = self.used.swap(true, Ordering::Relaxed);
        Box::pin(HeadSleep::new(self, deadline - self.header_read, self.header_read, keep_alive))
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: Instant) {
        match sleep.as_mut().downcast_mut_pin::<HeadSleep>() {
            Some(head) => {
                let head = head.get_mut();
                head.started = new_deadline - self.header_read;
                head.keep_alive = true;
                head.reads_at_start = head.shared.reads.reads();
                head.first_byte = None;
                head.park_asked = false;
            }
            None => *sleep = self.sleep_until(new_deadline),
        }
    }
}

/// hyper's wait for a request head (one per request).
struct HeadSleep {
    // When hyper began waiting for a request.
    started: Instant,
    header_read: Duration,
    idle: Duration,
    park_after: Duration,
    // Waiting for a request after the first.
    keep_alive: bool,
    // The read count when the wait began.
    reads_at_start: u64,
    // When that request's first byte was noticed.
    first_byte: Option<Instant>,
    // Parking the idle connection has been asked for.
    park_asked: bool,
    shared: Arc<Shared>,
    // The last wait's timer when there was one: its deadline is set when
    // first polled (a later one than before, so it stays in the wheel).
    sleep: Option<Pin<Box<Sleep>>>,
}

impl HeadSleep {
    fn new(timer: &HeadTimer, started: Instant, header_read: Duration, keep_alive: bool) -> HeadSleep {
        HeadSleep {
            started,
            header_read,
            idle: timer.idle,
            park_after: timer.park_after,
            keep_alive,
            reads_at_start: timer.shared.reads.reads(),
            first_byte: None,
            park_asked: false,
            shared: timer.shared.clone(),
            sleep: timer.shared.spare.take(),
        }
    }
}

impl Future for HeadSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let reads = &this.shared.reads;
        if this.keep_alive && this.first_byte.is_none() && reads.reads() != this.reads_at_start {
            this.first_byte = Some(clock::now());
        }
        // Idle between requests, first until it is time to park.
        let parks = this.keep_alive && this.first_byte.is_none() && !this.park_asked && this.idle > this.park_after;
        let deadline = match (this.keep_alive, this.first_byte) {
            (false, _) => this.started + this.header_read,
            (true, None) if parks => this.started + this.park_after,
            (true, None) => this.started + this.idle,
            (true, Some(first)) => first + this.header_read,
        };
        let sleep = match &mut this.sleep {
            Some(sleep) => {
                timers::set(sleep.as_mut(), deadline.into());
                sleep
            }
            None => this.sleep.insert(Box::pin(tokio::time::sleep_until(deadline.into()))),
        };
        ready!(timers::poll_until(sleep, deadline.into(), cx));
        if !parks {
            return Poll::Ready(());
        }
        this.park_asked = true;
        reads.ask_park(this.reads_at_start);
        // The connection's driver looks at the request when polled next.
        cx.waker().wake_by_ref();
        sleep.as_mut().reset((this.started + this.idle).into());
        sleep.as_mut().poll(cx)
    }
}

impl Drop for HeadSleep {
    fn drop(&mut self) {
        if let Some(sleep) = self.sleep.take() {
            self.shared.spare.give_back(sleep);
        }
    }
}

impl hyper::rt::Sleep for HeadSleep {}

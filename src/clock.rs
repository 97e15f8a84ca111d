//! The time, read once per poll of a connection's task. A keep-alive
//! request read the clock a dozen times (its start, the caches' freshness,
//! the send, the answer, the end of the body, the pool's idle stamp,
//! hyper's header timer...), each reading about 22 ns through the vDSO:
//! some 5% of the proxy's user time per request (`BENCHMARKS.md`,
//! eighteenth round). nginx reads it once per turn of its event loop. Here
//! a connection's task polls its future as one [`Turn`]: every [`now`] in
//! that poll gets the turn's first reading, which is never older than the
//! poll itself (microseconds: a poll never waits). Outside a turn, [`now`]
//! reads the clock. An answer made within one poll (a 401, a preflight)
//! takes no time by it: the access log's `ms` reads the clock itself.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

thread_local! {
    /// `None` outside a turn; `Some(None)` in a turn not read yet.
    static TURN: Cell<Option<Option<Instant>>> = const { Cell::new(None) };
}

/// The time: this turn's reading, or the clock outside a turn.
pub fn now() -> Instant {
    TURN.with(|turn| match turn.get() {
        Some(Some(read)) => read,
        Some(None) => {
            let read = Instant::now();
            turn.set(Some(Some(read)));
            read
        }
        None => Instant::now(),
    })
}

/// The time since `since`, by [`now`].
pub fn elapsed(since: Instant) -> Duration {
    now().saturating_duration_since(since)
}

pin_project_lite::pin_project! {
    /// A future each of whose polls is one turn.
    pub struct Turn<F> {
        #[pin]
        inner: F,
    }
}

impl<F> Turn<F> {
    pub fn new(inner: F) -> Turn<F> {
        Turn { inner }
    }
}

impl<F: Future> Future for Turn<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let _turn = Begun(TURN.with(|turn| turn.replace(Some(None))));
        self.project().inner.poll(cx)
    }
}

/// Ends a turn, also when its poll panics (tokio catches a task's panic
/// and the worker goes on: a turn left open would stop its clock).
struct Begun(Option<Option<Instant>>);

impl Drop for Begun {
    fn drop(&mut self) {
        TURN.with(|turn| turn.set(self.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    /// Busy for `d` (a sleep would hand the thread over).
    fn spin(d: Duration) {
        let start = Instant::now();
        while start.elapsed() < d {}
    }

    #[test]
    fn one_reading_per_poll_and_the_clock_outside() {
        let outside = now();
        spin(Duration::from_millis(2));
        assert!(now() > outside, "outside a turn, each reading is the clock's");
        let mut polls = Vec::new();
        let mut turn = Box::pin(Turn::new(poll_fn(|cx| {
            let first = now();
            spin(Duration::from_millis(2));
            polls.push((first, now()));
            match polls.len() {
                2 => Poll::Ready(()),
                _ => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
            }
        })));
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        while turn.as_mut().poll(&mut cx).is_pending() {}
        drop(turn);
        let [(a, b), (c, d)] = polls[..] else { panic!("{polls:?}") };
        assert_eq!(a, b, "one reading within a poll");
        assert_eq!(c, d);
        assert!(c >= a + Duration::from_millis(2), "each poll reads the clock again");
        let after = now();
        spin(Duration::from_millis(2));
        assert!(now() > after, "the turn ended with its poll");
    }

    #[test]
    fn a_nested_turn_gives_the_outer_one_back_and_a_panic_ends_a_turn() {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut outer = Box::pin(Turn::new(poll_fn(|cx| {
            let before = now();
            let mut inner = Box::pin(Turn::new(poll_fn(|_| Poll::Ready(now()))));
            spin(Duration::from_millis(2));
            let Poll::Ready(inner_read) = inner.as_mut().poll(cx) else { unreachable!() };
            assert!(inner_read > before, "the inner turn read the clock itself");
            assert_eq!(now(), before, "the outer turn's reading is back");
            Poll::Ready(())
        })));
        assert!(outer.as_mut().poll(&mut cx).is_ready());

        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut turn = Box::pin(Turn::new(poll_fn(|_| -> Poll<()> {
                now();
                panic!("a task panics in its poll")
            })));
            let _ = turn.as_mut().poll(&mut cx);
        }));
        assert!(panicked.is_err());
        let after = now();
        spin(Duration::from_millis(2));
        assert!(now() > after, "the panic ended the turn");
    }
}

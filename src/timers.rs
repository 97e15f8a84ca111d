//! Tokio timers kept for reuse. A timer still in tokio's timer wheel moves
//! to a later deadline with one atomic operation; a new one is put into the
//! wheel at its first poll and taken out when dropped, both under the
//! wheel's lock. Waits that come one after another (hyper's wait for each
//! request head, each upstream request's wait for its answer) take a kept
//! timer and give it back (callgrind: 110-170 instructions per request
//! each). A kept timer holds the waker of its last poll until its old
//! deadline passes or it is polled again. Timers belong to the runtime they
//! were made on: keep one set per worker.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// How much earlier than asked a kept timer may be due and be left as it
/// is. Setting it again costs about 120 instructions (the deadline turned
/// into the wheel's ticks); a wait that lasts until the early time wakes
/// once more, and [`poll_until`] sets it right then.
const SLACK: Duration = Duration::from_millis(100);

pub struct KeptTimers {
    kept: Mutex<Vec<Pin<Box<Sleep>>>>,
    max: usize,
}

impl KeptTimers {
    /// Keeps at most `max` timers.
    pub fn new(max: usize) -> KeptTimers {
        KeptTimers { kept: Mutex::new(Vec::new()), max }
    }

    /// A kept timer, its deadline still the last one's.
    pub fn take(&self) -> Option<Pin<Box<Sleep>>> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    /// A timer for `deadline`, a kept one if there is; it may be due a
    /// little earlier ([`set`]), so wait for it with [`poll_until`].
    pub fn until(&self, deadline: Instant) -> Pin<Box<Sleep>> {
        match self.take() {
            Some(mut timer) => {
                set(timer.as_mut(), deadline);
                timer
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        }
    }

    /// Keeps `timer` for a later wait, unless `max` are kept.
    pub fn give_back(&self, timer: Pin<Box<Sleep>>) {
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() < self.max {
            kept.push(timer);
        }
    }
}

/// Sets `timer` for `deadline`, unless it is already due at most
/// [`SLACK`] before it (requests that come one after another ask for
/// deadlines a little apart, and each would move it).
pub fn set(timer: Pin<&mut Sleep>, deadline: Instant) {
    let due = timer.deadline();
    if due > deadline || deadline - due > SLACK {
        timer.reset(deadline);
    }
}

/// Waits for `deadline` on a timer that may be due a little before it
/// ([`set`]): woken early, it is set to the deadline and waits on.
pub fn poll_until(timer: &mut Pin<Box<Sleep>>, deadline: Instant, cx: &mut Context<'_>) -> Poll<()> {
    loop {
        ready!(timer.as_mut().poll(cx));
        if Instant::now() >= deadline {
            return Poll::Ready(());
        }
        timer.as_mut().reset(deadline);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait(timer: &mut Pin<Box<Sleep>>, deadline: Instant) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| poll_until(timer, deadline, cx))
    }

    #[tokio::test(start_paused = true)]
    async fn a_kept_timer_due_a_little_early_waits_for_the_deadline() {
        let (timers, start) = (KeptTimers::new(1), Instant::now());
        timers.give_back(Box::pin(tokio::time::sleep_until(start + Duration::from_millis(950))));
        let deadline = start + Duration::from_secs(1);
        let mut timer = timers.until(deadline);
        assert_eq!(timer.deadline(), start + Duration::from_millis(950), "left where it was");
        wait(&mut timer, deadline).await;
        assert_eq!(Instant::now(), deadline);
    }

    #[tokio::test(start_paused = true)]
    async fn a_kept_timer_due_later_or_much_earlier_is_moved() {
        let (timers, start) = (KeptTimers::new(1), Instant::now());
        let deadline = start + Duration::from_secs(1);
        for due in [2_000, 1_001, 899, 0] {
            timers.give_back(Box::pin(tokio::time::sleep_until(start + Duration::from_millis(due))));
            let mut timer = timers.until(deadline);
            assert_eq!(timer.deadline(), deadline, "due at {due} ms");
            wait(&mut timer, deadline).await;
            assert_eq!(Instant::now(), deadline);
        }
    }
}

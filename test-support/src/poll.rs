//! Waiting on a condition: each helper polls what the test waits for and
//! fails the test, naming it, when it does not come true in time. The poll
//! interval is the only sleep a test needs; no test sleeps to let
//! something happen.

use std::time::{Duration, Instant};

/// How long a condition may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(15);

/// Polls `get` until `done` holds and returns that value; fails the test
/// (showing the last value) if it does not within [`WAIT`].
pub async fn eventually<T: std::fmt::Debug>(what: &str, mut get: impl FnMut() -> T, done: impl Fn(&T) -> bool) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = get();
        if done(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {v:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Polls `done` until it holds; fails the test naming `what` after [`WAIT`].
pub async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// [`until`] for a thread outside a runtime (blocking).
pub fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// [`until`] for a condition that must be awaited (a relay handle's
/// answer).
pub async fn until_async(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits for `child` to exit and returns its status; kills it and fails the
/// test naming `what` if it still runs after [`WAIT`].
pub fn exit_status(child: &mut std::process::Child, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

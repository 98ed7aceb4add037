//! What differs between a native process and a browser page: spawning the domain's task,
//! timers and the clock. Natively that is tokio; on wasm32 the page's event loop
//! (`spawn_local`, `setTimeout` through gloo-timers, `performance.now()` through web-time).

use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use concord_sync::Time;
use futures_util::future::{Either, select};

#[cfg(not(target_arch = "wasm32"))]
pub(crate) use tokio::time::Instant;
#[cfg(target_arch = "wasm32")]
pub(crate) use web_time::Instant;
// The wall clock: std's panics on wasm32-unknown-unknown ("time not implemented").
#[cfg(not(target_arch = "wasm32"))]
pub(crate) use std::time::{SystemTime, UNIX_EPOCH};
#[cfg(target_arch = "wasm32")]
pub(crate) use web_time::{SystemTime, UNIX_EPOCH};

/// Runs the domain's task in the background.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn spawn(task: impl Future<Output = ()> + Send + 'static) {
    tokio::spawn(task);
}

#[cfg(target_arch = "wasm32")]
pub(crate) fn spawn(task: impl Future<Output = ()> + 'static) {
    wasm_bindgen_futures::spawn_local(task);
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) async fn sleep(duration: Duration) {
    tokio::time::sleep(duration).await;
}

#[cfg(target_arch = "wasm32")]
pub(crate) async fn sleep(duration: Duration) {
    gloo_timers::future::sleep(duration).await;
}

pub(crate) async fn sleep_until(at: Instant) {
    sleep(at.saturating_duration_since(Instant::now())).await;
}

/// `future`'s output, or `None` if `limit` passed first.
pub(crate) async fn timeout<F: Future>(limit: Duration, future: F) -> Option<F::Output> {
    match select(pin!(future), pin!(sleep(limit))).await {
        Either::Left((output, _)) => Some(output),
        Either::Right(((), _)) => None,
    }
}

/// The engine's clock: milliseconds since the domain's task started, on the monotonic
/// clock.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    origin: Instant,
}

impl Clock {
    pub(crate) fn start() -> Clock {
        Clock { origin: Instant::now() }
    }

    pub(crate) fn now(&self) -> Time {
        Time::from_millis(u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    /// When the engine's `time` comes on this clock.
    pub(crate) fn instant(&self, time: Time) -> Instant {
        self.origin + Duration::from_millis(time.as_millis())
    }
}

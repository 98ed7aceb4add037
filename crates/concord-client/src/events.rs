//! Event streams: a slow reader skips what it missed instead of slowing anyone down.

use std::sync::{Arc, OnceLock};

use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

/// Events a model's channel holds for its slowest reader before that reader skips some.
pub(crate) const MODEL_EVENTS: usize = 256;

/// A model's event channel, made by its first reader: a broadcast channel allocates all of
/// its slots at once (here about 36 KiB), and a model nobody listens to needs none.
#[derive(Debug, Clone)]
pub(crate) struct ModelChannel<T>(Arc<OnceLock<broadcast::Sender<T>>>);

impl<T> Default for ModelChannel<T> {
    fn default() -> ModelChannel<T> {
        ModelChannel(Arc::new(OnceLock::new()))
    }
}

impl<T: Clone> ModelChannel<T> {
    pub(crate) fn subscribe(&self) -> Events<T> {
        Events::new(self.0.get_or_init(|| broadcast::channel(MODEL_EVENTS).0).subscribe())
    }

    /// Sends to the readers there are; without one the event goes nowhere, at no cost.
    pub(crate) fn send(&self, event: T) {
        if let Some(sender) = self.0.get() {
            let _ = sender.send(event);
        }
    }
}

/// Events from the moment the stream was made. A reader that falls more than the channel's
/// capacity behind skips the oldest ones ([`Events::missed`] counts them).
#[derive(Debug)]
pub struct Events<T> {
    receiver: broadcast::Receiver<T>,
    missed: u64,
}

impl<T: Clone> Events<T> {
    pub(crate) fn new(receiver: broadcast::Receiver<T>) -> Events<T> {
        Events { receiver, missed: 0 }
    }

    /// The next event; `None` once no more can come.
    pub async fn next(&mut self) -> Option<T> {
        loop {
            match self.receiver.recv().await {
                Ok(event) => return Some(event),
                Err(RecvError::Lagged(n)) => self.missed += n,
                Err(RecvError::Closed) => return None,
            }
        }
    }

    /// The next event already waiting, without waiting.
    pub fn try_next(&mut self) -> Option<T> {
        loop {
            match self.receiver.try_recv() {
                Ok(event) => return Some(event),
                Err(broadcast::error::TryRecvError::Lagged(n)) => self.missed += n,
                Err(_) => return None,
            }
        }
    }

    /// How many events this reader skipped because it fell behind.
    pub fn missed(&self) -> u64 {
        self.missed
    }
}

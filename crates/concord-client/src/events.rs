//! Event streams: a slow reader skips what it missed instead of slowing anyone down.

use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

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

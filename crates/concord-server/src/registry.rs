//! Which models have a running task: a task is started the first time a model is asked for
//! and forgotten when it unloads, and a model is never served by two tasks at once. It
//! knows nothing of what the tasks do.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Notify, mpsc};

/// Commands queued for one task before senders wait.
const QUEUE: usize = 1_024;

/// A task as the registry knows it.
#[derive(Debug)]
enum Entry<C> {
    Running(mpsc::Sender<C>),
    /// Stopping: senders wait for the gate, then look again.
    Unloading(Arc<Notify>),
}

/// The running tasks, by key; `C` is what a task is sent.
#[derive(Debug)]
pub(crate) struct Registry<K, C> {
    tasks: Mutex<HashMap<K, Entry<C>>>,
}

impl<K: Clone + Eq + Hash, C> Registry<K, C> {
    pub(crate) fn new() -> Registry<K, C> {
        Registry { tasks: Mutex::new(HashMap::new()) }
    }

    fn tasks(&self) -> MutexGuard<'_, HashMap<K, Entry<C>>> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts
        // and removes), so a poisoned lock is still usable.
        self.tasks.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Hands `command` to the task for `key`, starting one with `start` if none runs.
    pub(crate) async fn send(&self, key: &K, mut command: C, start: impl Fn(K, mpsc::Receiver<C>)) {
        loop {
            let found = {
                let mut tasks = self.tasks();
                match tasks.get(key) {
                    Some(Entry::Running(sender)) => Ok(sender.clone()),
                    // Made before the lock is released, so the wake-up cannot be missed.
                    Some(Entry::Unloading(gate)) => Err(gate.clone().notified_owned()),
                    None => {
                        let (sender, receiver) = mpsc::channel(QUEUE);
                        tasks.insert(key.clone(), Entry::Running(sender.clone()));
                        start(key.clone(), receiver);
                        Ok(sender)
                    }
                }
            };
            let sender = match found {
                Ok(sender) => sender,
                Err(woken) => {
                    woken.await;
                    continue;
                }
            };
            match sender.send(command).await {
                Ok(()) => return,
                // The task stopped between lookup and send: ask again.
                Err(mpsc::error::SendError(returned)) => {
                    command = returned;
                    let mut tasks = self.tasks();
                    if matches!(tasks.get(key), Some(Entry::Running(s)) if s.same_channel(&sender))
                    {
                        forget(&mut tasks, key);
                    }
                }
            }
        }
    }

    /// Called by an idle task: `Ok(())` if it may stop now, or the commands that reached it
    /// while it was stopping (it keeps running, on `commands` replaced by a fresh queue).
    /// Senders wait meanwhile, so a key is never served twice and one sender's commands keep
    /// their order.
    pub(crate) fn unload(&self, key: &K, commands: &mut mpsc::Receiver<C>) -> Result<(), Vec<C>> {
        let gate = Arc::new(Notify::new());
        {
            let mut tasks = self.tasks();
            if !commands.is_empty() {
                return Err(Vec::new());
            }
            tasks.insert(key.clone(), Entry::Unloading(gate.clone()));
        }
        commands.close();
        let stragglers: Vec<_> = std::iter::from_fn(|| commands.try_recv().ok()).collect();
        let mut tasks = self.tasks();
        if stragglers.is_empty() {
            forget(&mut tasks, key);
        } else {
            let (sender, receiver) = mpsc::channel(QUEUE);
            tasks.insert(key.clone(), Entry::Running(sender));
            *commands = receiver;
        }
        drop(tasks);
        gate.notify_waiters();
        if stragglers.is_empty() { Ok(()) } else { Err(stragglers) }
    }
}

/// Removes a task's entry; a map left mostly empty after many models unloaded gives its
/// memory back (a map keeps its largest capacity otherwise).
fn forget<K: Eq + Hash, V>(tasks: &mut HashMap<K, V>, key: &K) {
    tasks.remove(key);
    if tasks.capacity() > 64 && tasks.len() < tasks.capacity() / 4 {
        tasks.shrink_to(tasks.len() * 2);
    }
}

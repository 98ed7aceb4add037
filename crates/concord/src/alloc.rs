//! Gives the memory the allocator holds free back to the system (glibc's malloc only; a
//! no-op elsewhere).
//!
//! Why: glibc keeps freed memory in its arenas and returns it only from the top of a heap.
//! After thousands of models were loaded and unloaded (a client syncing what it changed
//! offline), their memory is free inside the process but the server's RSS stays at its peak
//! (measured: 170 MiB after 10,000 models, from 9 MiB before; `docs/benchmarks.md`, P6).
//! So every [`CHECK_EVERY`] the server reads the allocator's statistics (`mallinfo2`) and,
//! when more than [`TRIM_ABOVE`] sit free, calls `malloc_trim(0)`, which releases the free
//! pages of every arena. A check costs microseconds; a trim a few milliseconds, and only
//! after a burst of frees.

use std::time::Duration;

/// How often the allocator's free memory is checked.
pub(crate) const CHECK_EVERY: Duration = Duration::from_secs(10);

/// Free bytes held by the allocator above which they are returned to the system.
pub(crate) const TRIM_ABOVE: usize = 4 * 1024 * 1024;

/// What the allocator holds, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Held {
    /// In use by the program.
    pub(crate) in_use: usize,
    /// Free, but kept by the allocator (counted in RSS once touched).
    pub(crate) free: usize,
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)] // two calls into glibc, with no arguments that could be wrong
mod imp {
    use super::Held;

    pub(crate) fn held() -> Option<Held> {
        // SAFETY: mallinfo2 only reads the allocator's bookkeeping (under its locks); glibc
        // ≥ 2.33, which the libc crate links against on linux-gnu.
        let info = unsafe { libc::mallinfo2() };
        // `uordblks`/`fordblks`: in use / free in the arenas; `hblkhd`: big blocks mmapped
        // on their own, returned as soon as they are freed.
        Some(Held { in_use: info.uordblks + info.hblkhd, free: info.fordblks })
    }

    pub(crate) fn trim() {
        // SAFETY: malloc_trim takes the allocator's locks itself; 0 keeps no padding.
        unsafe { libc::malloc_trim(0) };
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod imp {
    use super::Held;

    pub(crate) fn held() -> Option<Held> {
        None
    }

    pub(crate) fn trim() {}
}

/// The allocator's statistics, where it has them (glibc).
pub(crate) fn held() -> Option<Held> {
    imp::held()
}

/// Returns the free memory to the system if more than [`TRIM_ABOVE`] is held; says what
/// the allocator held, if it trimmed. (The free memory is still counted free afterwards:
/// the trim gives its pages back, the allocator keeps the address space.)
pub(crate) fn trim_if_worth_it() -> Option<Held> {
    let held = held()?;
    if held.free <= TRIM_ABOVE {
        return None;
    }
    imp::trim();
    Some(held)
}

/// Checks every [`CHECK_EVERY`] for as long as the server runs.
pub(crate) async fn keep_returning_free_memory() {
    let mut every = tokio::time::interval(CHECK_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if let Some(held) = trim_if_worth_it() {
            let mib = |bytes: usize| bytes as f64 / (1024.0 * 1024.0);
            tracing::info!(
                in_use_mib = format!("{:.1}", mib(held.in_use)),
                free_mib = format!("{:.1}", mib(held.free)),
                "returned the allocator's free memory to the system (malloc_trim)"
            );
        }
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    fn rss_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").expect("procfs");
        let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).expect("VmRSS");
        line.trim().trim_end_matches("kB").trim().parse().expect("a number")
    }

    #[test]
    fn memory_freed_but_held_by_the_allocator_is_returned_by_a_trim() {
        // 32 MiB in small blocks (never mmapped one by one), all freed but the last, which
        // pins the top of the heap so that glibc cannot give the rest back by itself.
        let blocks: Vec<Vec<u8>> = (0..32_768).map(|i| vec![i as u8; 1024]).collect();
        let pin = vec![1u8; 1024];
        drop(blocks);
        let freed = held().expect("glibc has statistics");
        assert!(freed.free > 16 * 1024 * 1024, "the freed blocks are held free: {freed:?}");
        let rss_before = rss_kib();
        assert!(trim_if_worth_it().is_some(), "more than {TRIM_ABOVE} bytes are free");
        let rss_after = rss_kib();
        assert!(
            rss_after + 16 * 1024 < rss_before,
            "a trim returns the freed pages: {rss_before} KiB before, {rss_after} KiB after"
        );
        drop(pin);
    }
}

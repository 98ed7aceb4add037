//! The most one client can get from any server that flushes before it acknowledges: one
//! `fdatasync` and one loopback round trip per operation, so `1 / (fdatasync + round trip)`
//! operations per second. Both are measured on this machine in the same sitting as the runs,
//! with nothing else in the way (no WebSocket, no store, no runtime), so that a C = 1 figure
//! can be read as a share of what the disk and the loopback allow.

use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

/// Samples per probe: enough for a stable median on a disk with 0.1–0.3 ms flushes.
const SAMPLES: usize = 2_000;

/// What the probes measured, medians in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Bound {
    pub(crate) fdatasync_ms: f64,
    pub(crate) round_trip_ms: f64,
}

impl Bound {
    /// `1 / (fdatasync + round trip)`.
    pub(crate) fn ops_per_sec(&self) -> f64 {
        1_000.0 / (self.fdatasync_ms + self.round_trip_ms)
    }
}

/// Measures both, the flush in a temporary file where the server's stores go.
pub(crate) fn measure() -> Result<Bound> {
    Ok(Bound { fdatasync_ms: fdatasync_ms()?, round_trip_ms: round_trip_ms()? })
}

/// The median time to rewrite one 4 KiB page of a file and `fdatasync` it: what a store's
/// commit of one small operation cannot go below.
fn fdatasync_ms() -> Result<f64> {
    let mut file = tempfile::Builder::new().prefix("concord-load-fsync-").tempfile()?;
    let page = [0x5a_u8; 4096];
    file.write_all(&page)?;
    file.as_file().sync_all()?;
    let mut samples = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let start = Instant::now();
        file.seek(SeekFrom::Start(0))?;
        file.write_all(&page)?;
        file.as_file().sync_data().context("fdatasync")?;
        samples.push(start.elapsed());
    }
    Ok(median_ms(samples))
}

/// The median round trip of a 64-byte message over loopback TCP (`TCP_NODELAY`) between two
/// threads: what a request and its answer cannot go below.
fn round_trip_ms() -> Result<f64> {
    const MESSAGE: usize = 64;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut stream, _) = listener.accept()?;
        stream.set_nodelay(true)?;
        let mut buffer = [0_u8; MESSAGE];
        while stream.read_exact(&mut buffer).is_ok() {
            stream.write_all(&buffer)?;
        }
        Ok(())
    });
    let mut stream = TcpStream::connect(address)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut buffer = [7_u8; MESSAGE];
    let mut samples = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let start = Instant::now();
        stream.write_all(&buffer)?;
        stream.read_exact(&mut buffer).context("reading the echo")?;
        samples.push(start.elapsed());
    }
    drop(stream);
    echo.join().map_err(|_| anyhow::anyhow!("the echo thread panicked"))??;
    Ok(median_ms(samples))
}

fn median_ms(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_is_one_over_the_sum() {
        let bound = Bound { fdatasync_ms: 0.15, round_trip_ms: 0.05 };
        assert!((bound.ops_per_sec() - 5_000.0).abs() < 1e-6);
    }

    #[test]
    fn both_probes_measure_something() {
        let bound = measure().unwrap();
        assert!(bound.fdatasync_ms > 0.0 && bound.round_trip_ms > 0.0, "{bound:?}");
    }
}

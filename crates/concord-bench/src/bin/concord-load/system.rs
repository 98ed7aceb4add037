//! What the load tool reads from `/proc`: CPU time of a process and of the whole machine,
//! the disks' request counters, a process's resident set, and a description of the machine
//! for the report.

use std::io::{BufRead, BufReader, Read};

use anyhow::{Context, Result};

/// A `/proc/<pid>/status` memory figure of process `pid` (`VmHWM:` the peak resident set,
/// `VmRSS:` the current one), in KiB.
pub(crate) fn rss_kib(pid: u32, field: &str) -> Result<u64> {
    concord_bench::process::status_kib(&pid.to_string(), field)
}

/// Clock ticks per second of `/proc` CPU times (`USER_HZ`, 100 on Linux).
const USER_HZ: f64 = 100.0;

/// CPU seconds (user + system) a process has used; `pid` is a number or `"self"`.
pub(crate) fn cpu_seconds(pid: &str) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; the fields after it are plain numbers.
    let after_name = stat.rsplit_once(") ").context("malformed /proc/<pid>/stat")?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64> {
        Ok(fields.get(i).context("short /proc/<pid>/stat")?.parse::<u64>()? as f64)
    };
    // utime and stime are fields 14 and 15, that is 11 and 12 after the name.
    Ok((ticks(11)? + ticks(12)?) / USER_HZ)
}

/// CPU seconds the whole machine has spent busy (everything but idle and iowait).
pub(crate) fn machine_busy_seconds() -> Result<f64> {
    let mut first = String::new();
    BufReader::new(std::fs::File::open("/proc/stat")?).read_line(&mut first)?;
    let ticks: Vec<u64> =
        first.split_whitespace().skip(1).take(8).map(str::parse).collect::<Result<_, _>>()?;
    let total: u64 = ticks.iter().sum();
    Ok((total - ticks[3] - ticks[4]) as f64 / USER_HZ)
}

/// The disks' completed writes and flushes and the time they took, summed over the whole
/// disks (`/proc/diskstats`; partitions, loop and RAM devices left out). Between two
/// samples they give the mean time of one write or flush during a window: the disk's own
/// speed, which on a virtual disk changes from minute to minute and moves the runs with it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct DiskCounters {
    pub(crate) writes: u64,
    pub(crate) write_ms: u64,
    pub(crate) flushes: u64,
    pub(crate) flush_ms: u64,
}

impl DiskCounters {
    /// The counters now; all zero where the kernel does not report them.
    pub(crate) fn read() -> DiskCounters {
        let stats = std::fs::read_to_string("/proc/diskstats").unwrap_or_default();
        DiskCounters::sum(&stats, |name| std::path::Path::new("/sys/block").join(name).exists())
    }

    /// The sum over the lines of `stats` (as `/proc/diskstats`) of the devices that are
    /// whole disks.
    fn sum(stats: &str, whole_disk: impl Fn(&str) -> bool) -> DiskCounters {
        let mut sum = DiskCounters::default();
        for line in stats.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let Some(&name) = fields.get(2) else { continue };
            if !whole_disk(name) || name.starts_with("loop") || name.starts_with("ram") {
                continue;
            }
            // Fields after major, minor and name: writes completed is the 5th, time writing
            // (ms) the 8th, flushes completed the 15th and time flushing the 16th.
            let field = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            sum.writes += field(7);
            sum.write_ms += field(10);
            sum.flushes += field(18);
            sum.flush_ms += field(19);
        }
        sum
    }

    /// The mean time of one write and of one flush from `self` to `later`, in ms (NaN when
    /// there were none).
    pub(crate) fn mean_ms_until(&self, later: &DiskCounters) -> (f64, f64) {
        let delta = |f: fn(&DiskCounters) -> u64| f(later).saturating_sub(f(self)) as f64;
        (delta(|d| d.write_ms) / delta(|d| d.writes), delta(|d| d.flush_ms) / delta(|d| d.flushes))
    }
}

/// A line about the machine for the report: cores, CPU model, RAM, kernel.
pub(crate) fn machine() -> String {
    let read = |path: &str| {
        let mut text = String::new();
        let _ = std::fs::File::open(path).and_then(|mut f| f.read_to_string(&mut text));
        text
    };
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':'])))
        .unwrap_or("?");
    let ram_kib: u64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "nproc {cores}, CPU \"{model}\", {:.0} GiB RAM, Linux {}",
        ram_kib as f64 / 1024.0 / 1024.0,
        read("/proc/sys/kernel/osrelease").trim()
    )
}

#[cfg(test)]
mod tests {
    use super::DiskCounters;

    #[test]
    fn disk_counters_sum_whole_disks_and_give_mean_times() {
        // Two lines of a 6.x kernel's /proc/diskstats (20 fields), a partition and a loop
        // device, and an older kernel's line without flush counters.
        let before = "\
 254       0 vda 100 0 800 50 1000 20 9000 60 0 70 130 0 0 0 0 400 20
 254       1 vda1 90 0 700 40 900 10 8000 50 0 60 110 0 0 0 0 0 0
   7       0 loop0 5 0 40 1 0 0 0 0 0 1 1 0 0 0 0 0 0
 253       0 vdb 1 0 8 1 10 0 80 5 0 6 6";
        let after = "\
 254       0 vda 100 0 800 50 1100 20 9800 66 0 80 140 0 0 0 0 450 22
 254       1 vda1 90 0 700 40 999 10 8800 150 0 60 110 0 0 0 0 0 0
   7       0 loop0 5 0 40 1 50 0 400 99 0 1 1 0 0 0 0 0 0
 253       0 vdb 1 0 8 1 12 0 96 6 0 7 7";
        let disks = |name: &str| !name.ends_with('1');
        let (before, after) = (DiskCounters::sum(before, disks), DiskCounters::sum(after, disks));
        assert_eq!(
            (before.writes, before.write_ms, before.flushes, before.flush_ms),
            (1010, 65, 400, 20)
        );
        // 102 writes in 7 ms; 50 flushes in 2 ms.
        let (write_ms, flush_ms) = before.mean_ms_until(&after);
        assert!((write_ms - 7.0 / 102.0).abs() < 1e-12, "{write_ms}");
        assert!((flush_ms - 2.0 / 50.0).abs() < 1e-12, "{flush_ms}");
        assert!(after.mean_ms_until(&after).0.is_nan());
    }
}

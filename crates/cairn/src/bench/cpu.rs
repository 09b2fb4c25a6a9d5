//! CPU time used by a process, from the kernel's own accounting (proc(5)).
//!
//! Two sources, read together:
//! - `/proc/PID/task/*/schedstat`: nanoseconds on CPU of each live thread, summed;
//! - `/proc/PID/stat`: `utime + stime` of the whole process in clock ticks (usually
//!   10 ms), which also keeps the time of threads that have exited.
//!
//! The nanosecond figure is used unless the tick figure shows more time than it by
//! more than a tick's rounding: then a thread ended in between and took its
//! nanoseconds with it, and the tick figure is the true one.

use std::fs;
use std::io;
use std::time::Duration;

/// One reading of a process's CPU time.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    /// Sum over the live threads of `/proc/PID/task/TID/schedstat`, when available.
    threads_on_cpu: Option<Duration>,
    /// `utime + stime` of `/proc/PID/stat`.
    process_ticks: u64,
}

impl CpuSample {
    /// Reads the CPU time of process `pid`.
    pub fn read(pid: u32) -> io::Result<Self> {
        Ok(Self {
            threads_on_cpu: threads_on_cpu(pid).ok(),
            process_ticks: process_ticks(pid)?,
        })
    }

    /// CPU time used between `self` and the later sample `end`.
    pub fn until(&self, end: &CpuSample) -> Duration {
        let tick = tick_duration();
        let from_ticks = tick * end.process_ticks.saturating_sub(self.process_ticks) as u32;
        match (self.threads_on_cpu, end.threads_on_cpu) {
            (Some(start), Some(end)) => {
                let precise = end.saturating_sub(start);
                if from_ticks > precise + 2 * tick {
                    from_ticks
                } else {
                    precise
                }
            }
            _ => from_ticks,
        }
    }
}

/// How many cores were busy on average over the next `interval`, from the first line
/// of `/proc/stat` (ticks per state, summed over the CPUs).
pub fn machine_busy_cores(interval: Duration) -> io::Result<f64> {
    let start = machine_ticks()?;
    std::thread::sleep(interval);
    let end = machine_ticks()?;
    let busy = end.busy.saturating_sub(start.busy) as f64;
    let ticks_per_second = rustix::param::clock_ticks_per_second().max(1) as f64;
    Ok(busy / ticks_per_second / interval.as_secs_f64())
}

/// Machine-wide ticks spent busy (all states but idle and iowait).
#[derive(Debug, Clone, Copy)]
struct MachineTicks {
    busy: u64,
}

fn machine_ticks() -> io::Result<MachineTicks> {
    parse_machine_ticks(&fs::read_to_string("/proc/stat")?)
}

/// `cpu  user nice system idle iowait irq softirq steal ...` (guest time is already in
/// user and nice, so only the first eight fields count).
fn parse_machine_ticks(text: &str) -> io::Result<MachineTicks> {
    let line = text
        .lines()
        .next()
        .filter(|line| line.starts_with("cpu "))
        .ok_or_else(|| invalid("/proc/stat"))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|field| field.parse().ok())
        .collect::<Option<_>>()
        .ok_or_else(|| invalid("/proc/stat"))?;
    if ticks.len() < 5 {
        return Err(invalid("/proc/stat"));
    }
    let idle = ticks[3] + ticks[4];
    Ok(MachineTicks {
        busy: ticks.iter().sum::<u64>() - idle,
    })
}

/// Length of one clock tick, `1 / sysconf(_SC_CLK_TCK)`.
fn tick_duration() -> Duration {
    let ticks_per_second = rustix::param::clock_ticks_per_second().max(1);
    Duration::from_nanos(1_000_000_000 / ticks_per_second)
}

fn threads_on_cpu(pid: u32) -> io::Result<Duration> {
    let mut total = Duration::ZERO;
    for task in fs::read_dir(format!("/proc/{pid}/task"))? {
        // A thread may end between listing and reading: it is simply not counted.
        let Ok(schedstat) = fs::read_to_string(task?.path().join("schedstat")) else {
            continue;
        };
        total += Duration::from_nanos(parse_schedstat(&schedstat)?);
    }
    Ok(total)
}

fn process_ticks(pid: u32) -> io::Result<u64> {
    parse_stat_ticks(&fs::read_to_string(format!("/proc/{pid}/stat"))?)
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("unexpected {what} format"),
    )
}

/// The first field of `schedstat`: time spent on the CPU, in nanoseconds.
fn parse_schedstat(text: &str) -> io::Result<u64> {
    text.split_whitespace()
        .next()
        .and_then(|field| field.parse().ok())
        .ok_or_else(|| invalid("schedstat"))
}

/// `utime + stime` (fields 14 and 15) of `stat`. The command name (field 2) is in
/// parentheses and may hold spaces, so fields are counted from the last `)`.
fn parse_stat_ticks(text: &str) -> io::Result<u64> {
    let after_name = text.rsplit_once(')').ok_or_else(|| invalid("stat"))?.1;
    let mut fields = after_name.split_whitespace().skip(11);
    let mut next = || -> io::Result<u64> {
        fields
            .next()
            .and_then(|field| field.parse().ok())
            .ok_or_else(|| invalid("stat"))
    };
    Ok(next()? + next()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_the_name() {
        let stat = "42 (a b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 37 0 0 20 0 1 0 5 0 0";
        assert_eq!(parse_stat_ticks(stat).unwrap(), 287);
        assert!(parse_stat_ticks("42 (x) S 1").is_err());
    }

    #[test]
    fn parses_machine_ticks() {
        let stat = "cpu  100 5 50 1000 20 1 2 3 7 0\ncpu0 1 2 3 4 5 6 7 8\n";
        assert_eq!(parse_machine_ticks(stat).unwrap().busy, 161);
        assert!(parse_machine_ticks("intr 1 2 3").is_err());
    }

    #[test]
    fn parses_schedstat() {
        assert_eq!(
            parse_schedstat("168498505 7256710 353\n").unwrap(),
            168_498_505
        );
        assert!(parse_schedstat("").is_err());
    }

    #[test]
    fn measures_this_process() {
        // Spins until the accounting shows 20 ms; on a loaded machine that takes longer.
        let pid = std::process::id();
        let start = CpuSample::read(pid).unwrap();
        let give_up = std::time::Instant::now() + Duration::from_secs(20);
        while start.until(&CpuSample::read(pid).unwrap()) < Duration::from_millis(20) {
            assert!(std::time::Instant::now() < give_up, "no CPU time accounted");
            let spin_until = std::time::Instant::now() + Duration::from_millis(5);
            while std::time::Instant::now() < spin_until {
                std::hint::black_box(0u64);
            }
        }
    }
}

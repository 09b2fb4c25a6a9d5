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
    fn parses_schedstat() {
        assert_eq!(
            parse_schedstat("168498505 7256710 353\n").unwrap(),
            168_498_505
        );
        assert!(parse_schedstat("").is_err());
    }

    #[test]
    fn measures_this_process() {
        let pid = std::process::id();
        let start = CpuSample::read(pid).unwrap();
        let spin_until = std::time::Instant::now() + Duration::from_millis(60);
        while std::time::Instant::now() < spin_until {
            std::hint::black_box(0u64);
        }
        let used = start.until(&CpuSample::read(pid).unwrap());
        assert!(used >= Duration::from_millis(30), "{used:?}");
    }
}

//! CPU time and peak memory of a process from Linux `/proc`.
//!
//! `/proc/PID/stat`: utime and stime (fields 14 and 15, clock ticks) after
//! the command name, which is in parentheses and may itself contain spaces
//! and parentheses, so fields are counted from the last `)`.
//! `/proc/PID/status`: `VmHWM` (peak resident set size, kB) and `VmRSS`
//! (resident now); `/proc/PID/fd`: open descriptors.

use std::time::Duration;

/// Why a `/proc` file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// The file could not be read (the process is gone?).
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The file does not have the expected shape.
    #[error("{path}: {what}")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong.
        what: String,
    },
}

/// CPU time used by a process so far, in clock ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTicks {
    /// User time.
    pub utime: u64,
    /// System time.
    pub stime: u64,
}

impl CpuTicks {
    /// User plus system time, given the clock tick rate.
    pub fn duration(self, ticks_per_sec: u64) -> Duration {
        Duration::from_secs_f64((self.utime + self.stime) as f64 / ticks_per_sec.max(1) as f64)
    }

    /// Time used between `earlier` and `self`.
    pub fn since(self, earlier: CpuTicks) -> CpuTicks {
        CpuTicks {
            utime: self.utime.saturating_sub(earlier.utime),
            stime: self.stime.saturating_sub(earlier.stime),
        }
    }
}

/// utime and stime from the text of `/proc/PID/stat`.
pub fn parse_stat(text: &str) -> Result<CpuTicks, String> {
    let close = text.rfind(')').ok_or("no ')' after the command name")?;
    // After ") ": field 3 (state) is index 0, so utime (14) is 11, stime (15) is 12.
    let fields: Vec<&str> = text[close + 1..].split_whitespace().collect();
    let get = |i: usize, name: &str| -> Result<u64, String> {
        fields
            .get(i)
            .ok_or_else(|| format!("{name}: only {} fields after the command", fields.len()))?
            .parse()
            .map_err(|e| format!("{name}: {e}"))
    };
    Ok(CpuTicks {
        utime: get(11, "utime")?,
        stime: get(12, "stime")?,
    })
}

/// `VmHWM` in bytes from the text of `/proc/PID/status`.
pub fn parse_hwm(text: &str) -> Result<u64, String> {
    parse_status_bytes(text, "VmHWM")
}

/// A `kB` line of `/proc/PID/status` (`VmHWM`, `VmRSS`), in bytes.
fn parse_status_bytes(text: &str, key: &str) -> Result<u64, String> {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .ok_or_else(|| format!("no {key} line"))?;
    let mut parts = line.split_whitespace();
    let n: u64 = parts
        .next()
        .ok_or_else(|| format!("{key}: no value"))?
        .parse()
        .map_err(|e| format!("{key}: {e}"))?;
    match parts.next() {
        Some("kB") | None => Ok(n * 1024),
        Some(u) => Err(format!("{key}: unexpected unit {u:?}")),
    }
}

fn read(path: String) -> Result<(String, String), ProcError> {
    match std::fs::read_to_string(&path) {
        Ok(t) => Ok((path, t)),
        Err(source) => Err(ProcError::Read { path, source }),
    }
}

/// CPU ticks used so far by process `pid`.
pub fn cpu(pid: u32) -> Result<CpuTicks, ProcError> {
    let (path, text) = read(format!("/proc/{pid}/stat"))?;
    parse_stat(&text).map_err(|what| ProcError::Parse { path, what })
}

/// Peak resident set size of process `pid`, in bytes.
pub fn peak_rss(pid: u32) -> Result<u64, ProcError> {
    let (path, text) = read(format!("/proc/{pid}/status"))?;
    parse_hwm(&text).map_err(|what| ProcError::Parse { path, what })
}

/// Resident set size of process `pid` now, in bytes.
pub fn rss(pid: u32) -> Result<u64, ProcError> {
    let (path, text) = read(format!("/proc/{pid}/status"))?;
    parse_status_bytes(&text, "VmRSS").map_err(|what| ProcError::Parse { path, what })
}

/// Open file descriptors of process `pid`.
pub fn open_fds(pid: u32) -> Result<u64, ProcError> {
    let path = format!("/proc/{pid}/fd");
    match std::fs::read_dir(&path) {
        Ok(d) => Ok(d.count() as u64),
        Err(source) => Err(ProcError::Read { path, source }),
    }
}

/// Clock ticks per second (`getconf CLK_TCK`; 100, the Linux value on
/// every common architecture, when getconf is missing).
pub fn ticks_per_sec() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&n: &u64| n > 0)
        .unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_awkward_command_name() {
        let text = "4242 (fan out) (x)) S 1 4242 4242 0 -1 4194560 1893 0 0 0 1234 567 0 0 20 0 9 0 99 0 0\n";
        assert_eq!(
            parse_stat(text).unwrap(),
            CpuTicks {
                utime: 1234,
                stime: 567
            }
        );
    }

    #[test]
    fn stat_too_short_or_garbled() {
        assert!(parse_stat("1 (a) S 1 2").unwrap_err().contains("utime"));
        assert!(parse_stat("no parens").is_err());
        assert!(parse_stat("1 (a) S 1 1 1 0 -1 0 0 0 0 0 x 5")
            .unwrap_err()
            .contains("utime"));
    }

    #[test]
    fn own_process() {
        let t = cpu(std::process::id()).unwrap();
        let _ = t.utime + t.stime;
        assert!(peak_rss(std::process::id()).unwrap() > 0);
    }

    #[test]
    fn hwm() {
        let text = "Name:\tfanout\nVmPeak:\t  100 kB\nVmHWM:\t   20480 kB\nVmRSS:\t 100 kB\n";
        assert_eq!(parse_hwm(text).unwrap(), 20480 * 1024);
        assert!(parse_hwm("VmRSS: 1 kB\n").is_err());
        assert!(parse_hwm("VmHWM: 1 MB\n").is_err());
    }

    #[test]
    fn durations() {
        let a = CpuTicks {
            utime: 150,
            stime: 50,
        };
        let b = CpuTicks {
            utime: 350,
            stime: 100,
        };
        assert_eq!(b.since(a).duration(100), Duration::from_millis(2500));
        assert_eq!(a.since(b), CpuTicks::default());
    }
}

//! Number, size, time and text formatting for narrow table cells.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Parses an RFC 3339 time into milliseconds since the epoch.
pub fn parse_time_ms(s: &str) -> Option<i64> {
    let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// `HH:MM:SS` (UTC) of a time in milliseconds since the epoch.
pub fn clock(ms: i64) -> String {
    match OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000)) {
        Ok(t) => format!("{:02}:{:02}:{:02}", t.hour(), t.minute(), t.second()),
        Err(_) => "--:--:--".into(),
    }
}

/// A count with a k/M/G suffix: `999`, `12.3k`, `4.50M`.
pub fn si(n: f64) -> String {
    let n = n + 0.0; // no "-0"
    if !n.is_finite() {
        return "?".into();
    }
    let a = n.abs();
    if a < 1000.0 {
        if a == a.trunc() {
            format!("{n:.0}")
        } else {
            format!("{n:.1}")
        }
    } else if a < 1e6 {
        format!("{:.1}k", n / 1e3)
    } else if a < 1e9 {
        format!("{:.2}M", n / 1e6)
    } else {
        format!("{:.2}G", n / 1e9)
    }
}

/// Bytes with binary units: `512 B`, `1.5 KiB`, `3.2 MiB`.
pub fn bytes(n: f64) -> String {
    let n = n + 0.0; // no "-0"
    if !n.is_finite() {
        return "?".into();
    }
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n;
    let mut u = 0;
    while v.abs() >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A duration in seconds, two units at most: `42s`, `3m05s`, `2h10m`.
pub fn duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "?".into();
    }
    let s = secs as u64;
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else if s < 86400 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}d{:02}h", s / 86400, (s % 86400) / 3600)
    }
}

/// Milliseconds: `3.1`, `120`, `2.5s`.
pub fn millis(ms: f64) -> String {
    if !ms.is_finite() || ms < 0.0 {
        "?".into()
    } else if ms < 10.0 {
        format!("{ms:.1}")
    } else if ms < 10_000.0 {
        format!("{ms:.0}")
    } else {
        format!("{:.1}s", ms / 1000.0)
    }
}

/// Milliseconds with a unit: `3.1ms`, `120ms`, `2.5s`.
pub fn millis_unit(ms: f64) -> String {
    let m = millis(ms);
    if m.ends_with('s') || m == "?" {
        m
    } else {
        format!("{m}ms")
    }
}

/// Cuts `s` to at most `width` characters, ending with `…` when cut.
pub fn cut(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_owned();
    }
    if width == 0 {
        return String::new();
    }
    let mut out: String = s.chars().take(width - 1).collect();
    out.push('…');
    out
}

/// One line of text: control characters (from an error body) become spaces.
pub fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Bytes in at most 7 characters for table cells: `512B`, `1.5K`, `12.3M`.
pub fn bytes_short(n: f64) -> String {
    let n = n + 0.0; // no "-0"
    if !n.is_finite() {
        return "?".into();
    }
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut v = n;
    let mut u = 0;
    while v.abs() >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(si(999.0), "999");
        assert_eq!(si(12_345.0), "12.3k");
        assert_eq!(si(4_500_000.0), "4.50M");
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(bytes(1536.0), "1.5 KiB");
        assert_eq!(duration(185.0), "3m05s");
        assert_eq!(millis(3.12), "3.1");
        assert_eq!(millis_unit(3.12), "3.1ms");
        assert_eq!(millis_unit(30_000.0), "30.0s");
        assert_eq!(si([].iter().sum::<f64>()), "0");
        assert_eq!(cut("abcdef", 4), "abc…");
        assert_eq!(one_line("a\nb\tc"), "a b c");
        let t = parse_time_ms("2026-11-25T13:00:05.250Z").unwrap();
        assert_eq!(clock(t), "13:00:05");
        assert_eq!(parse_time_ms("yesterday"), None);
    }
}

//! The one grammar for durations and sizes, used by every flag of
//! `fanout serve` and `fanout-load`, the registry (`delivery.timeout`,
//! `diskBudget`, ...) and the load test's scenario files, so a value copied
//! from one place means the same in another.
//!
//! Durations: one or more `<integer><unit>` terms, added up: `500ms`, `10s`,
//! `2m`, `1h`, `1d`, `1m30s` (units `ms`, `s`, `m`, `h`, `d`, as in
//! Prometheus; no fractions, no bare numbers: `1.5s` is `1500ms`).
//!
//! Sizes: a number of bytes (`1048576`), or an integer and a unit, with or
//! without a space: `B`; powers of 1024 `KiB`, `MiB`, `GiB`, `TiB` (also
//! `Ki`, `Mi`, `Gi`, `Ti`, as Kubernetes writes them); powers of 1000 `KB`,
//! `MB`, `GB`, `TB` (also `K`, `M`, `G`, `T`).

use std::time::Duration;

/// Parses a duration (see the module docs).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let bad = || format!("{text:?} is not a duration like 500ms, 10s, 2m, 1h or 1m30s");
    if text.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let secs = |k: u64| Duration::from_secs(n.saturating_mul(k));
        let term = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => secs(1),
            "m" => secs(60),
            "h" => secs(3600),
            "d" => secs(86_400),
            "" => return Err(format!("{text:?} has no unit: write e.g. {n}s or {n}ms")),
            _ => return Err(bad()),
        };
        total = total.saturating_add(term);
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// Writes `d` so that [`parse_duration`] reads it back: `1m30s`, `250ms`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if ms % 1000 != 0 {
        return format!("{ms}ms");
    }
    let mut secs = d.as_secs();
    let mut out = String::new();
    for (unit, k) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= k {
            out.push_str(&format!("{}{unit}", secs / k));
            secs %= k;
        }
    }
    out
}

/// Parses a size in bytes (see the module docs).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let bad = || format!("{text:?} is not a size like 1048576, 512KiB, 64MiB or 1GiB");
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    if digits == 0 {
        return Err(bad());
    }
    let n: u64 = text[..digits].parse().map_err(|_| bad())?;
    let mult: u64 = match text[digits..].trim() {
        "" | "B" => 1,
        "KiB" | "Ki" => 1 << 10,
        "MiB" | "Mi" => 1 << 20,
        "GiB" | "Gi" => 1 << 30,
        "TiB" | "Ti" => 1 << 40,
        "KB" | "K" => 1_000,
        "MB" | "M" => 1_000_000,
        "GB" | "G" => 1_000_000_000,
        "TB" | "T" => 1_000_000_000_000,
        _ => return Err(bad()),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_durations() {
        let s = Duration::from_secs;
        for (text, want) in [
            ("500ms", Duration::from_millis(500)),
            ("10s", s(10)),
            ("2m", s(120)),
            ("1h", s(3600)),
            ("1d", s(86_400)),
            ("1m30s", s(90)),
            (" 30s ", s(30)),
            ("0s", s(0)),
        ] {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
            assert_eq!(parse_duration(&format_duration(want)), Ok(want), "{text}");
        }
        for bad in ["", "s", "1.5s", "10", "3w", "-1s", "1 s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert!(parse_duration("10").unwrap_err().contains("no unit"));
    }

    #[test]
    fn units_sizes() {
        for (text, want) in [
            ("1048576", 1 << 20),
            ("512B", 512),
            ("64KiB", 64 << 10),
            ("64Ki", 64 << 10),
            ("32MiB", 32 << 20),
            ("32 MiB", 32 << 20),
            ("1GiB", 1 << 30),
            ("1TiB", 1 << 40),
            ("10MB", 10_000_000),
            ("10M", 10_000_000),
            ("1TB", 1_000_000_000_000),
        ] {
            assert_eq!(parse_size(text), Ok(want), "{text}");
        }
        for bad in ["", "MiB", "1.5GiB", "1 parsec", "99999999999999999999TiB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}

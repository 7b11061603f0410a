//! Sizes as people read them, the same in every listing, report and log line.

/// Bytes as `12.3 MiB` (binary units, one decimal), or `512 B` below a KiB.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

/// An age the way kubectl's AGE column shows it (`45s`, `5m30s`, `3h12m`, `2d4h`, `40d`), so
/// that a table read on a terminal answers "how old?" at a glance. Negative ages (a clock ahead
/// of this one) print as `0s`.
pub fn human_age(seconds: i64) -> String {
    let s = seconds.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86_400);
    match () {
        _ if s < 120 => format!("{s}s"),
        _ if m < 10 => match s % 60 {
            0 => format!("{m}m"),
            rest => format!("{m}m{rest}s"),
        },
        _ if h < 3 => format!("{m}m"),
        _ if h < 8 => match m % 60 {
            0 => format!("{h}h"),
            rest => format!("{h}h{rest}m"),
        },
        _ if h < 48 => format!("{h}h"),
        _ if d < 8 => match h % 24 {
            0 => format!("{d}d"),
            rest => format!("{d}d{rest}h"),
        },
        _ if d < 365 * 2 => format!("{d}d"),
        _ if d < 365 * 8 => match d % 365 {
            0 => format!("{}y", d / 365),
            rest => format!("{}y{rest}d", d / 365),
        },
        _ => format!("{}y", d / 365),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(human_age(-5), "0s");
        assert_eq!(human_age(45), "45s");
        assert_eq!(human_age(119), "119s");
        assert_eq!(human_age(300), "5m");
        assert_eq!(human_age(330), "5m30s");
        assert_eq!(human_age(2 * 3600 + 59 * 60), "179m");
        assert_eq!(human_age(3 * 3600 + 12 * 60), "3h12m");
        assert_eq!(human_age(5 * 3600), "5h");
        assert_eq!(human_age(30 * 3600), "30h");
        assert_eq!(human_age(2 * 86_400 + 4 * 3600), "2d4h");
        assert_eq!(human_age(40 * 86_400), "40d");
        assert_eq!(human_age(3 * 365 * 86_400 + 86_400), "3y1d");
        assert_eq!(human_age(10 * 365 * 86_400), "10y");
    }

    #[test]
    fn sizes() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024 * 1024), "5.0 GiB");
    }
}

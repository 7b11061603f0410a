//! The Go spellings K3s reads and writes: durations (`time.ParseDuration`: `30s`, `5m`, `1h30m`)
//! and booleans (`strconv.ParseBool`), which flags, config files and the S3 config Secret are read
//! with, so a value K3s accepts is accepted here too; and the JSON of a string map as Go's
//! `json.Marshal` writes it, so a file K3s would write is written byte for byte.

use std::collections::BTreeMap;
use std::time::Duration;

/// A non-negative Go-style duration; `0` alone means zero.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let span: jiff::Span = s.parse().map_err(|e| format!("invalid duration {s:?} (examples: 30s, 5m, 1h30m): {e}"))?;
    let signed = jiff::SignedDuration::try_from(span).map_err(|e| format!("invalid duration {s:?}: {e}"))?;
    Duration::try_from(signed).map_err(|_| format!("invalid duration {s:?}: must not be negative"))
}

/// Go's `strconv.ParseBool`: `1 t T TRUE true True`, `0 f F FALSE false False`.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// A `map[string]string` as Go's `json.Marshal` writes it: compact, keys sorted by bytes, and
/// strings escaped Go's way (`<`, `>`, `&`, U+2028 and U+2029 as `\u` escapes, control
/// characters as `\n`, `\r`, `\t`, `\b`, `\f` or `\u00XX`).
pub fn marshal_string_map(map: &BTreeMap<String, String>) -> Vec<u8> {
    let mut out = String::from("{");
    for (i, (k, v)) in map.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_string(&mut out, k);
        out.push(':');
        push_json_string(&mut out, v);
    }
    out.push('}');
    out.into_bytes()
}

fn push_json_string(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' | '\u{0}'..='\u{1f}' => {
                let n = c as u32;
                out.push_str("\\u");
                for shift in [12, 8, 4, 0] {
                    out.push(HEX[((n >> shift) & 0xf) as usize] as char);
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_go_style() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-5s").is_err());
    }

    #[test]
    fn string_maps_as_go_marshals_them() {
        let map = BTreeMap::from([
            ("z".to_string(), "last".to_string()),
            ("a".to_string(), "<b>&\"q\"\\ \n\t\u{1}\u{2028}é".to_string()),
        ]);
        // Go: json.Marshal(map[string]string{...})
        let expected = r#"{"a":"\u003cb\u003e\u0026\"q\"\\ \n\t\u0001\u2028é","z":"last"}"#;
        assert_eq!(String::from_utf8(marshal_string_map(&map)).unwrap(), expected);
        assert_eq!(marshal_string_map(&BTreeMap::new()), b"{}");
        // What serde reads back is the same map.
        let back: BTreeMap<String, String> = serde_json::from_slice(&marshal_string_map(&map)).unwrap();
        assert_eq!(back, map);
    }

    #[test]
    fn booleans_in_go_style() {
        for t in ["1", "t", "T", "TRUE", "true", "True"] {
            assert_eq!(parse_bool(t), Some(true), "{t}");
        }
        for f in ["0", "f", "F", "FALSE", "false", "False"] {
            assert_eq!(parse_bool(f), Some(false), "{f}");
        }
        for bad in ["yes", "tRUE", "", " true"] {
            assert_eq!(parse_bool(bad), None, "{bad:?}");
        }
    }
}

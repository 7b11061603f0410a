//! Printing: kubectl-style `-o table|json|yaml`, K3s's `ls` table, human sizes.

use super::args::OutputFormat;
pub use etcdsnap::units::human_bytes;
use etcdsnap_kube::RecordResource;
use etcdsnap_storage::SnapshotRecord;
use serde::Serialize;
use std::io::Write;

/// Columns aligned like Go's tabwriter with padding 1 (what K3s prints).
pub fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; columns];
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < row.len() {
                line.push_str(&" ".repeat(widths[i] - cell.chars().count() + 1));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// RFC 3339 with whole seconds, as Kubernetes prints times.
pub fn rfc3339(t: jiff::Timestamp) -> String {
    jiff::fmt::strtime::format("%Y-%m-%dT%H:%M:%SZ", t).unwrap_or_else(|_| t.to_string())
}

/// A Kubernetes `List` of ETCDSnapshotFile objects, named by their ConfigMap-style key as K3s's
/// list does.
pub fn as_list(records: &[SnapshotRecord]) -> serde_json::Value {
    let items: Vec<serde_json::Value> = records
        .iter()
        .map(|r| {
            let mut cr = r.to_resource();
            cr.metadata.name = Some(r.key());
            serde_json::to_value(&cr).unwrap_or_default()
        })
        .collect();
    serde_json::json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": items})
}

/// Prints a value as JSON or YAML.
pub fn print_structured<T: Serialize>(value: &T, format: OutputFormat) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    match format {
        OutputFormat::Yaml => {
            let text = serde_norway::to_string(value).map_err(std::io::Error::other)?;
            out.write_all(text.as_bytes())
        }
        _ => {
            let text = serde_json::to_string_pretty(value).map_err(std::io::Error::other)?;
            writeln!(out, "{text}")
        }
    }
}

/// `ls` output: K3s's table, or the List object.
pub fn print_records(records: &[SnapshotRecord], format: OutputFormat) -> std::io::Result<()> {
    match format {
        OutputFormat::Table => {
            // K3s's four columns, then the last restore drill's result.
            let mut rows = vec![["Name", "Location", "Size", "Created", "Drill"].map(String::from).to_vec()];
            for r in records {
                let drill = match &r.drill {
                    Some(d) if d.passed() => "passed".to_string(),
                    Some(_) => "failed".to_string(),
                    None => "-".to_string(),
                };
                rows.push(vec![
                    r.name.to_string(),
                    r.location.clone(),
                    r.size.to_string(),
                    rfc3339(r.created_at),
                    drill,
                ]);
            }
            print!("{}", table(&rows));
            Ok(())
        }
        _ => print_structured(&as_list(records), format),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_like_tabwriter() {
        let rows = vec![vec!["Name".into(), "Size".into()], vec!["a-long-name".into(), "1".into()]];
        assert_eq!(table(&rows), "Name        Size\na-long-name 1\n");
    }
}

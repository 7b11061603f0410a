//! Printing: kubectl-style `-o table|json|yaml`, K3s's `ls` table, human sizes.
//!
//! One file per printed thing: its typed view (`#[derive(Serialize)]`, camelCase, what `-o
//! json|yaml` prints) with its table beside it. This file holds what they share: the table
//! layout, how cells are written, structured printing.
//!
//! Tables are for people and `-o json|yaml` for programs. On a terminal, tables show sizes as
//! `64.1 MiB`, ages (`5m ago`) and shortened `file://` locations, and fit its width; into a
//! pipe or a file they show whole bytes, RFC 3339 times and full locations, as K3s's do, for
//! the scripts that parse them. Structured output is always exact.
//!
//! Everything printed on stdout goes through [`emit`] (or [`print`]), which returns the write's
//! error: a reader that went away (`| head`) ends the command quietly (`cli::main`).

pub mod chains;
pub mod drill;
pub mod pitr;
pub mod prune;
pub mod reconcile;
pub mod records;
pub mod resources;
pub mod restore;
pub mod save;
pub mod verify;

use super::flags::OutputFormat;
use etcdsnap::units::human_age;
pub use etcdsnap::units::human_bytes;
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

/// Writes `text` to stdout and flushes it.
pub fn emit(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// How table cells are written for whoever reads them: a person at a terminal, or a pipe.
#[derive(Debug, Clone, Copy)]
pub struct Cells {
    terminal: bool,
    /// The terminal's width in columns, when stdout is one.
    width: Option<usize>,
    now: jiff::Timestamp,
}

/// `file://` locations longer than this are shortened on a terminal, keeping the end.
const LOCATION_WIDTH: usize = 60;

impl Cells {
    /// For tables printed on stdout.
    pub fn for_stdout() -> Cells {
        let stdout = std::io::stdout();
        let terminal = std::io::IsTerminal::is_terminal(&stdout);
        let width = terminal.then(|| terminal_width(&stdout)).flatten();
        Cells { terminal, width, now: etcdsnap_storage::clock::now() }
    }

    #[cfg(test)]
    pub fn new(terminal: bool, now: jiff::Timestamp) -> Cells {
        Cells { terminal, width: None, now }
    }

    /// The same with a terminal `width` columns wide.
    #[cfg(test)]
    pub fn with_width(self, width: usize) -> Cells {
        Cells { width: Some(width), ..self }
    }

    /// Whether a person reads the table (stdout is a terminal).
    pub fn terminal(&self) -> bool {
        self.terminal
    }

    /// The width to fit, when stdout is a terminal.
    pub fn width(&self) -> Option<usize> {
        self.width
    }

    /// `64.1 MiB` on a terminal; whole bytes into a pipe, as K3s prints them for scripts.
    pub fn size(&self, bytes: u64) -> String {
        if self.terminal { human_bytes(bytes) } else { bytes.to_string() }
    }

    /// A size recorded as a Kubernetes quantity (`67174432`); shown as is when it is not a plain
    /// byte count.
    pub fn quantity(&self, quantity: &str) -> String {
        quantity.parse::<u64>().map(|b| self.size(b)).unwrap_or_else(|_| quantity.to_string())
    }

    /// `5m ago` on a terminal, RFC 3339 otherwise (scripts and logs want a fixed point in time).
    pub fn created(&self, t: jiff::Timestamp) -> String {
        if self.terminal { format!("{} ago", human_age(self.now.duration_since(t).as_secs())) } else { rfc3339(t) }
    }

    /// Long `file://` locations lose their leading directories on a terminal, where the full
    /// path would push every other column off the screen; pipes get them whole.
    pub fn location(&self, location: &str) -> String {
        if self.terminal { shorten_file_location(location, LOCATION_WIDTH) } else { location.to_string() }
    }
}

/// The terminal's width: `$COLUMNS` when set (what a shell says), else asked of the terminal.
fn terminal_width(stdout: &std::io::Stdout) -> Option<usize> {
    let columns = std::env::var("COLUMNS").ok().and_then(|c| c.trim().parse().ok()).filter(|c: &usize| *c > 0);
    columns.or_else(|| terminal_size::terminal_size_of(stdout).map(|(w, _)| usize::from(w.0)))
}

/// `file:///var/lib/rancher/k3s/server/db/snapshots/x` → `file://…/db/snapshots/x`: the last
/// directories are kept whole while the result fits `width`, the snapshot's file name always.
fn shorten_file_location(location: &str, width: usize) -> String {
    let Some(path) = location.strip_prefix("file://") else {
        return location.to_string();
    };
    if location.chars().count() <= width {
        return location.to_string();
    }
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let Some((file, dirs)) = parts.split_last() else {
        return location.to_string();
    };
    let mut tail = (*file).to_string();
    for dir in dirs.iter().rev() {
        let longer = format!("{dir}/{tail}");
        if "file://…/".chars().count() + longer.chars().count() > width {
            break;
        }
        tail = longer;
    }
    format!("file://…/{tail}")
}

/// The shortest a name is cut to (its head, `…`, and the time at its end stay readable).
const MIN_NAME: usize = 24;

/// Rows (a header first) that fit `width` columns: names (the first column) lose their middle
/// first, down to [`MIN_NAME`] characters, then, if `drop_last`, the last column goes.
pub fn fit(mut rows: Vec<Vec<String>>, width: usize, drop_last: bool) -> Vec<Vec<String>> {
    let line = |rows: &[Vec<String>]| {
        let columns = rows.first().map_or(0, Vec::len);
        (0..columns).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).sum::<usize>()
            + columns.saturating_sub(1)
    };
    for dropping in [false, true] {
        if dropping && !drop_last {
            break;
        }
        if dropping && line(&rows) > width {
            for row in &mut rows {
                row.pop();
            }
        }
        let excess = line(&rows).saturating_sub(width);
        if excess == 0 {
            break;
        }
        let longest = rows.iter().map(|r| r[0].chars().count()).max().unwrap_or(0);
        let target = longest.saturating_sub(excess).max(MIN_NAME);
        for row in rows.iter_mut().skip(1) {
            row[0] = elide_middle(&row[0], target);
        }
    }
    rows
}

/// `name` cut to `max` characters by replacing its middle with `…`, keeping the end (the time
/// and extension that tell snapshots apart) longer than the start.
fn elide_middle(name: &str, max: usize) -> String {
    let chars: Vec<char> = name.chars().collect();
    if chars.len() <= max || max < 3 {
        return name.to_string();
    }
    let keep = max - 1;
    let head = keep * 2 / 5;
    let tail = keep - head;
    format!("{}…{}", chars[..head].iter().collect::<String>(), chars[chars.len() - tail..].iter().collect::<String>())
}

/// RFC 3339 with whole seconds, as Kubernetes prints times.
pub fn rfc3339(t: jiff::Timestamp) -> String {
    jiff::fmt::strtime::format("%Y-%m-%dT%H:%M:%SZ", t).unwrap_or_else(|_| t.to_string())
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

/// Prints a table for people, or the typed view as JSON or YAML for programs; only the one
/// printed is built.
pub fn print<T: Serialize>(
    format: OutputFormat,
    view: impl FnOnce() -> T,
    table: impl FnOnce(Cells) -> String,
) -> std::io::Result<()> {
    match format {
        OutputFormat::Table | OutputFormat::Wide => emit(&table(Cells::for_stdout())),
        format => print_structured(&view(), format),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_lose_their_middle_and_keep_their_end() {
        assert_eq!(elide_middle("abcdefghij", 10), "abcdefghij");
        let cut = elide_middle("etcd-snapshot-node-1-1700000000.zst", 24);
        assert_eq!(cut.chars().count(), 24);
        assert!(cut.ends_with("1700000000.zst") && cut.starts_with("etcd-snap"), "{cut}");
    }

    #[test]
    fn tables_align_like_tabwriter() {
        let rows = vec![vec!["Name".into(), "Size".into()], vec!["a-long-name".into(), "1".into()]];
        assert_eq!(table(&rows), "Name        Size\na-long-name 1\n");
    }

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn a_terminal_gets_ages_and_short_locations_a_pipe_gets_them_whole() {
        let now = at("2026-12-02T10:00:00Z");
        let loc = "file:///var/lib/rancher/k3s/server/db/snapshots/etcd-snapshot-k3s-server-1-1764669600";
        let tty = Cells::new(true, now);
        let pipe = Cells::new(false, now);
        assert_eq!(tty.created(at("2026-12-02T09:55:00Z")), "5m ago");
        assert_eq!(pipe.created(at("2026-12-02T09:55:00Z")), "2026-12-02T09:55:00Z");
        assert_eq!(pipe.location(loc), loc);
        let short = tty.location(loc);
        assert_eq!(short, "file://…/db/snapshots/etcd-snapshot-k3s-server-1-1764669600");
        assert!(short.chars().count() <= LOCATION_WIDTH, "{short}");
        // Short ones and S3 ones stay as they are.
        assert_eq!(tty.location("file:///db/x"), "file:///db/x");
        let s3 = format!("s3://bucket/{}", "f/".repeat(40));
        assert_eq!(tty.location(&s3), s3);
        // A file name longer than the width is never cut.
        let long = format!("file:///a/b/{}", "n".repeat(80));
        assert_eq!(tty.location(&long), format!("file://…/{}", "n".repeat(80)));
    }

    #[test]
    fn sizes_are_human_on_a_terminal_whole_bytes_in_a_pipe_and_other_quantities_stay() {
        let tty = Cells::new(true, at("2026-12-02T10:00:00Z"));
        let pipe = Cells::new(false, at("2026-12-02T10:00:00Z"));
        assert_eq!(tty.size(67_174_432), "64.1 MiB");
        assert_eq!(tty.quantity("67174432"), "64.1 MiB");
        assert_eq!(pipe.size(67_174_432), "67174432");
        assert_eq!(pipe.quantity("67174432"), "67174432");
        assert_eq!(tty.quantity("64Mi"), "64Mi");
    }
}

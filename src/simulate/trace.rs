//! The trace file: CSV as spreadsheets and scripts write it, read strictly, naming the line of every problem.
//!
//! Two forms, told apart by the header (names in any case):
//! - load, `t,concurrency` or `t,rps`: service-total load from `t` (whole seconds) until the next row;
//! - decider inputs, `t,ready,stable,panic`: one decider tick per row (`stable` and `panic` both empty means
//!   "no data" for that tick).
//!
//! Blank lines, rows of empty cells and lines starting with `#` are skipped. Times never go backwards. What a
//! spreadsheet adds is accepted: a UTF-8 byte-order mark, quoted cells (`"t","concurrency"`), CRLF line ends,
//! and empty columns after the last named one (`t,rps,,` and `0,5,,`); RFC 4180's quoting rules come from the
//! `csv` crate.

use std::fmt;

use ebb_config::Metric;

use crate::numbers::fmt_num;

/// A parsed trace.
#[derive(Debug, Clone, PartialEq)]
pub enum Trace {
    /// Load over time; the pods are modelled.
    Load {
        /// What the values measure.
        metric: Metric,
        /// Rows in time order.
        rows: Vec<LoadRow>,
    },
    /// The decider's inputs, tick by tick.
    Decider {
        /// Rows in time order.
        rows: Vec<DeciderRow>,
    },
}

/// One row of a load trace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadRow {
    /// Whole seconds.
    pub t: u64,
    /// Service-total concurrency or requests per second from `t` on.
    pub value: f64,
}

/// One row of a decider-input trace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeciderRow {
    /// Seconds (fractions allowed).
    pub t: f64,
    /// Ready pods.
    pub ready: u32,
    /// Stable and panic window averages; `None` for a tick without data.
    pub observed: Option<(f64, f64)>,
}

/// A problem in the trace, at a 1-based line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

const LOAD_CONCURRENCY: &[&str] = &["t", "concurrency"];
const LOAD_RPS: &[&str] = &["t", "rps"];
const DECIDER: &[&str] = &["t", "ready", "stable", "panic"];
/// Longest span of a load trace: it is simulated second by second.
const MAX_LOAD_SPAN_SECS: f64 = 31.0 * 24.0 * 3600.0;
const EXPECTED_HEADERS: &str = "`t,concurrency`, `t,rps` or `t,ready,stable,panic`";

/// The trace's rows that hold something, as (1-based line, trimmed cells); comments, blank lines and rows of
/// empty cells left out.
fn records(text: &str) -> Result<Vec<(usize, Vec<String>)>, TraceError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .comment(Some(b'#'))
        .from_reader(text.as_bytes());
    // The reader counts lines by records, and a quoted cell may span lines: count them up to the record's
    // first byte (its position may be that of the line ends and blank lines before it).
    let line_at = |byte: u64| {
        let bytes = text.as_bytes();
        let start = bytes[byte as usize..].iter().position(|b| !matches!(b, b'\r' | b'\n'));
        let start = start.map_or(bytes.len(), |skip| byte as usize + skip);
        bytes[..start].iter().filter(|&&b| b == b'\n').count() + 1
    };
    let mut records = Vec::new();
    let mut record = csv::StringRecord::new();
    loop {
        let start = reader.position().byte();
        match reader.read_record(&mut record) {
            Ok(false) => return Ok(records),
            Ok(true) => {}
            Err(e) => {
                let line = line_at(e.position().map_or(start, csv::Position::byte));
                return Err(TraceError { line, message: format!("not valid CSV: {}", e.kind_text()) });
            }
        }
        let line = line_at(record.position().map_or(start, csv::Position::byte));
        let cells: Vec<String> = record.iter().map(str::to_owned).collect();
        // A comment indented by spaces, which the reader's own rule (a `#` first) does not see.
        if cells.first().is_some_and(|c| c.starts_with('#')) || cells.iter().all(String::is_empty) {
            continue;
        }
        records.push((line, cells));
    }
}

/// A CSV error's kind in words, without the position the trace error names already.
trait KindText {
    fn kind_text(&self) -> String;
}

impl KindText for csv::Error {
    fn kind_text(&self) -> String {
        match self.kind() {
            csv::ErrorKind::Utf8 { err, .. } => format!("invalid UTF-8 in field {}", err.field() + 1),
            csv::ErrorKind::Io(err) => err.to_string(),
            _ => self.to_string(),
        }
    }
}

/// Parses a whole trace file.
pub fn parse(text: &str) -> Result<Trace, TraceError> {
    let records = records(text)?;
    let mut lines = records.iter().map(|(line, cells)| (*line, cells.as_slice()));
    let Some((header_line, header)) = lines.next() else {
        return Err(TraceError { line: 1, message: format!("missing header: expected {EXPECTED_HEADERS}") });
    };
    let named = header.len() - header.iter().rev().take_while(|c| c.is_empty()).count();
    let header = &header[..named];
    let lowered: Vec<String> = header.iter().map(|c| c.to_ascii_lowercase()).collect();
    let columns: Vec<&str> = lowered.iter().map(String::as_str).collect();
    let header = header.join(",");
    let err = |line, message: String| TraceError { line, message };
    let mut last_t = f64::NEG_INFINITY;
    let mut check_time = |line: usize, t: f64| {
        if t < last_t {
            return Err(err(
                line,
                format!("time goes backwards: t={} after t={}", fmt_num(t), fmt_num(last_t)),
            ));
        }
        last_t = t;
        Ok(())
    };
    if columns == LOAD_CONCURRENCY || columns == LOAD_RPS {
        let metric = if columns == LOAD_RPS { Metric::Rps } else { Metric::Concurrency };
        let mut rows = Vec::new();
        for (line, text) in lines {
            let fields = split(line, text, 2)?;
            let t = number(line, "t", fields[0])?;
            if t.fract() != 0.0 {
                return Err(err(
                    line,
                    format!("t must be whole seconds in a load trace, got {:?}", fields[0]),
                ));
            }
            check_time(line, t)?;
            if rows.first().is_some_and(|first: &LoadRow| t - first.t as f64 > MAX_LOAD_SPAN_SECS) {
                return Err(err(line, "a load trace may span at most 31 days".into()));
            }
            let value = number(line, columns[1], fields[1])?;
            rows.push(LoadRow { t: t as u64, value });
        }
        if rows.is_empty() {
            return Err(err(header_line + 1, "no rows after the header".into()));
        }
        Ok(Trace::Load { metric, rows })
    } else if columns == DECIDER {
        let mut rows = Vec::new();
        for (line, text) in lines {
            let fields = split(line, text, 4)?;
            let t = number(line, "t", fields[0])?;
            check_time(line, t)?;
            let ready = fields[1].parse::<u32>().map_err(|_| {
                err(line, format!("ready must be a whole number of pods, got {:?}", fields[1]))
            })?;
            let observed = match (fields[2], fields[3]) {
                ("", "") => None,
                ("", _) | (_, "") => {
                    return Err(err(
                        line,
                        "stable and panic must both be given, or both empty for no data".into(),
                    ));
                }
                (stable, panic) => Some((number(line, "stable", stable)?, number(line, "panic", panic)?)),
            };
            rows.push(DeciderRow { t, ready, observed });
        }
        if rows.is_empty() {
            return Err(err(header_line + 1, "no rows after the header".into()));
        }
        Ok(Trace::Decider { rows })
    } else {
        Err(err(header_line, format!("missing header: expected {EXPECTED_HEADERS}, got {header:?}")))
    }
}

/// A row's `n` fields: its first `n` cells, when it has `n` or more and the rest are empty (a spreadsheet's
/// unused columns).
fn split(line: usize, cells: &[String], n: usize) -> Result<Vec<&str>, TraceError> {
    if cells.len() < n || cells[n..].iter().any(|c| !c.is_empty()) {
        return Err(TraceError {
            line,
            message: format!("expected {n} fields, got {}: {:?}", cells.len(), cells.join(",")),
        });
    }
    Ok(cells[..n].iter().map(String::as_str).collect())
}

/// A finite, non-negative number.
fn number(line: usize, column: &str, text: &str) -> Result<f64, TraceError> {
    match ebb_config::value::parse_number(text) {
        Some(v) if v >= 0.0 => Ok(v),
        _ => {
            Err(TraceError { line, message: format!("{column} must be a non-negative number, got {text:?}") })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_forms_with_comments_and_blank_lines() {
        let load = parse("# a spike\nt,concurrency\n0,0\n\n10,150\n").unwrap();
        let rows = vec![LoadRow { t: 0, value: 0.0 }, LoadRow { t: 10, value: 150.0 }];
        assert_eq!(load, Trace::Load { metric: Metric::Concurrency, rows });
        let decider = parse("t,ready,stable,panic\n0,3,10,20\n2.5,3,,\n").unwrap();
        let rows = vec![
            DeciderRow { t: 0.0, ready: 3, observed: Some((10.0, 20.0)) },
            DeciderRow { t: 2.5, ready: 3, observed: None },
        ];
        assert_eq!(decider, Trace::Decider { rows });
    }

    #[test]
    fn reads_csv_as_spreadsheets_write_it() {
        let expected = Trace::Load {
            metric: Metric::Concurrency,
            rows: vec![LoadRow { t: 0, value: 0.0 }, LoadRow { t: 10, value: 150.5 }],
        };
        // A byte-order mark, quoted header and cells, CRLF, unused columns, a row of empty cells.
        let excel = "\u{feff}\"t\",\"Concurrency\",,\r\n\"0\",\"0\",,\r\n,,,\r\n10,150.5,,\r\n";
        assert_eq!(parse(excel).unwrap(), expected);
        assert_eq!(parse("T, concurrency\n  # indented comment\n0,0\n10,150.5\n").unwrap(), expected);
        // The decider form keeps its empty stable and panic cells apart from unused columns.
        let decider = parse("\u{feff}t,ready,stable,panic,\r\n0,3,,,\r\n").unwrap();
        assert_eq!(decider, Trace::Decider { rows: vec![DeciderRow { t: 0.0, ready: 3, observed: None }] });
        // Lines are counted as the file has them, a cell spanning lines included.
        let e = parse("\u{feff}\"t\",\"rps\"\r\n\"0\r\n\",1\r\n5,x\r\n").unwrap_err();
        assert_eq!(e.to_string(), "line 4: rps must be a non-negative number, got \"x\"");
    }

    #[test]
    fn every_problem_names_its_line() {
        let line = |text: &str| parse(text).unwrap_err().line;
        assert_eq!(line(""), 1);
        assert_eq!(line("0,5\n1,6\n"), 1, "data where the header should be");
        assert_eq!(line("t,rps\n0,1\n1,x\n"), 3);
        assert_eq!(line("t,rps\n0,1\n1,-1\n"), 3);
        assert_eq!(line("t,rps\n5,1\n4,1\n"), 3);
        assert_eq!(line("t,rps\n0,1,2\n"), 2);
        assert_eq!(line("t,rps,,\n0,1,,2\n"), 2, "a value in an unnamed column");
        assert_eq!(line("t,ready,stable,panic\n0,3,,\n1,3\n"), 3, "a short row");
        assert_eq!(line("t,rps\n0.5,1\n"), 2);
        assert_eq!(line("t,rps\n"), 2);
        assert_eq!(line("t,ready,stable,panic\n0,1.5,1,1\n"), 2);
        assert_eq!(line("t,ready,stable,panic\n0,1,,1\n"), 2);
        assert_eq!(line("t,ready,stable,panic\n0,1,1,NaN\n"), 2);
        let e = parse("t,rps\n5,1\n\n4,1\n").unwrap_err();
        assert_eq!(e.to_string(), "line 4: time goes backwards: t=4 after t=5");
    }
}

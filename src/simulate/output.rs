//! The output CSV and the summary, as text.

use std::fmt::Write;

use super::model::{Row, Summary, ToZero};
use crate::numbers::fmt_num;

/// The output header.
pub const HEADER: &str = "t,ready,stable,panic,desired,replicas,ebc,panic_mode,mode,reason";

/// The output CSV: the header and one line per decider tick. Empty cells mean "no data" (stable, panic) or
/// "no decision" (desired, ebc).
pub fn csv(rows: &[Row]) -> String {
    let mut out = String::with_capacity(64 + rows.len() * 96);
    out.push_str(HEADER);
    out.push('\n');
    for row in rows {
        let (stable, panic) =
            row.observed.map_or((String::new(), String::new()), |o| (fmt_num(o.stable), fmt_num(o.panic)));
        let _ = writeln!(
            out,
            "{},{},{stable},{panic},{},{},{},{},{},{}",
            fmt_num(row.t),
            row.ready,
            row.desired.map_or(String::new(), |d| d.to_string()),
            row.replicas,
            row.ebc.map_or(String::new(), |e| e.to_string()),
            row.panic,
            row.mode,
            quote(&row.reason),
        );
    }
    out
}

/// RFC 4180 quoting, only where needed.
fn quote(cell: &str) -> String {
    if cell.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", cell.replace('"', "\"\""))
    } else {
        cell.to_owned()
    }
}

/// The summary printed on stderr.
pub fn summary(s: &Summary, ticks: usize) -> String {
    let to_zero = match s.to_zero {
        ToZero::Reached { stopped, zero } => {
            format!(
                "{}s (load stopped at t={}, zero at t={})",
                fmt_num(zero - stopped),
                fmt_num(stopped),
                fmt_num(zero)
            )
        }
        ToZero::NotReached { stopped } => {
            format!("not reached (load stopped at t={}, replicas above zero at the end)", fmt_num(stopped))
        }
        ToZero::NeverStopped => "n/a (the load never stopped)".to_owned(),
        ToZero::NoLoad => "n/a (no load in the trace)".to_owned(),
    };
    format!(
        "ebb simulate: {}s simulated, {ticks} decider ticks\n\
         pod-seconds used: {}\n\
         peak pods: {}\n\
         seconds under capacity: {} (capacity {} per pod)\n\
         scale-from-zero events: {}\n\
         time to zero after load stopped: {to_zero}\n",
        fmt_num(s.duration),
        fmt_num(s.pod_seconds),
        s.peak_pods,
        fmt_num(s.under_capacity_secs),
        fmt_num(s.capacity_per_pod),
        s.scale_from_zero,
    )
}

#[cfg(test)]
mod tests {
    use ebb_config::Mode;
    use ebb_kpa::Observed;

    use super::*;

    #[test]
    fn empty_cells_for_no_data_and_quotes_around_commas() {
        let row = |observed, desired, reason: &str| Row {
            t: 2.0,
            ready: 1,
            observed,
            desired,
            replicas: 1,
            ebc: desired.map(|_| -111),
            panic: false,
            mode: Mode::Proxy,
            reason: reason.to_owned(),
        };
        let rows = [
            row(None, None, "no data"),
            row(Some(Observed { stable: 1.5, panic: 3.0 }), Some(1), "a, \"b\""),
        ];
        assert_eq!(
            csv(&rows),
            format!(
                "{HEADER}\n2,1,,,,1,,false,proxy,no data\n2,1,1.5,3,1,1,-111,false,proxy,\"a, \"\"b\"\"\"\n"
            )
        );
    }
}

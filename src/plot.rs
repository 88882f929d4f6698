//! The SVG plot of a service's scaling, for `ebb simulate --plot` and `ebb status --service --plot`: load
//! (right axis), desired, ready and applied pods (left axis) over time, panic periods shaded, and optionally a
//! band splitting a cold start into its phases. Plain SVG text, so it needs no font or image library.

use std::fmt::Write;

use crate::numbers::fmt_num;

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 80.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 50.0;
const LOAD_COLOUR: &str = "#1f77b4";
const DESIRED_COLOUR: &str = "#ff7f0e";
const READY_COLOUR: &str = "#2ca02c";
const REPLICAS_COLOUR: &str = "#7f7f7f";
const PANIC_COLOUR: &str = "#d62728";
/// The cold-start band's height below the chart, when there is one.
const PHASES_HEIGHT: f64 = 56.0;
const PHASE_COLOURS: [&str; 5] = ["#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"];

/// One decision: the pods at time `t` (seconds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Seconds from the start.
    pub t: f64,
    /// Ready pods.
    pub ready: u32,
    /// Replicas in force (after bounds and scale-to-zero).
    pub replicas: u32,
    /// The decider's own count (`None`: no decision).
    pub desired: Option<u32>,
    /// Whether the decider was in panic.
    pub panic: bool,
}

/// What one plot shows.
#[derive(Debug, Clone, Default)]
pub struct Chart {
    /// The line above the chart.
    pub heading: String,
    /// The decisions, in time order.
    pub points: Vec<Point>,
    /// `(t, load)` samples.
    pub load: Vec<(f64, f64)>,
    /// The load's unit (`concurrency` or `rps`).
    pub load_unit: String,
    /// A cold start's phases in order, `(name, seconds)`; none: no band.
    pub phases: Vec<(String, f64)>,
}

/// Maps data to plot coordinates.
struct Scale {
    t0: f64,
    t_span: f64,
    pods_max: f64,
    load_max: f64,
}

impl Scale {
    fn x(&self, t: f64) -> f64 {
        LEFT + (t - self.t0) / self.t_span * (WIDTH - LEFT - RIGHT)
    }

    fn y(&self, value: f64, max: f64) -> f64 {
        TOP + (HEIGHT - TOP - BOTTOM) * (1.0 - value / max)
    }
}

/// The SVG of a chart.
pub fn svg(chart: &Chart) -> String {
    let (points, load) = (&chart.points, &chart.load);
    let t0 = load.first().map_or(0.0, |p| p.0).min(points.first().map_or(0.0, |r| r.t));
    let t1 = load.last().map_or(0.0, |p| p.0).max(points.last().map_or(0.0, |r| r.t));
    let pods_max =
        points.iter().map(|r| r.ready.max(r.replicas).max(r.desired.unwrap_or(0))).max().unwrap_or(0).max(1);
    let load_max = load.iter().map(|p| p.1).fold(0.0, f64::max);
    let s = Scale {
        t0,
        t_span: (t1 - t0).max(1.0),
        pods_max: nice_ceiling(f64::from(pods_max)),
        load_max: nice_ceiling(load_max.max(1.0)),
    };
    let height = if chart.phases.is_empty() { HEIGHT } else { HEIGHT + PHASES_HEIGHT };
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(out, r#"<text x="{LEFT}" y="20" font-size="14">{}</text>"#, escape(&chart.heading));
    panic_periods(&mut out, points, &s, t1);
    axes(&mut out, &s, &chart.load_unit);
    let ready: Vec<(f64, f64)> = points.iter().map(|r| (r.t, f64::from(r.ready))).collect();
    let replicas: Vec<(f64, f64)> = points.iter().map(|r| (r.t, f64::from(r.replicas))).collect();
    let desired: Vec<(f64, f64)> =
        points.iter().filter_map(|r| r.desired.map(|d| (r.t, f64::from(d)))).collect();
    step_line(&mut out, load, &s, s.load_max, t1, LOAD_COLOUR, "");
    step_line(&mut out, &replicas, &s, s.pods_max, t1, REPLICAS_COLOUR, r#" stroke-dasharray="4 3""#);
    step_line(&mut out, &ready, &s, s.pods_max, t1, READY_COLOUR, "");
    step_line(&mut out, &desired, &s, s.pods_max, t1, DESIRED_COLOUR, "");
    legend(&mut out, &chart.load_unit);
    phases_band(&mut out, &chart.phases);
    out.push_str("</svg>\n");
    out
}

/// A bar below the chart splitting a cold start into its phases, with a legend naming each and its duration
/// (short phases are thin slivers in the bar, so the legend carries the numbers).
fn phases_band(out: &mut String, phases: &[(String, f64)]) {
    let total: f64 = phases.iter().map(|p| p.1).sum();
    if phases.is_empty() || total <= 0.0 {
        return;
    }
    let (width, y) = (WIDTH - LEFT - RIGHT, HEIGHT + 4.0);
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="{y}">cold start (mean), {:.0} ms from the first request to its first byte:</text>"#,
        total * 1000.0
    );
    let (mut x, mut legend_x) = (LEFT, LEFT);
    for (i, (name, seconds)) in phases.iter().enumerate() {
        let colour = PHASE_COLOURS[i % PHASE_COLOURS.len()];
        let label = format!("{name} {}", milliseconds(*seconds));
        let w = seconds / total * width;
        let _ = writeln!(
            out,
            r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="14" fill="{colour}"><title>{}</title></rect>"#,
            y + 8.0,
            w.max(1.0),
            escape(&label)
        );
        x += w;
        let _ = writeln!(
            out,
            r#"<rect x="{legend_x:.1}" y="{:.1}" width="10" height="10" fill="{colour}"/>"#,
            y + 32.0
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            legend_x + 14.0,
            y + 41.0,
            escape(&label)
        );
        legend_x += 30.0 + 6.5 * label.len() as f64;
    }
}

/// A duration in milliseconds, with a decimal below 10 ms.
fn milliseconds(seconds: f64) -> String {
    let ms = seconds * 1000.0;
    if ms < 10.0 { format!("{ms:.1} ms") } else { format!("{ms:.0} ms") }
}

/// Shaded spans from each tick in panic to the next tick.
fn panic_periods(out: &mut String, points: &[Point], s: &Scale, t_end: f64) {
    let mut start = None;
    for (i, row) in points.iter().enumerate() {
        let next_t = points.get(i + 1).map_or(t_end, |r| r.t);
        if row.panic && start.is_none() {
            start = Some(row.t);
        }
        if let Some(begin) = start
            && (!row.panic || i + 1 == points.len())
        {
            let end = if row.panic { next_t } else { row.t };
            let (x0, x1) = (s.x(begin), s.x(end));
            let _ = writeln!(
                out,
                r#"<rect x="{x0:.1}" y="{TOP}" width="{:.1}" height="{:.1}" fill="{PANIC_COLOUR}" fill-opacity="0.12"><title>panic</title></rect>"#,
                (x1 - x0).max(1.0),
                HEIGHT - TOP - BOTTOM
            );
            start = None;
        }
    }
}

fn axes(out: &mut String, s: &Scale, load_unit: &str) {
    let (x0, x1, y0, y1) = (LEFT, WIDTH - RIGHT, TOP, HEIGHT - BOTTOM);
    let _ = writeln!(
        out,
        r##"<rect x="{x0}" y="{y0}" width="{}" height="{}" fill="none" stroke="#333"/>"##,
        x1 - x0,
        y1 - y0
    );
    for i in 0..=5 {
        let f = f64::from(i) / 5.0;
        let y = y1 - f * (y1 - y0);
        let _ = writeln!(out, r##"<line x1="{x0}" y1="{y:.1}" x2="{x1}" y2="{y:.1}" stroke="#ddd"/>"##);
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            x0 - 6.0,
            y + 4.0,
            fmt_num(f * s.pods_max)
        );
        let _ =
            writeln!(out, r#"<text x="{}" y="{:.1}">{}</text>"#, x1 + 6.0, y + 4.0, fmt_num(f * s.load_max));
        let t = s.t0 + f * s.t_span;
        let x = s.x(t);
        let _ = writeln!(
            out,
            r#"<text x="{x:.1}" y="{}" text-anchor="middle">{}s</text>"#,
            y1 + 16.0,
            fmt_num(t.round())
        );
    }
    let _ =
        writeln!(out, r#"<text x="{}" y="{}" text-anchor="middle">time</text>"#, (x0 + x1) / 2.0, y1 + 34.0);
    let _ = writeln!(
        out,
        r#"<text x="14" y="{}" transform="rotate(-90 14 {})" text-anchor="middle">pods</text>"#,
        (y0 + y1) / 2.0,
        (y0 + y1) / 2.0
    );
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" transform="rotate(90 {} {})" text-anchor="middle">load ({})</text>"#,
        WIDTH - 14.0,
        (y0 + y1) / 2.0,
        WIDTH - 14.0,
        (y0 + y1) / 2.0,
        escape(load_unit)
    );
}

/// A step line through `points` (each value holds until the next point), extended to `t_end`; only changes
/// are emitted, so long flat stretches cost nothing.
fn step_line(
    out: &mut String,
    points: &[(f64, f64)],
    s: &Scale,
    max: f64,
    t_end: f64,
    colour: &str,
    extra: &str,
) {
    let Some(&(first_t, first_v)) = points.first() else { return };
    let mut path = format!("M{:.1},{:.1}", s.x(first_t), s.y(first_v, max));
    let mut level = first_v;
    for &(t, v) in &points[1..] {
        if v != level {
            let _ = write!(path, " H{:.1} V{:.1}", s.x(t), s.y(v, max));
            level = v;
        }
    }
    let _ = write!(path, " H{:.1}", s.x(t_end));
    let _ = writeln!(out, r#"<path d="{path}" fill="none" stroke="{colour}" stroke-width="1.6"{extra}/>"#);
}

fn legend(out: &mut String, load_unit: &str) {
    let items = [
        (LOAD_COLOUR, format!("load ({load_unit}, right axis)")),
        (DESIRED_COLOUR, "desired pods".to_owned()),
        (READY_COLOUR, "ready pods".to_owned()),
        (REPLICAS_COLOUR, "replicas".to_owned()),
        (PANIC_COLOUR, "panic".to_owned()),
    ];
    let mut x = LEFT;
    for (colour, label) in items {
        let _ = writeln!(out, r#"<rect x="{x}" y="30" width="14" height="8" fill="{colour}"/>"#);
        let _ = writeln!(out, r#"<text x="{}" y="38">{}</text>"#, x + 18.0, escape(&label));
        x += 28.0 + 7.0 * label.len() as f64;
    }
}

/// The smallest of 1, 2, 5 x 10^k at or above `value`, so axis labels are round.
fn nice_ceiling(value: f64) -> f64 {
    let magnitude = 10f64.powf(value.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * magnitude).find(|&v| v >= value).unwrap_or(value)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_maxima_are_round() {
        assert_eq!(nice_ceiling(1.0), 1.0);
        assert_eq!(nice_ceiling(7.0), 10.0);
        assert_eq!(nice_ceiling(150.0), 200.0);
        assert_eq!(nice_ceiling(0.3), 0.5);
    }
}

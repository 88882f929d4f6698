//! Numbers as people read them: in `ebb simulate`'s messages and CSV cells, and on the plots' axes.

/// `12` or `12.5`, for messages, CSV cells and axis labels.
pub fn fmt_num(value: f64) -> String {
    let rounded = (value * 1e6).round() / 1e6;
    if rounded.fract() == 0.0 && rounded.abs() < 1e15 {
        format!("{}", rounded as i64)
    } else {
        let text = format!("{rounded:.6}");
        text.trim_end_matches('0').to_owned()
    }
}

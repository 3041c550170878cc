//! The Prometheus text exposition format (version 0.0.4): a family's `# HELP` and `# TYPE`
//! once, then its samples; histograms as cumulative `_bucket{le}` series with `_sum` and
//! `_count`.

use std::fmt::Write;

/// The `Content-Type` of a scrape answer in this format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One metric family being written: its HELP and TYPE once, then its samples.
pub struct Family<'a> {
    out: &'a mut String,
    name: &'static str,
}

impl<'a> Family<'a> {
    /// Starts the family `name` of `kind` (`counter`, `gauge`, `histogram`) in `out`.
    pub fn new(out: &'a mut String, name: &'static str, kind: &str, help: &str) -> Family<'a> {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Family { out, name }
    }

    /// One sample of the family itself.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: f64) {
        self.sample_of("", labels, value);
    }

    /// One sample of a series derived from the family's name (`_bucket`, `_sum`, `_count`).
    fn sample_of(&mut self, suffix: &str, labels: &[(&str, &str)], value: f64) {
        let _ = write!(self.out, "{}{suffix}", self.name);
        for (i, (key, label)) in labels.iter().enumerate() {
            let open = if i == 0 { "{" } else { "," };
            let _ = write!(self.out, "{open}{key}=\"{}\"", escape(label));
        }
        if !labels.is_empty() {
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// A histogram's samples for one set of labels: `counts[i]` observations fell at or
    /// below `bounds[i]` and above the bound before (not cumulative: this adds them up);
    /// `counts` has one more entry than `bounds`, for the `+Inf` bucket.
    pub fn histogram(&mut self, labels: &[(&str, &str)], bounds: &[f64], counts: &[u64], sum: f64) {
        let mut cumulative = 0;
        for (i, count) in counts.iter().enumerate() {
            cumulative += count;
            let le = bounds.get(i).map_or("+Inf".to_string(), f64::to_string);
            let mut with_le = labels.to_vec();
            with_le.push(("le", &le));
            self.sample_of("_bucket", &with_le, cumulative as f64);
        }
        self.sample_of("_sum", labels, sum);
        self.sample_of("_count", labels, cumulative as f64);
    }
}

/// Label values escape backslash, double quote and newline (the exposition format's rule).
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_inf() {
        let mut out = String::new();
        Family::new(&mut out, "x_seconds", "histogram", "X.").histogram(
            &[("job", "a\"b")],
            &[0.1, 1.0],
            &[2, 0, 1],
            3.5,
        );
        assert_eq!(
            out,
            "# HELP x_seconds X.\n# TYPE x_seconds histogram\n\
             x_seconds_bucket{job=\"a\\\"b\",le=\"0.1\"} 2\n\
             x_seconds_bucket{job=\"a\\\"b\",le=\"1\"} 2\n\
             x_seconds_bucket{job=\"a\\\"b\",le=\"+Inf\"} 3\n\
             x_seconds_sum{job=\"a\\\"b\"} 3.5\n\
             x_seconds_count{job=\"a\\\"b\"} 3\n"
        );
    }
}

//! Measurements and the report: HDR latency histograms (mergeable across worker processes), the
//! JSON report written by `--json`, target checks, and the summary table printed at the end.
//!
//! Latencies are recorded in microseconds. Histograms cross process boundaries as
//! `(value, count)` pairs ([`Hist::to_pairs`]), which merge exactly.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Largest latency recorded, in microseconds (10 minutes); larger values are clamped.
const LATENCY_US_MAX: u64 = 600_000_000;

/// A latency histogram in microseconds, 3 significant figures.
#[derive(Clone, Debug)]
pub(crate) struct Hist(pub(crate) Histogram<u64>);

impl Default for Hist {
    fn default() -> Self {
        Hist(Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid histogram bounds"))
    }
}

impl Hist {
    pub(crate) fn record_us(&mut self, us: u64) {
        self.0.saturating_record(us.clamp(1, LATENCY_US_MAX));
    }

    pub(crate) fn merge(&mut self, other: &Hist) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.0.add(&other.0);
    }

    pub(crate) fn to_pairs(&self) -> Vec<(u64, u64)> {
        self.0
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect()
    }

    pub(crate) fn from_pairs(pairs: &[(u64, u64)]) -> Hist {
        let mut h = Hist::default();
        for &(v, n) in pairs {
            let _ = h.0.record_n(v.clamp(1, LATENCY_US_MAX), n);
        }
        h
    }

    pub(crate) fn len(&self) -> u64 {
        self.0.len()
    }

    pub(crate) fn summary(&self) -> LatencySummary {
        let h = &self.0;
        let q = |q: f64| {
            if h.is_empty() {
                0
            } else {
                h.value_at_quantile(q)
            }
        };
        LatencySummary {
            count: h.len(),
            latency_us_min: if h.is_empty() { 0 } else { h.min() },
            latency_us_mean: if h.is_empty() { 0.0 } else { h.mean() },
            latency_us_p50: q(0.50),
            latency_us_p90: q(0.90),
            latency_us_p99: q(0.99),
            latency_us_p999: q(0.999),
            latency_us_max: if h.is_empty() { 0 } else { h.max() },
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LatencySummary {
    pub(crate) count: u64,
    pub(crate) latency_us_min: u64,
    pub(crate) latency_us_mean: f64,
    pub(crate) latency_us_p50: u64,
    pub(crate) latency_us_p90: u64,
    pub(crate) latency_us_p99: u64,
    pub(crate) latency_us_p999: u64,
    pub(crate) latency_us_max: u64,
}

/// One benchmark target and whether the run reached it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Check {
    pub(crate) name: String,
    /// `<=` or `>=`.
    pub(crate) op: &'static str,
    pub(crate) target: f64,
    pub(crate) value: f64,
    pub(crate) pass: bool,
}

impl Check {
    pub(crate) fn at_most(name: &str, value: f64, target: f64) -> Check {
        Check {
            name: name.to_owned(),
            op: "<=",
            target,
            value,
            pass: value <= target,
        }
    }

    pub(crate) fn at_least(name: &str, value: f64, target: f64) -> Check {
        Check {
            name: name.to_owned(),
            op: ">=",
            target,
            value,
            pass: value >= target,
        }
    }
}

/// What one scenario run found, as `--json` writes it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    pub(crate) scenario: String,
    pub(crate) run_id: String,
    pub(crate) started_unix_ms: u64,
    pub(crate) target: String,
    pub(crate) server_pid: Option<u32>,
    pub(crate) params: serde_json::Value,
    /// Scalar results, each with its unit last in the name.
    pub(crate) metrics: BTreeMap<String, f64>,
    pub(crate) latency: BTreeMap<String, LatencySummary>,
    /// Integrity problems (loss, gaps, failed commands, audit failures). Empty means clean.
    pub(crate) problems: Vec<String>,
    /// Benchmark targets; informational unless `--enforce-targets`.
    pub(crate) checks: Vec<Check>,
}

impl Report {
    pub(crate) fn new(scenario: &str, run_id: &str, target: String) -> Report {
        Report {
            scenario: scenario.to_owned(),
            run_id: run_id.to_owned(),
            started_unix_ms: crate::net::wall_us() / 1000,
            target,
            server_pid: None,
            params: serde_json::Value::Null,
            metrics: BTreeMap::new(),
            latency: BTreeMap::new(),
            problems: Vec::new(),
            checks: Vec::new(),
        }
    }

    pub(crate) fn metric(&mut self, name: &str, value: f64) {
        self.metrics.insert(name.to_owned(), value);
    }

    pub(crate) fn latency(&mut self, name: &str, h: &Hist) {
        self.latency.insert(name.to_owned(), h.summary());
    }

    pub(crate) fn problem(&mut self, p: String) {
        self.problems.push(p);
    }

    /// The summary table printed at the end of a run.
    pub(crate) fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\n== giftd-load {} (run {}, target {}) ==",
            self.scenario, self.run_id, self.target
        );
        for (name, value) in &self.metrics {
            let _ = writeln!(out, "  {name:<40} {}", fmt_num(*value));
        }
        if !self.latency.is_empty() {
            let _ = writeln!(
                out,
                "\n  {:<28} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
                "latency (ms)", "count", "p50", "p90", "p99", "p99.9", "max"
            );
            for (name, s) in &self.latency {
                let ms = |us: u64| format!("{:.3}", us as f64 / 1000.0);
                let _ = writeln!(
                    out,
                    "  {:<28} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
                    name,
                    s.count,
                    ms(s.latency_us_p50),
                    ms(s.latency_us_p90),
                    ms(s.latency_us_p99),
                    ms(s.latency_us_p999),
                    ms(s.latency_us_max)
                );
            }
        }
        if !self.checks.is_empty() {
            let _ = writeln!(out, "\n  targets:");
            for c in &self.checks {
                let _ = writeln!(
                    out,
                    "  [{}] {:<36} {} {} {}",
                    if c.pass { "met " } else { "MISS" },
                    c.name,
                    fmt_num(c.value),
                    c.op,
                    fmt_num(c.target)
                );
            }
        }
        if self.problems.is_empty() {
            let _ = writeln!(out, "\n  integrity: ok (no loss, no gaps, no failures)");
        } else {
            let _ = writeln!(out, "\n  integrity: FAILED");
            for p in self.problems.iter().take(20) {
                let _ = writeln!(out, "    - {p}");
            }
            if self.problems.len() > 20 {
                let _ = writeln!(out, "    ... and {} more", self.problems.len() - 20);
            }
        }
        out
    }
}

fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.3}")
    }
}

/// Counts of things by name (error reasons, close codes), mergeable.
pub(crate) type Counts = BTreeMap<String, u64>;

pub(crate) fn add_counts(into: &mut Counts, from: &Counts) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_round_trip_through_pairs() {
        let mut h = Hist::default();
        for v in [1, 10, 100, 1000, 10_000, 10_000] {
            h.record_us(v);
        }
        let back = Hist::from_pairs(&h.to_pairs());
        assert_eq!(back.len(), 6);
        assert_eq!(back.summary().latency_us_max, h.summary().latency_us_max);
        assert_eq!(back.summary().latency_us_p50, h.summary().latency_us_p50);
    }
}

//! Checks the Grafana dashboard in `dashboards/giftd.json` against the metrics giftd exports.
//!
//! Pure file parsing: no server is started. Every PromQL expression in the dashboard (panel
//! targets, including panels nested in collapsed rows, and templating variable queries) is
//! scanned for `giftd_*` identifiers, and each one must name a family in
//! [`giftd::metrics::METRIC_NAMES`] (histograms may add `_bucket`, `_sum` or `_count`).

use std::collections::BTreeSet;
use std::path::PathBuf;

use giftd::metrics::METRIC_NAMES;
use serde_json::Value;

/// The histogram families; only these may carry the `_bucket`/`_sum`/`_count` suffixes.
const HISTOGRAMS: &[&str] = &[
    "giftd_ledger_commit_seconds",
    "giftd_ack_seconds",
    "giftd_cluster_publish_seconds",
];
const HISTOGRAM_SUFFIXES: &[&str] = &["_bucket", "_sum", "_count"];

fn load_dashboard() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("dashboards/giftd.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()))
}

/// Every identifier in `expr` that starts with `giftd_` and continues with `[a-z0-9_]`.
///
/// A match must start at an identifier boundary, so `xgiftd_foo` yields nothing; the name stops
/// at the first character outside `[a-z0-9_]`.
fn metric_names(expr: &str) -> Vec<String> {
    const PREFIX: &str = "giftd_";
    let bytes = expr.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut names = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let at_boundary = i == 0 || !is_ident(bytes[i - 1]);
        if at_boundary && bytes[i..].starts_with(PREFIX.as_bytes()) {
            let start = i;
            i += PREFIX.len();
            while i < bytes.len()
                && (bytes[i].is_ascii_lowercase() || bytes[i].is_ascii_digit() || bytes[i] == b'_')
            {
                i += 1;
            }
            names.push(expr[start..i].to_owned());
        } else {
            i += 1;
        }
    }
    names
}

/// The exported family a series name belongs to: itself, or a histogram's base name when the
/// name is that histogram plus `_bucket`, `_sum` or `_count`.
fn family(name: &str) -> &str {
    for suffix in HISTOGRAM_SUFFIXES {
        if let Some(base) = name.strip_suffix(suffix) {
            if HISTOGRAMS.contains(&base) {
                return base;
            }
        }
    }
    name
}

/// The names in `expr` that are not exported families (after histogram suffix stripping).
fn unknown_names(expr: &str) -> Vec<String> {
    metric_names(expr)
        .into_iter()
        .filter(|n| !METRIC_NAMES.contains(&family(n)))
        .collect()
}

/// Every panel in the dashboard, depth first, including panels nested in rows.
fn all_panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in panels.as_array().into_iter().flatten() {
            out.push(panel);
            if let Some(nested) = panel.get("panels") {
                walk(nested, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// `(where, expr)` for every panel target and every templating variable query.
fn all_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut queries = Vec::new();
    for panel in all_panels(dashboard) {
        let title = panel["title"].as_str().unwrap_or("<untitled>");
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("panel `{title}` has a target without an expr"));
            let ref_id = target["refId"].as_str().unwrap_or("?");
            queries.push((format!("panel `{title}` target {ref_id}"), expr.to_owned()));
        }
    }
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if var["type"] != "query" {
            continue;
        }
        let name = var["name"].as_str().unwrap_or("?");
        let query = match &var["query"] {
            Value::String(s) => s.clone(),
            q => q["query"]
                .as_str()
                .unwrap_or_else(|| panic!("variable `{name}` has no query"))
                .to_owned(),
        };
        queries.push((format!("variable `{name}`"), query));
    }
    queries
}

#[test]
fn extractor_finds_names_and_flags_unknown_ones() {
    // The checker must be able to fail: an unknown family is found and reported.
    let expr = r#"sum(rate(giftd_nope_total{job="giftd"}[5m])) / giftd_connections"#;
    assert_eq!(
        metric_names(expr),
        ["giftd_nope_total", "giftd_connections"],
        "scanner output for {expr}"
    );
    assert_eq!(unknown_names(expr), ["giftd_nope_total"]);

    // Histogram suffixes are stripped only for histograms.
    assert!(unknown_names("rate(giftd_ack_seconds_bucket[1m])").is_empty());
    assert!(unknown_names("rate(giftd_ledger_commit_seconds_sum[1m])").is_empty());
    assert!(unknown_names("rate(giftd_ledger_commit_seconds_count[1m])").is_empty());
    assert_eq!(
        unknown_names("giftd_connections_count"),
        ["giftd_connections_count"]
    );
    assert_eq!(
        unknown_names("giftd_gifts_total_bucket"),
        ["giftd_gifts_total_bucket"]
    );

    // Boundaries: a longer identifier is not a giftd metric, and names end at `{`, `[`, `)`.
    assert!(metric_names("xgiftd_connections + my_giftd_rooms").is_empty());
    assert_eq!(
        metric_names("giftd_rooms{a=\"b\"}+giftd_ledger_ready)"),
        ["giftd_rooms", "giftd_ledger_ready"]
    );
    assert!(metric_names("label_values(up, job)").is_empty());
}

#[test]
fn histogram_list_matches_exported_families() {
    for h in HISTOGRAMS {
        assert!(
            METRIC_NAMES.contains(h),
            "{h} is listed as a histogram here but not in METRIC_NAMES"
        );
    }
}

#[test]
fn dashboard_is_an_importable_grafana_model() {
    let d = load_dashboard();
    assert_eq!(d["title"], "giftd");
    assert!(
        d["uid"].as_str().is_some_and(|u| !u.is_empty()),
        "dashboard needs a uid"
    );
    assert!(
        d["schemaVersion"].as_u64().is_some(),
        "schemaVersion missing"
    );
    let inputs = d["__inputs"].as_array().expect("__inputs array");
    assert!(
        inputs
            .iter()
            .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"),
        "__inputs must declare the DS_PROMETHEUS Prometheus datasource"
    );

    let mut ids = BTreeSet::new();
    for panel in all_panels(&d) {
        let title = panel["title"].as_str().unwrap_or("<untitled>");
        let id = panel["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("panel `{title}` has no numeric id"));
        assert!(ids.insert(id), "panel id {id} (`{title}`) is duplicated");
        for key in ["h", "w", "x", "y"] {
            assert!(
                panel["gridPos"][key].as_u64().is_some(),
                "panel `{title}` gridPos.{key} missing"
            );
        }
        if panel["type"] != "row" {
            let targets = panel["targets"].as_array();
            assert!(
                targets.is_some_and(|t| !t.is_empty()),
                "panel `{title}` has no targets"
            );
            assert_eq!(
                panel["datasource"]["uid"], "${DS_PROMETHEUS}",
                "panel `{title}` must use the imported datasource"
            );
        }
    }
}

#[test]
fn every_query_uses_only_exported_metrics() {
    let d = load_dashboard();
    let queries = all_queries(&d);
    assert!(queries.len() >= 10, "suspiciously few queries: {queries:?}");

    let mut problems = Vec::new();
    for (place, expr) in &queries {
        let names = metric_names(expr);
        if names.is_empty() {
            problems.push(format!("{place}: references no giftd metric: {expr}"));
        }
        for name in unknown_names(expr) {
            problems.push(format!(
                "{place}: `{name}` is not an exported metric family: {expr}"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "dashboard queries do not match giftd::metrics::METRIC_NAMES:\n{}",
        problems.join("\n")
    );
}

#[test]
fn dashboard_covers_every_area() {
    let d = load_dashboard();
    let exprs: Vec<String> = all_queries(&d).into_iter().map(|(_, e)| e).collect();
    let used: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();

    // Every exported family appears somewhere.
    let families: BTreeSet<&str> = used.iter().map(|n| family(n)).collect();
    for name in METRIC_NAMES {
        assert!(families.contains(name), "dashboard never shows {name}");
    }

    // Latency panels are real quantiles over bucket rates, p50 and p99, by `le`.
    for hist in HISTOGRAMS {
        let bucket = format!("{hist}_bucket");
        for q in ["0.5", "0.99"] {
            assert!(
                exprs.iter().any(|e| e.contains(&bucket)
                    && e.contains(&format!("histogram_quantile({q},"))
                    && e.contains("rate(")
                    && e.contains("le)")),
                "no p{} panel for {hist}",
                &q[2..]
            );
        }
    }
    assert!(
        exprs
            .iter()
            .any(|e| e.contains("giftd_ack_seconds_bucket") && e.contains("by (type, le)")),
        "ack latency must be broken down by type"
    );
    assert!(
        exprs
            .iter()
            .any(|e| e.contains("giftd_gift_coins_total") && e.contains("party")),
        "coins must be shown by split party"
    );
    assert!(
        exprs
            .iter()
            .any(|e| e.contains("giftd_gift_coins_total") && e.contains("channel")),
        "coins must be shown by channel"
    );
}

#[test]
fn counters_are_never_graphed_raw() {
    // A `_total` counter plotted without rate()/increase() is a monotonically rising line.
    let d = load_dashboard();
    for (place, expr) in all_queries(&d) {
        if place.starts_with("variable") {
            continue;
        }
        let has_counter = metric_names(&expr).iter().any(|n| n.ends_with("_total"));
        if has_counter {
            assert!(
                expr.contains("rate(") || expr.contains("increase("),
                "{place}: counter used without rate()/increase(): {expr}"
            );
        }
    }
}

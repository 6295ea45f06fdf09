//! The same objectives as Prometheus recording and alerting rules, for teams
//! that already run Prometheus (`gantry slo rules`), over Gantry's own
//! metrics: `gantry_http_requests_total` and
//! `gantry_http_request_duration_seconds` for routes and services,
//! `gantry_function_invocations_total` and `gantry_function_duration_seconds`
//! for functions (every invocation, as Gantry's own evaluation counts them).

use std::collections::BTreeMap;
use std::fmt::Write;

use gantry_manifest::{Slo, SloTarget};

use crate::{window_text, RULES};

/// The histogram bucket a latency objective is measured at: the largest
/// upper bound at or under `limit` (stricter when it is not exact; the
/// smallest bound if `limit` is under every bound), as the `le` label value
/// Gantry's `/metrics` prints.
fn latency_bucket(target: &SloTarget, limit: std::time::Duration) -> (f64, String) {
    let bounds: Vec<f64> = match target {
        SloTarget::Function(_) => gantry_telemetry::function_duration_buckets().collect(),
        _ => gantry_telemetry::HTTP_DURATION_BUCKETS.to_vec(),
    };
    let limit = limit.as_secs_f64();
    let bound = bounds
        .iter()
        .copied()
        .rfind(|b| *b <= limit + 1e-9)
        .unwrap_or(bounds[0]);
    // The shortest text that reads back as the same number, with a `.0` on
    // whole numbers: how the exposition prints bucket bounds.
    (bound, format!("{bound:?}"))
}

/// The label matcher selecting an SLO's requests, and the metric families
/// (requests counter, duration histogram) they are counted in.
fn selector(target: &SloTarget) -> (String, &'static str, &'static str) {
    const HTTP: (&str, &str) = (
        "gantry_http_requests_total",
        "gantry_http_request_duration_seconds",
    );
    let (sel, (requests, duration)) = match target {
        SloTarget::Route(name) => (format!("route=\"{name}\""), HTTP),
        SloTarget::Service(name) => (format!("service=\"{name}\""), HTTP),
        SloTarget::Function(name) => (
            format!("function=\"{name}\""),
            (
                "gantry_function_invocations_total",
                "gantry_function_duration_seconds",
            ),
        ),
    };
    (sel, requests, duration)
}

/// Bad-request ratio over `window`.
fn error_ratio(slo: &Slo, window: &str) -> String {
    let (sel, requests, duration) = selector(&slo.target);
    match slo.latency {
        None => format!(
            "sum(rate({requests}{{{sel},status_class=\"5xx\"}}[{window}])) / sum(rate({requests}{{{sel}}}[{window}]))"
        ),
        Some(limit) => {
            let (_, le) = latency_bucket(&slo.target, limit);
            format!(
                "1 - (sum(rate({duration}_bucket{{{sel},le=\"{le}\"}}[{window}])) / sum(rate({duration}_count{{{sel}}}[{window}])))"
            )
        }
    }
}

/// Prometheus rule groups (YAML) for every SLO.
pub fn prometheus(slos: &BTreeMap<String, Slo>) -> String {
    let mut out = String::from("groups:\n");
    for (name, slo) in slos {
        let allowed = 1.0 - slo.objective / 100.0;
        if let Some(limit) = slo.latency {
            let (bound, _) = latency_bucket(&slo.target, limit);
            if (bound - limit.as_secs_f64()).abs() > 1e-9 {
                let _ = writeln!(
                    out,
                    "  # {name}: no histogram bucket at {limit:?}; measured at the bucket {bound}s (stricter than Gantry's own evaluation)"
                );
            }
        }
        let _ = writeln!(out, "  - name: gantry-slo-{name}\n    rules:");
        let mut windows: Vec<_> = RULES.iter().flat_map(|r| [r.long, r.short]).collect();
        windows.sort();
        windows.dedup();
        for window in &windows {
            let w = window_text(*window);
            let _ = writeln!(
                out,
                "      - record: gantry:slo_error_ratio:rate{w}\n        labels: {{ slo: \"{name}\" }}\n        expr: {}",
                error_ratio(slo, &w)
            );
        }
        for rule in RULES {
            let (long, short) = (window_text(rule.long), window_text(rule.short));
            let factor = rule.burn_rate * allowed;
            let _ = writeln!(
                out,
                "      - alert: GantrySloBurn\n        expr: gantry:slo_error_ratio:rate{long}{{slo=\"{name}\"}} > {factor} and gantry:slo_error_ratio:rate{short}{{slo=\"{name}\"}} > {factor}\n        labels: {{ slo: \"{name}\", severity: \"{}\", long_window: \"{long}\", short_window: \"{short}\" }}\n        annotations:\n          summary: \"SLO {name} ({}) burns its error budget at {}x or more over {long} and {short}\"{}",
                rule.severity,
                slo.target,
                rule.burn_rate,
                slo.runbook
                    .as_ref()
                    .map(|r| format!("\n          runbook_url: \"{r}\""))
                    .unwrap_or_default()
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn slo(target: SloTarget, latency: Option<u64>) -> BTreeMap<String, Slo> {
        BTreeMap::from([(
            "s".to_string(),
            Slo {
                target,
                objective: 99.0,
                window: Duration::from_secs(86_400),
                latency: latency.map(Duration::from_millis),
                min_requests: 1,
                runbook: None,
            },
        )])
    }

    /// The `le` values the real exposition prints for a histogram with `bounds`.
    fn exposed(bounds: impl Iterator<Item = f64>) -> String {
        use prometheus_client::metrics::histogram::Histogram;
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("d", "d", Histogram::new(bounds));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    fn le(rules: &str) -> &str {
        let at = rules.find("le=\"").unwrap() + 4;
        &rules[at..at + rules[at..].find('"').unwrap()]
    }

    #[test]
    fn function_objectives_count_every_invocation() {
        let rules = prometheus(&slo(SloTarget::Function("thumb".into()), None));
        assert!(
            rules.contains(
                "gantry_function_invocations_total{function=\"thumb\",status_class=\"5xx\"}"
            ),
            "{rules}"
        );
        assert!(!rules.contains("gantry_http_"), "{rules}");
    }

    #[test]
    fn latency_objectives_use_a_bucket_the_metrics_have() {
        // 250 ms is a bucket of the gateway's histogram: measured exactly.
        let rules = prometheus(&slo(SloTarget::Route("r".into()), Some(250)));
        assert_eq!(le(&rules), "0.25");
        assert!(!rules.contains("no histogram bucket"), "{rules}");
        // 300 ms is not: the bucket under it, said in a comment.
        let rules = prometheus(&slo(SloTarget::Route("r".into()), Some(300)));
        assert_eq!(le(&rules), "0.25");
        assert!(
            rules.contains("no histogram bucket at 300ms; measured at the bucket 0.25s"),
            "{rules}"
        );
        let http = exposed(gantry_telemetry::HTTP_DURATION_BUCKETS.into_iter());
        for limit in [1, 5, 100, 300, 1000, 2000, 60_000] {
            let rules = prometheus(&slo(SloTarget::Service("s".into()), Some(limit)));
            let le = le(&rules);
            assert!(
                http.contains(&format!("le=\"{le}\"")),
                "{le} not in\n{http}"
            );
        }
        // Functions have their own (exponential) buckets.
        let functions = exposed(gantry_telemetry::function_duration_buckets());
        for limit in [1, 100, 300, 1000, 10_000] {
            let rules = prometheus(&slo(SloTarget::Function("f".into()), Some(limit)));
            let le = le(&rules);
            assert!(
                functions.contains(&format!("le=\"{le}\"")),
                "{le} not in\n{functions}"
            );
            assert!(rules.contains("gantry_function_duration_seconds_bucket{function=\"f\""));
        }
    }
}

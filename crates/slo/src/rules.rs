//! The same objectives as Prometheus recording and alerting rules, for teams
//! that already run Prometheus (`gantry slo rules`), over Gantry's own
//! metrics (`gantry_http_requests_total`, `gantry_http_request_duration_seconds`).

use std::collections::BTreeMap;
use std::fmt::Write;

use gantry_manifest::{Slo, SloTarget};

use crate::{window_text, RULES};

/// The label matcher selecting an SLO's requests.
fn selector(target: &SloTarget) -> String {
    match target {
        SloTarget::Route(name) => format!("route=\"{name}\""),
        SloTarget::Service(name) => format!("service=\"{name}\""),
        SloTarget::Function(name) => format!("service=\"function:{name}\""),
    }
}

/// Bad-request ratio over `window`.
fn error_ratio(slo: &Slo, window: &str) -> String {
    let sel = selector(&slo.target);
    match slo.latency {
        None => format!(
            "sum(rate(gantry_http_requests_total{{{sel},status_class=\"5xx\"}}[{window}])) / sum(rate(gantry_http_requests_total{{{sel}}}[{window}]))"
        ),
        Some(limit) => format!(
            "1 - (sum(rate(gantry_http_request_duration_seconds_bucket{{{sel},le=\"{}\"}}[{window}])) / sum(rate(gantry_http_request_duration_seconds_count{{{sel}}}[{window}])))",
            limit.as_secs_f64()
        ),
    }
}

/// Prometheus rule groups (YAML) for every SLO.
pub fn prometheus(slos: &BTreeMap<String, Slo>) -> String {
    let mut out = String::from("groups:\n");
    for (name, slo) in slos {
        let allowed = 1.0 - slo.objective / 100.0;
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

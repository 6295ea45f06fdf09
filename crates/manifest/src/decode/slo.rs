//! Decoding of `[slos.NAME]` and `[alerting]`.

use std::collections::BTreeMap;
use std::time::Duration;

use toml_edit::Item;

use super::{Decoder, Section};
use crate::diagnostics::ErrorCode;
use crate::slo::{Alerting, OtlpProtocol, Slo, SloTarget, Telemetry};

const SLO_KEYS: &[&str] = &[
    "route",
    "service",
    "function",
    "objective",
    "window",
    "latency",
    "min_requests",
    "runbook",
];
const ALERTING_KEYS: &[&str] = &["webhook", "evaluate_every"];

impl Decoder<'_> {
    pub(super) fn slos(
        &mut self,
        item: &Item,
    ) -> BTreeMap<String, (Slo, Option<std::ops::Range<usize>>)> {
        let mut out = BTreeMap::new();
        let Some(all) = self.section(item, "[slos]".into()) else {
            return out;
        };
        for (name, item) in all.table.iter() {
            let span = all.table.key(name).and_then(|k| k.span());
            self.service_name(name, span.clone());
            if let Some(section) = self.section(item, format!("[slos.{name}]")) {
                if let Some(slo) = self.slo(&section) {
                    out.insert(name.to_string(), (slo, section.table_span()));
                }
            }
        }
        out
    }

    fn slo(&mut self, s: &Section<'_>) -> Option<Slo> {
        self.unknown_keys(s, SLO_KEYS);
        let targets: Vec<(&str, String)> = ["route", "service", "function"]
            .into_iter()
            .filter_map(|key| self.string(s, key).map(|v| (key, v)))
            .collect();
        let target = match targets.as_slice() {
            [(kind, name)] => match *kind {
                "route" => SloTarget::Route(name.clone()),
                "service" => SloTarget::Service(name.clone()),
                _ => SloTarget::Function(name.clone()),
            },
            [] => {
                self.sink.push(
                    ErrorCode::MissingKey,
                    s.table_span(),
                    format!("{} needs `route`, `service` or `function`", s.name),
                    Some(
                        "say which requests the objective is about, e.g. `route = \"place-order\"`"
                            .into(),
                    ),
                );
                return None;
            }
            [_, (second, _), ..] => {
                self.push_at_key(
                    s,
                    second,
                    ErrorCode::Conflict,
                    format!("{} names more than one of `route`, `service` and `function`", s.name),
                    "an objective is about one thing; declare one SLO per route, service or function",
                );
                return None;
            }
        };
        let objective = match s.table.get("objective").and_then(|i| i.as_value()) {
            Some(value) => match value
                .as_float()
                .or_else(|| value.as_integer().map(|n| n as f64))
            {
                Some(p) if p > 0.0 && p < 100.0 => p,
                _ => {
                    self.bad_value(
                        s,
                        "objective",
                        format!(
                            "`objective` in {} must be a percentage above 0 and below 100",
                            s.name
                        ),
                        "e.g. `objective = 99.9` for 99.9% of requests good",
                    );
                    return None;
                }
            },
            None => {
                self.sink.push(
                    ErrorCode::MissingKey,
                    s.table_span(),
                    format!("{} is missing `objective`", s.name),
                    Some("add `objective = 99.9` (percent of requests that must be good)".into()),
                );
                return None;
            }
        };
        let window = self
            .duration(s, "window")
            .unwrap_or(Duration::from_secs(30 * 86_400));
        if window < Duration::from_secs(3600) {
            self.bad_value(
                s,
                "window",
                format!("`window` in {} is shorter than an hour", s.name),
                "objectives are measured over days or weeks, e.g. `window = \"30d\"`",
            );
        }
        Some(Slo {
            target,
            objective,
            window,
            latency: self.duration(s, "latency"),
            min_requests: self
                .integer(s, "min_requests", 1, 1_000_000_000)
                .map_or(20, |n| n as u64),
            runbook: self.string(s, "runbook"),
        })
    }

    pub(super) fn telemetry(&mut self, item: &Item) -> Telemetry {
        let Some(s) = self.section(item, "[telemetry]".into()) else {
            return Telemetry::default();
        };
        self.unknown_keys(
            &s,
            &[
                "traces",
                "sample_ratio",
                "slow",
                "otlp_endpoint",
                "otlp_protocol",
            ],
        );
        let defaults = Telemetry::default();
        let sample_ratio = match s.table.get("sample_ratio").and_then(|i| i.as_value()) {
            None => defaults.sample_ratio,
            Some(value) => match value
                .as_float()
                .or_else(|| value.as_integer().map(|n| n as f64))
            {
                Some(ratio) if (0.0..=1.0).contains(&ratio) => ratio,
                _ => {
                    self.bad_value(
                        &s,
                        "sample_ratio",
                        "`sample_ratio` must be a number from 0 to 1".to_string(),
                        "e.g. `sample_ratio = 0.1` keeps one trace in ten (errors and slow ones always)",
                    );
                    defaults.sample_ratio
                }
            },
        };
        let otlp_endpoint = self.string(&s, "otlp_endpoint");
        if let Some(url) = &otlp_endpoint {
            if !url.starts_with("http://") && !url.starts_with("https://") {
                self.bad_value(
                    &s,
                    "otlp_endpoint",
                    format!("`{url}` is not an http:// or https:// URL"),
                    "give the collector's OTLP address, e.g. `http://127.0.0.1:4318` (HTTP) or `http://127.0.0.1:4317` (gRPC)",
                );
            }
        }
        let otlp_protocol = match self.string(&s, "otlp_protocol").as_deref() {
            None => None,
            Some("http/protobuf") => Some(OtlpProtocol::HttpProtobuf),
            Some("grpc") => Some(OtlpProtocol::Grpc),
            Some(other) => {
                self.bad_value(
                    &s,
                    "otlp_protocol",
                    format!("`{other}` is not an OTLP protocol Gantry speaks"),
                    "use `http/protobuf` or `grpc`",
                );
                None
            }
        };
        Telemetry {
            traces: self.boolean(&s, "traces").unwrap_or(defaults.traces),
            sample_ratio,
            slow: self.duration(&s, "slow").unwrap_or(defaults.slow),
            otlp_endpoint,
            otlp_protocol,
        }
    }

    pub(super) fn alerting(&mut self, item: &Item) -> Alerting {
        let Some(s) = self.section(item, "[alerting]".into()) else {
            return Alerting::default();
        };
        self.unknown_keys(&s, ALERTING_KEYS);
        let webhook = self.string(&s, "webhook");
        if let Some(url) = &webhook {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                self.bad_value(
                    &s,
                    "webhook",
                    format!("`{url}` is not an http(s) URL"),
                    "e.g. `webhook = \"http://127.0.0.1:9093/alerts\"`",
                );
            }
        }
        Alerting {
            webhook,
            evaluate_every: self
                .duration(&s, "evaluate_every")
                .unwrap_or(Duration::from_secs(10)),
        }
    }
}

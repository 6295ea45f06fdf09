//! Least privilege for outbound HTTP from wasm guests: every request a guest
//! sends through `wasi:http/outgoing-handler` is checked against the
//! function's `allowed_outbound_hosts` before a connection is made. The
//! destination is the request URI's authority, which the host resolves; the
//! guest cannot set `Host` (it is a forbidden header), so a Host-header trick
//! cannot reach another destination.

use std::future::Future;
use std::sync::Arc;

use http::uri::Scheme;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

/// One `SCHEME://HOST:PORT` entry; `*` matches anything in its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rule {
    scheme: Option<String>,
    host: Option<String>,
    port: Option<u16>,
}

impl Rule {
    /// Parses a (validated) manifest entry.
    pub(crate) fn parse(text: &str) -> Option<Rule> {
        let (scheme, rest) = text.split_once("://")?;
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || rest.starts_with('[') => {
                (host, Some(port))
            }
            _ => (rest, None),
        };
        let any = |s: &str| (s != "*").then(|| s.to_ascii_lowercase());
        let port = match port {
            Some("*") => None,
            Some(p) => Some(p.parse().ok()?),
            None => Some(if scheme == "https" { 443 } else { 80 }),
        };
        Some(Rule {
            scheme: any(scheme),
            host: any(host),
            port,
        })
    }

    fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        self.scheme.as_deref().is_none_or(|s| s == scheme)
            && self
                .host
                .as_deref()
                .is_none_or(|h| h.eq_ignore_ascii_case(host))
            && self.port.is_none_or(|p| p == port)
    }
}

/// The allow-list of one function.
#[derive(Debug, Clone, Default)]
pub(crate) struct Outbound {
    pub(crate) function: Arc<str>,
    pub(crate) rules: Arc<Vec<Rule>>,
}

impl Outbound {
    /// Whether a request to `uri` may be sent; `Err` says why not.
    pub(crate) fn check(&self, uri: &http::Uri) -> Result<(), String> {
        let scheme = uri.scheme().unwrap_or(&Scheme::HTTPS).as_str();
        let Some(host) = uri.host() else {
            return Err("the request has no host".into());
        };
        let port = uri
            .port_u16()
            .unwrap_or(if scheme == "https" { 443 } else { 80 });
        if self.rules.iter().any(|r| r.allows(scheme, host, port)) {
            Ok(())
        } else {
            Err(format!(
                "{scheme}://{host}:{port} is not in the function's allowed_outbound_hosts"
            ))
        }
    }
}

impl WasiHttpHooks for Outbound {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        http::Response<WasiBody>,
                        Box<dyn Future<Output = Result<(), Error>> + Send>,
                    ),
                    Error,
                >,
            > + Send,
    > {
        if let Err(why) = self.check(request.uri()) {
            tracing::warn!(
                target: "gantry::functions",
                function = %self.function,
                uri = %request.uri(),
                "outbound request denied: {why}"
            );
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        _ = fut;
        Box::new(async move {
            use http_body_util::BodyExt;
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbound(rules: &[&str]) -> Outbound {
        Outbound {
            function: "f".into(),
            rules: Arc::new(rules.iter().map(|r| Rule::parse(r).unwrap()).collect()),
        }
    }

    #[test]
    fn only_listed_destinations_pass() {
        let o = outbound(&["http://127.0.0.1:9000", "https://api.example.com"]);
        assert!(o.check(&"http://127.0.0.1:9000/x".parse().unwrap()).is_ok());
        assert!(o
            .check(&"https://api.example.com/v1".parse().unwrap())
            .is_ok());
        assert!(o
            .check(&"http://127.0.0.1:9001/x".parse().unwrap())
            .is_err());
        assert!(o
            .check(&"http://api.example.com/v1".parse().unwrap())
            .is_err());
        assert!(o
            .check(&"https://evil.example.com/".parse().unwrap())
            .is_err());
        assert!(outbound(&[])
            .check(&"http://127.0.0.1:9000/".parse().unwrap())
            .is_err());
    }

    #[test]
    fn wildcards_match_any_port_or_host() {
        let o = outbound(&["http://127.0.0.1:*", "https://*"]);
        assert!(o.check(&"http://127.0.0.1:1234/".parse().unwrap()).is_ok());
        assert!(o
            .check(&"https://anything.example/".parse().unwrap())
            .is_ok());
        assert!(o.check(&"http://localhost:1234/".parse().unwrap()).is_err());
    }
}

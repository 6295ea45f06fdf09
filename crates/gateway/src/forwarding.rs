//! Header handling between client and upstream: hop-by-hop headers stay on
//! their hop (RFC 9110 §7.6.1) and `X-Forwarded-*` tell the upstream who asked.

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue};

const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];

pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Headers only a proxy may set, which some upstream frameworks believe
/// (IIS and Symfony route on `X-Original-URL`/`X-Rewrite-URL`; others read
/// the client address from `X-Real-IP`): dropped when an untrusted client
/// sends them.
const PROXY_ONLY: [HeaderName; 5] = [
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-prefix"),
];

/// Removes hop-by-hop headers, including any the `Connection` header names.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the names is cheaper than a
    // removal (a hash lookup) per hop-by-hop name.
    if !headers
        .keys()
        .any(|name| HOP_BY_HOP.contains(name) || name == header::PROXY_AUTHENTICATE)
    {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::PROXY_AUTHENTICATE);
}

/// The client end of a connection, with its address already rendered as
/// header values: every request on a keep-alive connection reuses them.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    ip: HeaderValue,
    /// This hop's RFC 7239 element without the host: `for=ADDR;proto=SCHEME`
    /// (an IPv6 address quoted and bracketed), made once per connection.
    forwarded: String,
    /// Set when the connection came over TLS.
    pub tls: Option<Arc<TlsSession>>,
}

/// What a TLS connection established, once per connection.
#[derive(Debug, Clone, Default)]
pub struct TlsSession {
    /// The client's certificate, verified against `[platform.tls] client_ca`.
    pub client: Option<gantry_tls::ClientIdentity>,
}

impl Peer {
    pub fn new(addr: SocketAddr) -> Peer {
        let ip = HeaderValue::from_str(&addr.ip().to_string())
            .expect("an IP address is a valid header value");
        let mut peer = Peer {
            addr,
            ip,
            forwarded: String::new(),
            tls: None,
        };
        peer.forwarded = peer.forwarded_element();
        peer
    }

    /// The same peer, over TLS.
    pub fn with_tls(mut self, session: TlsSession) -> Peer {
        self.tls = Some(Arc::new(session));
        self.forwarded = self.forwarded_element();
        self
    }

    fn forwarded_element(&self) -> String {
        let proto = self.scheme();
        match self.addr.ip() {
            std::net::IpAddr::V4(v4) => format!("for={v4};proto={proto}"),
            std::net::IpAddr::V6(v6) => format!("for=\"[{v6}]\";proto={proto}"),
        }
    }

    /// `https` or `http`: what the client used to reach Gantry.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }
}

/// Whether `ip` is one of `[platform] trusted_proxies`.
pub(crate) fn is_trusted(trusted: &[ipnet::IpNet], ip: &std::net::IpAddr) -> bool {
    trusted.iter().any(|net| net.contains(ip))
}

/// The address of the client a request comes from: the peer, or, when the
/// peer is a trusted proxy, the nearest address in `X-Forwarded-For` that is
/// not a trusted proxy (the rightmost entries were added by the proxies
/// closest to Gantry; anything left of the first untrusted one could be forged).
pub(crate) fn client_ip(
    peer: &Peer,
    headers: &HeaderMap,
    trusted: &[ipnet::IpNet],
) -> std::net::IpAddr {
    let mut client = peer.addr.ip();
    if !is_trusted(trusted, &client) {
        return client;
    }
    let chain = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for entry in chain.iter().rev() {
        let Ok(ip) = entry.parse::<std::net::IpAddr>() else {
            break;
        };
        client = ip;
        if !is_trusted(trusted, &ip) {
            break;
        }
    }
    client
}

/// Sets the forwarding headers the upstream reads: `X-Forwarded-For`,
/// `-Proto`, `-Host` and RFC 7239 `Forwarded`.
///
/// From a trusted proxy (`peer_trusted`), what it sent is believed: the peer
/// is appended to `X-Forwarded-For` and `Forwarded`, and its `-Proto` and
/// `-Host` are kept. From anyone else, every one of them is replaced by what
/// Gantry saw, so a client cannot claim another address, scheme or host.
pub(crate) fn add_forwarded(
    headers: &mut HeaderMap,
    client: &Peer,
    host: Option<&HeaderValue>,
    peer_trusted: bool,
) {
    let proto = client.scheme();
    let host_text = host.and_then(|h| h.to_str().ok());
    let mut element = String::with_capacity(client.forwarded.len() + 40);
    element.push_str(&client.forwarded);
    if let Some(host) = host_text.filter(|h| !h.contains(['"', '\\'])) {
        element.push_str(";host=\"");
        element.push_str(host);
        element.push('"');
    }
    if peer_trusted {
        let earlier = headers
            .get(&X_FORWARDED_FOR)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.trim().is_empty());
        let forwarded_for = match earlier {
            Some(earlier) => {
                HeaderValue::from_str(&format!("{earlier}, {}", client.addr.ip())).ok()
            }
            None => Some(client.ip.clone()),
        };
        if let Some(value) = forwarded_for {
            headers.insert(X_FORWARDED_FOR, value);
        }
        if !headers.contains_key(&X_FORWARDED_PROTO) {
            headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
        }
        if let Some(host) = host {
            if !headers.contains_key(&X_FORWARDED_HOST) {
                headers.insert(X_FORWARDED_HOST, host.clone());
            }
        }
        let chain = headers
            .get_all(header::FORWARDED)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(", ");
        if !chain.trim().is_empty() {
            element = format!("{chain}, {element}");
        }
    } else {
        for name in &PROXY_ONLY {
            headers.remove(name);
        }
        headers.insert(X_FORWARDED_FOR, client.ip.clone());
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
        match host {
            Some(host) => {
                headers.insert(X_FORWARDED_HOST, host.clone());
            }
            None => {
                headers.remove(&X_FORWARDED_HOST);
            }
        }
    }
    // The String's buffer becomes the header's: no second copy.
    match HeaderValue::from_maybe_shared(bytes::Bytes::from(element)) {
        Ok(value) => {
            headers.insert(header::FORWARDED, value);
        }
        Err(_) => {
            headers.remove(header::FORWARDED);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_connection_named_ones_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn the_client_address_comes_through_trusted_proxies_only() {
        let peer = Peer::new("10.0.0.2:5000".parse().unwrap());
        let mut h = HeaderMap::new();
        h.insert(
            X_FORWARDED_FOR,
            HeaderValue::from_static("6.6.6.6, 203.0.113.5, 10.0.0.9"),
        );
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        assert_eq!(client_ip(&peer, &h, &trusted).to_string(), "203.0.113.5");
        assert_eq!(
            client_ip(&peer, &h, &[]).to_string(),
            "10.0.0.2",
            "untrusted peers are taken as the client"
        );
    }

    fn spoofed() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"));
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        h.insert(X_FORWARDED_HOST, HeaderValue::from_static("admin.internal"));
        h.insert(
            header::FORWARDED,
            HeaderValue::from_static("for=10.0.0.1;proto=https"),
        );
        h.insert("x-original-url", HeaderValue::from_static("/admin/secret"));
        h.insert("x-real-ip", HeaderValue::from_static("10.0.0.1"));
        h
    }

    #[test]
    fn a_trusted_proxy_s_chain_is_extended() {
        let mut h = spoofed();
        add_forwarded(
            &mut h,
            &Peer::new("127.0.0.1:1234".parse().unwrap()),
            Some(&HeaderValue::from_static("shop.test")),
            true,
        );
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.1, 127.0.0.1");
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
        assert_eq!(h[&X_FORWARDED_HOST], "admin.internal");
        assert_eq!(
            h[header::FORWARDED],
            "for=10.0.0.1;proto=https, for=127.0.0.1;proto=http;host=\"shop.test\""
        );
        assert_eq!(
            h["x-original-url"], "/admin/secret",
            "a trusted proxy's own"
        );
    }

    #[test]
    fn an_untrusted_client_s_forwarding_headers_are_replaced() {
        let mut h = spoofed();
        add_forwarded(
            &mut h,
            &Peer::new("[2001:db8::1]:1234".parse().unwrap()),
            Some(&HeaderValue::from_static("shop.test:8080")),
            false,
        );
        assert_eq!(h[&X_FORWARDED_FOR], "2001:db8::1");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
        assert_eq!(h[&X_FORWARDED_HOST], "shop.test:8080");
        assert_eq!(
            h[header::FORWARDED],
            "for=\"[2001:db8::1]\";proto=http;host=\"shop.test:8080\""
        );
        assert!(!h.contains_key("x-original-url"));
        assert!(!h.contains_key("x-real-ip"));
        let mut h = spoofed();
        add_forwarded(
            &mut h,
            &Peer::new("127.0.0.1:1".parse().unwrap()),
            None,
            false,
        );
        assert!(!h.contains_key(&X_FORWARDED_HOST));
    }
}

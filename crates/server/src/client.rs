//! Who is on the other end of a request. Behind a reverse proxy the TCP peer is the proxy;
//! the client is what the proxy wrote into `X-Forwarded-For`, believed only when the peer is
//! one of the proxies msec was told to trust (anyone can send the header).

use crate::AppState;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};

/// The client of a request: the TCP peer, or, when that is a trusted proxy, the nearest
/// address in `X-Forwarded-For` that is not (port 0: a proxy does not say it). Login throttling
/// and security events use it.
pub(crate) struct Client(pub SocketAddr);

impl FromRequestParts<AppState> for Client {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Client, Infallible> {
        let peer = match parts.extensions.get::<ConnectInfo<SocketAddr>>() {
            Some(c) => c.0,
            None => {
                // Only a router served without connect info gets here (see `serve`): every
                // request would share one throttle bucket.
                tracing::error!(
                    "request without a peer address; is the router served by msec_server::serve?"
                );
                SocketAddr::from(([0, 0, 0, 0], 0))
            }
        };
        Ok(Client(client_of(peer, &parts.headers, &s.trusted_proxies)))
    }
}

/// One `X-Forwarded-For` entry: an address, possibly with a port or in brackets (some proxies
/// write them).
fn hop_address(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .or_else(|_| hop.parse::<SocketAddr>().map(|s| s.ip()))
        .or_else(|_| hop.trim_start_matches('[').trim_end_matches(']').parse())
        .ok()
        .map(|ip| ip.to_canonical())
}

/// Whether `ip` is one of the `trusted` proxies. Canonical forms: an IPv4 client of a
/// dual-stack listener arrives as `::ffff:a.b.c.d`, which must still match `a.b.c.d`.
fn is_trusted(trusted: &[IpAddr], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    trusted.iter().any(|t| t.to_canonical() == ip)
}

/// Drops `X-Forwarded-Proto` from requests that did not come from a trusted proxy, before any
/// handler sees them: whether a request came over HTTPS decides the session cookie's name and
/// `Secure` flag, and anyone can send the header.
pub(crate) async fn forwarded_proto_from_proxies_only(
    axum::extract::State(s): axum::extract::State<AppState>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    if !peer.is_some_and(|ip| is_trusted(&s.trusted_proxies, ip)) {
        request.headers_mut().remove("x-forwarded-proto");
    }
    next.run(request).await
}

/// Whether the request reached msec over HTTPS: through a trusted proxy that says so (msec
/// itself speaks plain HTTP). Valid behind [`forwarded_proto_from_proxies_only`].
pub(crate) fn over_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
}

fn client_of(peer: SocketAddr, headers: &HeaderMap, trusted: &[IpAddr]) -> SocketAddr {
    let is_trusted = |ip: IpAddr| is_trusted(trusted, ip);
    if !is_trusted(peer.ip().to_canonical()) {
        return peer;
    }
    // Each proxy appends the address it received from; read from the nearest hop outwards and
    // stop at the first one that is not a trusted proxy. Anything unparsable (a line that is
    // not text included) ends the walk: what lies beyond it cannot be trusted either.
    let mut hops: Vec<Option<&str>> = Vec::new();
    for line in headers.get_all("x-forwarded-for") {
        match line.to_str() {
            Ok(text) => hops.extend(text.split(',').map(|h| Some(h.trim()))),
            Err(_) => hops.push(None),
        }
    }
    for hop in hops.into_iter().rev() {
        match hop.and_then(hop_address) {
            Some(ip) if is_trusted(ip) => continue,
            Some(ip) => return SocketAddr::new(ip, 0),
            None => break,
        }
    }
    peer
}

#[cfg(test)]
mod tests {
    use super::client_of;
    use axum::http::HeaderMap;

    fn with_xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_header_counts_only_from_a_trusted_proxy() {
        let proxy = "127.0.0.1:5000".parse().unwrap();
        let trusted = ["127.0.0.1".parse().unwrap(), "10.9.9.9".parse().unwrap()];
        let client = |h: &HeaderMap, t: &[std::net::IpAddr]| client_of(proxy, h, t).to_string();
        // Not trusted: the header is anyone's to forge.
        assert_eq!(client(&with_xff(&["203.0.113.7"]), &[]), "127.0.0.1:5000");
        // Trusted: the nearest untrusted hop, past trusted proxies, ignoring forged hops beyond.
        assert_eq!(
            client(&with_xff(&["203.0.113.7"]), &trusted),
            "203.0.113.7:0"
        );
        assert_eq!(
            client(&with_xff(&["1.2.3.4, 203.0.113.7", "10.9.9.9"]), &trusted),
            "203.0.113.7:0"
        );
        assert_eq!(
            client(&with_xff(&["2001:db8::1"]), &trusted),
            "[2001:db8::1]:0"
        );
        // With ports or brackets, as some proxies write them.
        assert_eq!(
            client(&with_xff(&["203.0.113.7:5555"]), &trusted),
            "203.0.113.7:0"
        );
        assert_eq!(
            client(&with_xff(&["[2001:db8::1]:443"]), &trusted),
            "[2001:db8::1]:0"
        );
        assert_eq!(
            client(&with_xff(&["[2001:db8::1]"]), &trusted),
            "[2001:db8::1]:0"
        );
        // Missing or unparsable: the peer itself.
        assert_eq!(client(&HeaderMap::new(), &trusted), "127.0.0.1:5000");
        assert_eq!(client(&with_xff(&["garbage"]), &trusted), "127.0.0.1:5000");
        // A line that is not text ends the walk rather than being skipped over.
        let mut forged = with_xff(&["9.9.9.9"]);
        forged.append(
            "x-forwarded-for",
            axum::http::HeaderValue::from_bytes(b"\x80x").unwrap(),
        );
        assert_eq!(client(&forged, &trusted), "127.0.0.1:5000");
        // An IPv4 proxy seen through a dual-stack listener is still the proxy.
        let mapped = "[::ffff:127.0.0.1]:5000".parse().unwrap();
        assert_eq!(
            client_of(mapped, &with_xff(&["203.0.113.7"]), &trusted).to_string(),
            "203.0.113.7:0"
        );
    }
}

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
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |c| c.0);
        Ok(Client(client_of(peer, &parts.headers, &s.trusted_proxies)))
    }
}

fn client_of(peer: SocketAddr, headers: &HeaderMap, trusted: &[IpAddr]) -> SocketAddr {
    if !trusted.contains(&peer.ip()) {
        return peer;
    }
    // Each proxy appends the address it received from; read from the nearest hop outwards and
    // stop at the first one that is not a trusted proxy. Anything unparsable ends the walk:
    // what lies beyond it cannot be trusted either.
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for hop in hops.into_iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) if trusted.contains(&ip) => continue,
            Ok(ip) => return SocketAddr::new(ip, 0),
            Err(_) => break,
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
        // Missing or unparsable: the peer itself.
        assert_eq!(client(&HeaderMap::new(), &trusted), "127.0.0.1:5000");
        assert_eq!(client(&with_xff(&["garbage"]), &trusted), "127.0.0.1:5000");
    }
}

//! Which address a request came from. Behind a reverse proxy the connection's peer is the
//! proxy, so `X-Forwarded-For` says who the client was — but anyone can send that header,
//! so it is believed only when the peer is one of the configured `trusted_proxies`, and then
//! only up to the first address that is not itself a trusted proxy (read from the right).

use std::net::IpAddr;

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The header is present but not a list of addresses.
#[derive(Debug, PartialEq, Eq)]
pub struct MalformedForwardedFor;

/// The client's address for a request from `peer` with `headers`.
pub fn resolve(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted: &[IpNet],
) -> Result<IpAddr, MalformedForwardedFor> {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if trusted.is_empty() || !is_trusted(&peer) {
        return Ok(peer);
    }
    let mut chain = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        let text = value.to_str().map_err(|_| MalformedForwardedFor)?;
        for entry in text.split(',') {
            chain.push(
                entry
                    .trim()
                    .parse::<IpAddr>()
                    .map_err(|_| MalformedForwardedFor)?,
            );
        }
    }
    Ok(chain
        .iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .or(chain.first())
        .copied()
        .unwrap_or(peer))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().expect("header"));
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn forwarded_for_counts_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        let spoofed = headers(&["203.0.113.9"]);
        // Not from a trusted proxy: the header is ignored.
        assert_eq!(
            resolve(ip("198.51.100.1"), &spoofed, &trusted),
            Ok(ip("198.51.100.1"))
        );
        assert_eq!(resolve(ip("10.1.2.3"), &spoofed, &[]), Ok(ip("10.1.2.3")));
        // From one: the right-most address that is not a trusted proxy.
        let chain = headers(&["1.2.3.4, 203.0.113.9", "10.0.0.7"]);
        assert_eq!(
            resolve(ip("10.1.2.3"), &chain, &trusted),
            Ok(ip("203.0.113.9"))
        );
        assert_eq!(
            resolve(ip("10.1.2.3"), &HeaderMap::new(), &trusted),
            Ok(ip("10.1.2.3"))
        );
        assert_eq!(
            resolve(ip("10.1.2.3"), &headers(&["10.0.0.9"]), &trusted),
            Ok(ip("10.0.0.9"))
        );
        for bad in ["not-an-ip", "1.2.3.4, ", "1.2.3.4:80", "[::1]"] {
            assert_eq!(
                resolve(ip("10.1.2.3"), &headers(&[bad]), &trusted),
                Err(MalformedForwardedFor),
                "{bad}"
            );
        }
    }
}

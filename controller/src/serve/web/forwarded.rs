//! Who a request comes from behind a reverse proxy the hub trusts (`trusted_proxies` in
//! serve.toml): `X-Forwarded-For` read from the right, past the proxies it names, as nginx's
//! `real_ip_recursive` and Home Assistant's `trusted_proxies` read it. From any other peer the
//! header is ignored: a client could write any address there.

use std::net::IpAddr;

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The addresses and networks whose `X-Forwarded-For` is believed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies(pub Vec<IpNet>);

impl TrustedProxies {
    pub fn trusts(&self, address: IpAddr) -> bool {
        let address = address.to_canonical();
        self.0.iter().any(|net| net.contains(&address))
    }

    /// The client a request from `peer` is for: `peer` itself, unless it is a trusted proxy;
    /// then the rightmost address of `X-Forwarded-For` that is not a trusted proxy (each
    /// proxy appends the peer it saw, so what is left of that was written by the client and
    /// may be anything). A proxy that sent no usable header stands for its client.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut client = peer;
        if !self.trusts(peer) {
            return client;
        }
        let values = headers.get_all("x-forwarded-for").iter();
        let hops: Vec<&str> = values
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .collect();
        for hop in hops.iter().rev() {
            let Some(address) = address_of(hop) else {
                break;
            };
            client = address;
            if !self.trusts(address) {
                break;
            }
        }
        client
    }
}

/// An address as proxies write it: `203.0.113.9`, `2001:db8::1`, or `[2001:db8::1]`.
fn address_of(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    let bare = (hop.strip_prefix('[')).and_then(|h| h.strip_suffix(']'));
    bare.unwrap_or(hop).parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(nets: &[&str]) -> TrustedProxies {
        TrustedProxies(nets.iter().map(|n| n.parse().unwrap()).collect())
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append("x-forwarded-for", value.parse().unwrap());
        }
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_trusted_proxy_names_its_client() {
        let trusted = proxies(&["127.0.0.1/32", "10.0.0.0/24"]);
        let headers = forwarded(&["203.0.113.9"]);
        assert_eq!(trusted.client(ip("127.0.0.1"), &headers), ip("203.0.113.9"));
        assert_eq!(trusted.client(ip("10.0.0.7"), &headers), ip("203.0.113.9"));
        // IPv4 reached over an IPv6 socket.
        let mapped = ip("::ffff:127.0.0.1");
        assert_eq!(trusted.client(mapped, &headers), ip("203.0.113.9"));
    }

    #[test]
    fn what_the_client_wrote_itself_is_not_believed() {
        let trusted = proxies(&["10.0.0.0/24"]);
        // The client wrote "1.1.1.1"; the proxy at 10.0.0.2 appended what it saw, and the one
        // at 10.0.0.3 appended 10.0.0.2.
        let headers = forwarded(&["1.1.1.1, 203.0.113.9", "10.0.0.2"]);
        assert_eq!(trusted.client(ip("10.0.0.3"), &headers), ip("203.0.113.9"));
    }

    #[test]
    fn an_untrusted_peer_is_its_own_client() {
        let trusted = proxies(&["127.0.0.1/32"]);
        let headers = forwarded(&["203.0.113.9"]);
        assert_eq!(trusted.client(ip("192.0.2.4"), &headers), ip("192.0.2.4"));
        let nobody = TrustedProxies::default();
        assert_eq!(nobody.client(ip("127.0.0.1"), &headers), ip("127.0.0.1"));
    }

    #[test]
    fn a_proxy_without_a_usable_header_stands_for_its_client() {
        let trusted = proxies(&["127.0.0.1/32"]);
        let peer = ip("127.0.0.1");
        assert_eq!(trusted.client(peer, &HeaderMap::new()), peer);
        assert_eq!(trusted.client(peer, &forwarded(&["unknown"])), peer);
        // Garbage left of a good address is the client's own writing.
        let headers = forwarded(&["nonsense, 203.0.113.9"]);
        assert_eq!(trusted.client(peer, &headers), ip("203.0.113.9"));
    }

    #[test]
    fn ipv6_clients_are_read_bare_or_in_brackets() {
        let trusted = proxies(&["::1/128"]);
        let peer = ip("::1");
        let bare = forwarded(&["2001:db8::7"]);
        assert_eq!(trusted.client(peer, &bare), ip("2001:db8::7"));
        let bracketed = forwarded(&[" [2001:db8::7] "]);
        assert_eq!(trusted.client(peer, &bracketed), ip("2001:db8::7"));
    }

    #[test]
    fn a_chain_of_trusted_proxies_only_names_the_first() {
        let trusted = proxies(&["10.0.0.0/8"]);
        let headers = forwarded(&["10.1.1.1, 10.2.2.2"]);
        assert_eq!(trusted.client(ip("10.3.3.3"), &headers), ip("10.1.1.1"));
    }
}

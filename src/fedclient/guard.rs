//! Which network addresses federation may send to. A server name or a
//! `base_url` is chosen by whoever sends us a request or serves a well-known
//! document, so without this a signed request with a made-up `origin` would
//! make the server connect wherever the sender likes: its own loopback
//! services, the private network behind it, cloud metadata endpoints. Only
//! addresses on the public internet pass; servers on private networks (and
//! tests on loopback) are reached by naming them with `--federation-peer`,
//! which bypasses this check.
//!
//! The check is made on the addresses a name *resolves to*, inside the
//! connector's resolver ([`GuardedResolver`]), so the connection goes to the
//! address that was checked: a name that resolves to a public address for
//! the check and to 127.0.0.1 for the connection (DNS rebinding) cannot slip
//! through.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::Name;

/// Whether federation may connect to `ip` (unless it belongs to a named peer).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()           // 0.0.0.0
        || a == 0                   // 0.0.0.0/8: "this network"
        || ip.is_loopback()         // 127.0.0.0/8
        || ip.is_private()          // 10/8, 172.16/12, 192.168/16
        || ip.is_link_local()       // 169.254/16 (cloud metadata lives here)
        || (a == 100 && (64..128).contains(&b)) // 100.64/10: carrier-grade NAT
        || (a == 192 && b == 0 && c == 0)       // 192.0.0/24: IETF protocol assignments
        || (a == 192 && b == 0 && c == 2)       // documentation
        || (a == 198 && (b == 18 || b == 19))   // 198.18/15: benchmarking
        || (a == 198 && b == 51 && c == 100)    // documentation
        || (a == 203 && b == 0 && c == 113)     // documentation
        || ip.is_multicast()        // 224/4
        || a >= 240) // 240/4 reserved, and the broadcast address
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    // Addresses that carry an IPv4 address are judged by it.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let embedded = |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    if s[..6] == [0, 0, 0, 0, 0, 0] {
        // ::/96, IPv4-compatible (deprecated), and :: and ::1 themselves.
        return !ip.is_unspecified() && !ip.is_loopback() && is_public_v4(embedded(s[6], s[7]));
    }
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        return is_public_v4(embedded(s[6], s[7])); // NAT64
    }
    if s[0] == 0x2002 {
        return is_public_v4(embedded(s[1], s[2])); // 6to4
    }
    !((s[0] & 0xff00) == 0xff00         // multicast
        || (s[0] & 0xfe00) == 0xfc00    // unique local fc00::/7
        || (s[0] & 0xffc0) == 0xfe80    // link-local fe80::/10
        || (s[0] & 0xffc0) == 0xfec0    // site-local (deprecated) fec0::/10
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x2001 && s[1] == 0)      // Teredo: tunnels to an address it hides
        || (s[0] == 0x0100 && s[1..4] == [0, 0, 0])) // discard-only 100::/64
}

/// The host of a URL authority as an IP address, if it is one (`[::1]` too).
pub fn ip_literal(host: &str) -> Option<IpAddr> {
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host).parse().ok()
}

/// Why the guarded resolver gave no address.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("{name} resolves only to addresses federation does not send to")]
    Forbidden { name: String },
    #[error("cannot resolve {name}: {source}")]
    Resolve { name: String, source: std::io::Error },
}

/// A resolver for hyper-util's `HttpConnector` that resolves with the
/// system's resolver and keeps only public addresses ([`is_public`]).
#[derive(Clone, Default)]
pub struct GuardedResolver;

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = GuardError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, GuardError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), GuardError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            // The connector puts the URL's port on each address afterwards.
            let resolved = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|source| GuardError::Resolve { name: host.clone(), source })?;
            let public: Vec<SocketAddr> = resolved.filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                return Err(GuardError::Forbidden { name: host });
            }
            Ok(public.into_iter())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_special_addresses_are_refused() {
        for ip in [
            "0.0.0.0",
            "0.1.2.3",
            "127.0.0.1",
            "127.255.0.9",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "192.0.0.8",
            "192.0.2.1",
            "198.18.0.1",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "2001::1",
            "100::1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip} must be refused");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for ip in
            ["1.1.1.1", "8.8.8.8", "172.32.0.1", "100.128.0.1", "2606:4700::1111", "::ffff:8.8.8.8", "2002:808:808::"]
        {
            assert!(is_public(ip.parse().unwrap()), "{ip} is public");
        }
    }

    #[test]
    fn ip_literals_in_authorities() {
        assert_eq!(ip_literal("[::1]"), Some("::1".parse().unwrap()));
        assert_eq!(ip_literal("127.0.0.1"), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(ip_literal("localhost"), None);
    }

    #[tokio::test]
    async fn names_resolving_to_loopback_are_refused() {
        let mut r = GuardedResolver;
        let err = tower_service::Service::call(&mut r, "localhost".parse().unwrap()).await.unwrap_err();
        assert!(matches!(err, GuardError::Forbidden { .. }), "{err}");
    }
}

//! The egress policy: which network addresses an upstream call may reach.
//!
//! A credential created through the API names its provider's URLs itself, so without a
//! policy any admin of one tenant could make the gateway POST to `127.0.0.1`, a cloud
//! metadata address or a private network and read the answer back through the event log
//! (SSRF). Such calls are [`Egress::Guarded`]: they may reach public addresses, plus what
//! the operator allow-lists (hosts, `*.suffix` patterns, IPs and CIDRs). Credentials from
//! the operator's own config file are [`Egress::Trusted`].
//!
//! The check runs on the address actually connected to: IP literals before the request,
//! host names inside the HTTP client's resolver, so a name that resolves to a public address
//! when a credential is stored and to `127.0.0.1` later (DNS rebinding) is still refused.

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use url::{Host, Url};

/// Whether an upstream call is held to the egress policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Egress {
    /// Configured by the operator (the config file): any address.
    Trusted,
    /// Configured by an API caller: public addresses and the operator's allow-list only.
    Guarded,
}

/// The operator's allow-list (`[egress] allow`).
#[derive(Debug, Clone, Default)]
pub struct EgressPolicy {
    hosts: Vec<String>,
    suffixes: Vec<String>,
    nets: Vec<IpNet>,
}

/// A refused destination. The message names the setting that would allow it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "egress policy: {host} is {ip}, a {class} address, which credentials created through the \
     API may not reach; an operator can allow it with [egress] allow = [\"{host}\"] (or the \
     address or a CIDR)"
)]
pub struct EgressDenied {
    pub host: String,
    pub ip: IpAddr,
    pub class: &'static str,
}

impl EgressPolicy {
    /// Parses allow-list entries: `host.example`, `*.example`, `10.1.2.3`, `10.0.0.0/8`,
    /// `::1`. The error names the entry and what is accepted.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, String> {
        let mut policy = Self::default();
        for (i, entry) in entries.iter().enumerate() {
            let raw = entry.as_ref().trim();
            let bad = |why: &str| {
                format!("egress.allow[{i}] = {raw:?} {why}; use a host name, `*.domain`, an IP address or a CIDR such as 10.0.0.0/8")
            };
            if raw.is_empty() {
                return Err(bad("is empty"));
            }
            if let Ok(net) = raw.parse::<IpNet>() {
                policy.nets.push(net);
            } else if let Ok(ip) = raw.trim_matches(['[', ']']).parse::<IpAddr>() {
                policy.nets.push(IpNet::from(ip));
            } else if let Some(suffix) = raw.strip_prefix("*.") {
                if !is_host_name(suffix) {
                    return Err(bad("is not a valid pattern"));
                }
                policy
                    .suffixes
                    .push(format!(".{}", suffix.to_ascii_lowercase()));
            } else if is_host_name(raw) {
                policy.hosts.push(raw.to_ascii_lowercase());
            } else {
                return Err(bad("is not a host name, address or CIDR"));
            }
        }
        Ok(policy)
    }

    /// True when the operator allow-listed this host name (not an address).
    pub fn allows_host(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.hosts.contains(&host) || self.suffixes.iter().any(|s| host.ends_with(s))
    }

    /// Checks one address that `host` resolved to (or is).
    pub fn check_ip(&self, host: &str, ip: IpAddr) -> Result<(), EgressDenied> {
        let ip = canonical(ip);
        match non_public(ip) {
            None => Ok(()),
            Some(_) if self.nets.iter().any(|n| n.contains(&ip)) => Ok(()),
            Some(_) if self.allows_host(host) => Ok(()),
            Some(class) => Err(EgressDenied {
                host: host.to_owned(),
                ip,
                class,
            }),
        }
    }

    /// The check before a guarded request leaves: an IP literal is checked here (the HTTP
    /// client does not resolve it); a name is checked by [`GuardedResolver`] at connect time.
    pub fn check_url_literal(&self, url: &Url) -> Result<(), EgressDenied> {
        match url.host() {
            Some(Host::Ipv4(ip)) => self.check_ip(&ip.to_string(), IpAddr::V4(ip)),
            Some(Host::Ipv6(ip)) => self.check_ip(&ip.to_string(), IpAddr::V6(ip)),
            Some(Host::Domain(_)) | None => Ok(()),
        }
    }

    /// The check when a credential is stored: the literal, and every address the name
    /// resolves to now (within `timeout`; a name that does not resolve is left to the
    /// connect-time check).
    pub async fn check_url(&self, url: &Url, timeout: Duration) -> Result<(), EgressDenied> {
        self.check_url_literal(url)?;
        let Some(Host::Domain(name)) = url.host() else {
            return Ok(());
        };
        if self.allows_host(name) {
            return Ok(());
        }
        let port = url.port_or_known_default().unwrap_or(443);
        let lookup = tokio::net::lookup_host((name, port));
        if let Ok(Ok(addrs)) = tokio::time::timeout(timeout, lookup).await {
            for addr in addrs {
                self.check_ip(name, addr.ip())?;
            }
        }
        Ok(())
    }
}

/// An IPv4 address carried in IPv6 (`::ffff:127.0.0.1`) is judged as the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// Why an address is not a public unicast one, or `None` when it is.
fn non_public(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => non_public_v4(v4),
        IpAddr::V6(v6) => non_public_v6(v6),
    }
}

fn non_public_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_unspecified() || a == 0 {
        Some("unspecified")
    } else if a == 100 && (64..128).contains(&b) {
        Some("shared (carrier-grade NAT)")
    } else if ip.is_multicast() || ip.is_broadcast() || a >= 240 {
        Some("multicast or reserved")
    } else if a == 192 && b == 0 && ip.octets()[2] == 0 {
        Some("IETF protocol assignment")
    } else if a == 198 && (b == 18 || b == 19) {
        Some("benchmarking")
    } else {
        None
    }
}

fn non_public_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() {
        Some("unspecified")
    } else if first & 0xffc0 == 0xfe80 {
        Some("link-local")
    } else if first & 0xfe00 == 0xfc00 {
        Some("unique local (private)")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if let Some(v4) = ip.to_ipv4() {
        // IPv4-compatible (::a.b.c.d) and NAT64 forms are judged by their IPv4 part.
        non_public_v4(v4)
    } else if first == 0x64 && ip.segments()[1] == 0xff9b {
        non_public_v4(Ipv4Addr::from((u128::from(ip) & 0xffff_ffff) as u32))
    } else {
        None
    }
}

fn is_host_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The resolver of the guarded HTTP client: resolves as usual, then keeps only addresses the
/// policy allows. When none remain, the connection fails with [`EgressDenied`].
pub(crate) struct GuardedResolver {
    pub(crate) policy: Arc<EgressPolicy>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut first_denial = None;
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|a| match policy.check_ip(&host, a.ip()) {
                    Ok(()) => true,
                    Err(denied) => {
                        first_denial.get_or_insert(denied);
                        false
                    }
                })
                .collect();
            match (allowed.is_empty(), first_denial) {
                (true, Some(denied)) => Err(Box::new(denied) as _),
                _ => Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs),
            }
        })
    }
}

/// The egress denial somewhere in an error's source chain, if that is why it failed.
pub(crate) fn find_denial(e: &(dyn std::error::Error + 'static)) -> Option<EgressDenied> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        if let Some(denied) = err.downcast_ref::<EgressDenied>() {
            return Some(denied.clone());
        }
        current = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn private_and_special_addresses_are_refused() {
        let p = EgressPolicy::default();
        for (addr, class) in [
            ("127.0.0.1", "loopback"),
            ("127.9.9.9", "loopback"),
            ("169.254.169.254", "link-local"),
            ("10.0.0.1", "private"),
            ("172.16.5.4", "private"),
            ("192.168.1.1", "private"),
            ("0.0.0.0", "unspecified"),
            ("100.64.0.1", "shared (carrier-grade NAT)"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "link-local"),
            ("fe80::1", "link-local"),
            ("fd00::1", "unique local (private)"),
            ("64:ff9b::a00:1", "private"),
        ] {
            let e = p.check_ip("h", ip(addr)).unwrap_err();
            assert_eq!(e.class, class, "{addr}");
        }
        for public in ["93.184.216.34", "8.8.8.8", "2606:4700::1111"] {
            assert!(p.check_ip("h", ip(public)).is_ok(), "{public}");
        }
    }

    #[test]
    fn the_allow_list_opens_hosts_addresses_and_ranges() {
        let p =
            EgressPolicy::parse(&["idp.internal", "*.corp.example", "10.0.0.0/8", "::1"]).unwrap();
        assert!(p.check_ip("idp.internal", ip("127.0.0.1")).is_ok());
        assert!(p.check_ip("a.b.corp.example", ip("192.168.0.1")).is_ok());
        assert!(p.check_ip("corp.example.evil", ip("192.168.0.1")).is_err());
        assert!(p.check_ip("x", ip("10.2.3.4")).is_ok());
        assert!(p.check_ip("x", ip("::1")).is_ok());
        assert!(p.check_ip("x", ip("127.0.0.1")).is_err());
        assert!(p.allows_host("IDP.internal."));
    }

    #[test]
    fn bad_entries_name_their_index() {
        let e = EgressPolicy::parse(&["ok.example", "not a host"]).unwrap_err();
        assert!(e.contains("egress.allow[1]"), "{e}");
        assert!(EgressPolicy::parse(&[""]).is_err());
        assert!(EgressPolicy::parse(&["*."]).is_err());
    }

    #[test]
    fn literals_are_checked_before_sending_and_the_message_names_the_setting() {
        let p = EgressPolicy::default();
        for url in [
            "http://127.0.0.1:9/token",
            "http://[::1]/token",
            "http://2130706433/token",
            "https://169.254.169.254/latest/meta-data",
            "http://0x7f.1/",
        ] {
            let e = p.check_url_literal(&Url::parse(url).unwrap()).unwrap_err();
            assert!(e.to_string().contains("[egress] allow"), "{e}");
        }
        assert!(p
            .check_url_literal(&Url::parse("https://login.example.com/token").unwrap())
            .is_ok());
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_refused_when_stored() {
        let p = EgressPolicy::default();
        let url = Url::parse("http://localhost:8080/token").unwrap();
        let e = p.check_url(&url, Duration::from_secs(2)).await.unwrap_err();
        assert_eq!(e.class, "loopback");
        let open = EgressPolicy::parse(&["localhost"]).unwrap();
        assert!(open.check_url(&url, Duration::from_secs(2)).await.is_ok());
    }
}

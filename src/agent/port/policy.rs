//! Where port sessions may connect (pure): the host administrator's policy over the
//! document's request.
//!
//! A port session's document names a port and, for remote hosts, a host; whoever may
//! start the session chooses both. Upstream denies a fixed list of addresses (instance
//! metadata, the VPC's DNS resolver, time sync, KMS activation; IPv4 and IPv6) and
//! nothing else. Here that list is always denied, and the administrator can add to it
//! (`port_forwarding_denied_cidrs`), restrict connections to some networks
//! (`port_forwarding_allowed_cidrs`) or ports (`port_forwarding_allowed_ports`), cap the
//! connections of one session, or turn port sessions off.
//!
//! Checks are made on every resolved address, after DNS, and every dial goes to an
//! address that passed (never a second resolution): a name that resolves to a denied
//! address is denied, and one that changes its answer later cannot slip through. An
//! IPv4-mapped IPv6 address is checked as the IPv4 address it is.

use ipnet::IpNet;
use std::net::IpAddr;
use std::ops::RangeInclusive;

/// Upstream's denied destinations (`DefaultDeniedPortForwardingRemoteIPs`): instance
/// metadata, the Route 53 resolver, time sync, KMS activation — IPv4 and IPv6.
pub const ALWAYS_DENIED: &[&str] = &[
    "169.254.169.254/32",
    "fd00:ec2::254/128",
    "169.254.169.253/32",
    "fd00:ec2::253/128",
    "169.254.169.123/32",
    "fd00:ec2::123/128",
    "169.254.169.250/32",
    "169.254.169.251/32",
    "fd00:ec2::240/128",
];

/// Connections one port session may hold open at once, by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;
/// The most connections one port session may be allowed.
pub const MAX_MAX_CONNECTIONS: usize = 4096;

/// The administrator's port-forwarding policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortPolicy {
    /// Port sessions are served at all.
    pub enabled: bool,
    /// When not empty, only these networks may be reached.
    pub allowed: Vec<IpNet>,
    /// Never reached: [`ALWAYS_DENIED`] and the configured ones.
    pub denied: Vec<IpNet>,
    /// When set, only these ports may be reached.
    pub ports: Option<Vec<RangeInclusive<u16>>>,
    /// Connections one session may hold open at once.
    pub max_connections: usize,
}

impl Default for PortPolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            allowed: Vec::new(),
            denied: always_denied(),
            ports: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

fn always_denied() -> Vec<IpNet> {
    ALWAYS_DENIED
        .iter()
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// Why a destination is refused (shown to the user and recorded).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    /// Port sessions are turned off on this host.
    #[error("port forwarding is turned off on this instance (port_forwarding = \"off\" in the agent's configuration)")]
    Disabled,
    /// The port is not among the allowed ones.
    #[error(
        "port {0} is not allowed by the agent's configuration (port_forwarding_allowed_ports)"
    )]
    Port(u16),
    /// The address is denied.
    #[error("forwarding to {0} is forbidden")]
    Denied(IpAddr),
    /// An unspecified address (`0.0.0.0`, `0`, `::`): connecting to it reaches this host
    /// itself, whatever the loopback rules say, so it is never a destination.
    #[error("forwarding to {0} is forbidden (an unspecified address; name the host instead)")]
    Unspecified(IpAddr),
    /// The address is outside every allowed network.
    #[error("forwarding to {0} is not allowed by the agent's configuration (port_forwarding_allowed_cidrs)")]
    NotAllowed(IpAddr),
}

impl PortPolicy {
    /// Whether port sessions may run at all.
    ///
    /// # Errors
    /// [`Denial::Disabled`].
    pub fn check_enabled(&self) -> Result<(), Denial> {
        if self.enabled {
            Ok(())
        } else {
            Err(Denial::Disabled)
        }
    }

    /// Whether `port` may be reached.
    ///
    /// # Errors
    /// [`Denial::Port`].
    pub fn check_port(&self, port: u16) -> Result<(), Denial> {
        match &self.ports {
            Some(ranges) if !ranges.iter().any(|r| r.contains(&port)) => Err(Denial::Port(port)),
            _ => Ok(()),
        }
    }

    /// Whether `ip` may be reached.
    ///
    /// # Errors
    /// [`Denial::Denied`] or [`Denial::NotAllowed`].
    pub fn check_address(&self, ip: IpAddr) -> Result<(), Denial> {
        let ip = ip.to_canonical();
        let this_network = match ip {
            IpAddr::V4(a) => a.octets()[0] == 0,
            IpAddr::V6(a) => a.is_unspecified(),
        };
        if this_network {
            return Err(Denial::Unspecified(ip));
        }
        if self.denied.iter().any(|n| n.contains(&ip)) {
            return Err(Denial::Denied(ip));
        }
        if !self.allowed.is_empty() && !self.allowed.iter().any(|n| n.contains(&ip)) {
            return Err(Denial::NotAllowed(ip));
        }
        Ok(())
    }
}

/// The addresses of a VPC that upstream denies besides [`ALWAYS_DENIED`] (its
/// `dnsRoutingAddress`): for each of the VPC's CIDR blocks (IPv4 and IPv6), the first
/// four addresses — the network, the VPC router, the Amazon-provided DNS resolver
/// (base + 2) and the address reserved for future use — and the last one. As upstream,
/// only the last byte is incremented from the base.
pub fn vpc_reserved(cidrs: &[IpNet]) -> Vec<IpNet> {
    let mut out = Vec::new();
    for net in cidrs {
        let base = net.network();
        for i in 0..4u8 {
            let addr = match base {
                IpAddr::V4(a) => {
                    let mut o = a.octets();
                    o[3] = o[3].wrapping_add(i);
                    IpAddr::from(o)
                }
                IpAddr::V6(a) => {
                    let mut o = a.octets();
                    o[15] = o[15].wrapping_add(i);
                    IpAddr::from(o)
                }
            };
            out.push(IpNet::from(addr));
        }
        out.push(IpNet::from(net.broadcast()));
    }
    out.dedup();
    out
}

/// Parses networks: CIDRs (`10.0.0.0/8`, `fd00::/8`) or single addresses.
///
/// # Errors
/// The entry that is neither, with what was expected.
pub fn parse_networks<S: AsRef<str>>(items: &[S]) -> Result<Vec<IpNet>, String> {
    items
        .iter()
        .map(|s| s.as_ref().trim())
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map(|n| n.trunc())
                .map_err(|_| {
                    format!("{s:?} is not an IP address or a CIDR network (e.g. 10.0.0.0/8)")
                })
        })
        .collect()
}

/// Parses ports: numbers and ranges (`22`, `8000-8999`).
///
/// # Errors
/// The entry that is neither, with what was expected.
pub fn parse_ports<S: AsRef<str>>(items: &[S]) -> Result<Vec<RangeInclusive<u16>>, String> {
    let port = |s: &str| -> Result<u16, String> {
        match s.trim().parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(format!("{s:?} is not a port (1-65535)")),
        }
    };
    items
        .iter()
        .map(|s| s.as_ref().trim())
        .filter(|s| !s.is_empty())
        .map(|s| match s.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (port(a)?, port(b)?);
                if a > b {
                    return Err(format!("{s:?}: the range is backwards"));
                }
                Ok(a..=b)
            }
            None => port(s).map(|p| p..=p),
        })
        .collect()
}

/// Splits a comma-separated flag or environment value.
pub fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn upstreams_list_is_always_denied_in_both_families() {
        let p = PortPolicy::default();
        for a in [
            "169.254.169.254",
            "fd00:ec2::254",
            "169.254.169.253",
            "169.254.169.123",
            "fd00:ec2::123",
            "169.254.169.250",
            "169.254.169.251",
            "fd00:ec2::240",
            // IPv4-mapped IPv6 is the IPv4 address.
            "::ffff:169.254.169.254",
        ] {
            assert!(
                matches!(p.check_address(ip(a)), Err(Denial::Denied(_))),
                "{a}"
            );
        }
        for a in ["127.0.0.1", "::1", "10.1.2.3", "169.254.169.1"] {
            assert_eq!(p.check_address(ip(a)), Ok(()), "{a}");
        }
        // Unspecified addresses reach this host itself: never a destination.
        for a in ["0.0.0.0", "0.1.2.3", "::", "::ffff:0.0.0.0"] {
            assert!(
                matches!(p.check_address(ip(a)), Err(Denial::Unspecified(_))),
                "{a}"
            );
        }
    }

    #[test]
    fn the_administrator_narrows_networks_and_ports() {
        let p = PortPolicy {
            allowed: parse_networks(&["10.0.0.0/8", "127.0.0.1"]).unwrap(),
            denied: [always_denied(), parse_networks(&["10.9.0.0/16"]).unwrap()].concat(),
            ports: Some(parse_ports(&["22", "5432", "8000-8999"]).unwrap()),
            ..PortPolicy::default()
        };
        assert_eq!(p.check_address(ip("10.1.2.3")), Ok(()));
        assert_eq!(p.check_address(ip("127.0.0.1")), Ok(()));
        assert_eq!(
            p.check_address(ip("127.0.0.2")),
            Err(Denial::NotAllowed(ip("127.0.0.2")))
        );
        assert_eq!(
            p.check_address(ip("10.9.1.1")),
            Err(Denial::Denied(ip("10.9.1.1")))
        );
        assert_eq!(p.check_port(22), Ok(()));
        assert_eq!(p.check_port(8500), Ok(()));
        assert_eq!(p.check_port(9000), Err(Denial::Port(9000)));
        let off = PortPolicy {
            enabled: false,
            ..PortPolicy::default()
        };
        assert_eq!(off.check_enabled(), Err(Denial::Disabled));
        assert!(Denial::Disabled.to_string().contains("port_forwarding"));
    }

    #[test]
    fn a_vpcs_reserved_addresses_are_its_first_four_and_last() {
        let nets = parse_networks(&["10.0.0.0/16", "2600:1f18:abcd:1200::/56"]).unwrap();
        let reserved: Vec<String> = vpc_reserved(&nets)
            .iter()
            .map(|n| n.addr().to_string())
            .collect();
        assert_eq!(
            reserved,
            [
                "10.0.0.0",
                "10.0.0.1",
                "10.0.0.2",
                "10.0.0.3",
                "10.0.255.255",
                "2600:1f18:abcd:1200::",
                "2600:1f18:abcd:1200::1",
                "2600:1f18:abcd:1200::2",
                "2600:1f18:abcd:1200::3",
                "2600:1f18:abcd:12ff:ffff:ffff:ffff:ffff",
            ]
        );
        let p = PortPolicy {
            denied: [always_denied(), vpc_reserved(&nets)].concat(),
            ..PortPolicy::default()
        };
        assert!(p.check_address(ip("10.0.0.2")).is_err());
        assert_eq!(p.check_address(ip("10.0.0.4")), Ok(()));
    }

    #[test]
    fn bad_entries_are_named() {
        assert!(parse_networks(&["10.0.0.0/33"])
            .unwrap_err()
            .contains("10.0.0.0/33"));
        assert!(parse_networks(&["example.com"]).is_err());
        assert!(parse_ports(&["0"]).unwrap_err().contains("\"0\""));
        assert!(parse_ports(&["70000"]).is_err());
        assert!(parse_ports(&["9-3"]).unwrap_err().contains("backwards"));
        assert_eq!(parse_ports(&[" 22 ", ""]).unwrap(), vec![22..=22]);
        assert_eq!(split_list("a, b,,c"), ["a", "b", "c"]);
        // A network with host bits set is taken as its network.
        assert_eq!(
            parse_networks(&["10.1.2.3/8"]).unwrap(),
            vec!["10.0.0.0/8".parse::<IpNet>().unwrap()]
        );
    }
}

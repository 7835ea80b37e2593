//! Where the message gateway and the SSM API are (protocol.md §1.1), as pure functions:
//! an explicit endpoint is normalized (a URL, or a bare host name as upstream accepts),
//! otherwise the host is `<service>.<region>.<domain>` with the domain chosen by the
//! region's partition prefix, unless a service domain is configured.

/// The message gateway's service name: the endpoint prefix and the SigV4 service.
pub const SSMMESSAGES: &str = "ssmmessages";
/// The SSM API's service name (UpdateInstanceInformation, StartSession…).
pub const SSM: &str = "ssm";
/// Longest region name accepted (as upstream).
pub const MAX_REGION_LEN: usize = 100;

/// The DNS domain of a region's partition (§1.1): `cn-` regions are under
/// `amazonaws.com.cn`, the isolated and sovereign partitions under their own domains,
/// everything else under `amazonaws.com`.
pub fn partition_domain(region: &str) -> &'static str {
    const BY_PREFIX: [(&str, &str); 6] = [
        ("cn-", "amazonaws.com.cn"),
        ("us-iso-", "c2s.ic.gov"),
        ("us-isob-", "sc2s.sgov.gov"),
        ("us-isof-", "csp.hci.ic.gov"),
        ("eu-isoe-", "cloud.adc-e.uk"),
        ("eusc-de-", "amazonaws.eu"),
    ];
    BY_PREFIX
        .iter()
        .find(|(prefix, _)| region.starts_with(prefix))
        .map_or("amazonaws.com", |(_, domain)| domain)
}

/// Checks a region name: `[A-Za-z0-9-]{1,100}` (§1.1).
///
/// # Errors
/// Why the name is refused.
pub fn check_region(region: &str) -> Result<(), String> {
    if region.is_empty() {
        return Err("the region is empty".into());
    }
    if region.len() > MAX_REGION_LEN {
        return Err(format!(
            "the region is longer than {MAX_REGION_LEN} characters"
        ));
    }
    if !region
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(format!(
            "{region:?} is not a region name (letters, digits and -, e.g. us-east-1)"
        ));
    }
    Ok(())
}

/// `https://<service>.<region>.<domain>`; `service_domain` overrides the partition's.
///
/// # Errors
/// An invalid region or service domain.
pub fn for_region(
    service: &str,
    region: &str,
    service_domain: Option<&str>,
) -> Result<String, String> {
    check_region(region)?;
    let domain = match service_domain {
        Some(d) => {
            check_host(d).map_err(|e| format!("service_domain: {e}"))?;
            d.trim_matches('.')
        }
        None => partition_domain(region),
    };
    Ok(format!("https://{service}.{region}.{domain}"))
}

/// Normalizes an explicit endpoint to `scheme://host[:port]`: `http://` and `https://`
/// URLs keep their scheme and port (a trailing `/` and a default port are dropped); a bare host name (with an
/// optional port) means HTTPS, as upstream treats a value without a scheme.
///
/// # Errors
/// Another scheme, a path, query or credentials in the URL, or an invalid host.
pub fn normalize(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    let (scheme, rest) = match raw.split_once("://") {
        Some(("http", rest)) => ("http", rest),
        Some(("https", rest)) => ("https", rest),
        Some((other, _)) => {
            return Err(format!(
                "{raw:?}: the scheme must be http:// or https://, not {other}://"
            ))
        }
        None => ("https", raw),
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#']) {
        return Err(format!(
            "{raw:?}: give only scheme://host[:port]; the paths (/v1/...) are added by the agent"
        ));
    }
    if authority.contains('@') {
        return Err(format!(
            "{raw:?}: credentials do not belong in the endpoint"
        ));
    }
    let (host, port) = split_port(authority).map_err(|e| format!("{raw:?}: {e}"))?;
    check_host(host).map_err(|e| format!("{raw:?}: {e}"))?;
    // The default port is dropped, so the Host header every HTTP and websocket library
    // sends (and the signature covers) is the same.
    let default = if scheme == "https" { 443 } else { 80 };
    Ok(match port.filter(|p| *p != default) {
        Some(p) => format!("{scheme}://{host}:{p}"),
        None => format!("{scheme}://{host}"),
    })
}

/// `host[:port]` or `[v6]:port` → (host, port).
fn split_port(authority: &str) -> Result<(&str, Option<u16>), String> {
    let (host, port) = if authority.starts_with('[') {
        match authority.split_once(']') {
            Some((h, "")) => (&authority[..=h.len()], None),
            Some((h, p)) => (
                &authority[..=h.len()],
                Some(p.strip_prefix(':').ok_or("junk after the IPv6 address")?),
            ),
            None => return Err("an unclosed [ in the host".into()),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{p:?} is not a port (1-65535)"))?,
        ),
        None => None,
    };
    Ok((host, port))
}

/// A DNS name, an IPv4 address or a bracketed IPv6 address.
fn check_host(host: &str) -> Result<(), String> {
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6
            .parse::<std::net::Ipv6Addr>()
            .map(|_| ())
            .map_err(|_| format!("{host} is not an IPv6 address"));
    }
    let name = host.trim_end_matches('.');
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!("{host:?} is not a host name"));
    }
    Ok(())
}

/// The websocket base for an endpoint: `https://h` → `wss://h`, `http://h` → `ws://h`.
pub fn websocket_base(endpoint: &str) -> String {
    if let Some(rest) = endpoint.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = endpoint.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        endpoint.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_pick_their_partition_domain() {
        let cases = [
            ("us-east-1", "https://ssmmessages.us-east-1.amazonaws.com"),
            ("eu-west-3", "https://ssmmessages.eu-west-3.amazonaws.com"),
            (
                "cn-north-1",
                "https://ssmmessages.cn-north-1.amazonaws.com.cn",
            ),
            (
                "us-iso-east-1",
                "https://ssmmessages.us-iso-east-1.c2s.ic.gov",
            ),
            (
                "us-isob-east-1",
                "https://ssmmessages.us-isob-east-1.sc2s.sgov.gov",
            ),
            (
                "us-isof-south-1",
                "https://ssmmessages.us-isof-south-1.csp.hci.ic.gov",
            ),
            (
                "eu-isoe-west-1",
                "https://ssmmessages.eu-isoe-west-1.cloud.adc-e.uk",
            ),
            (
                "eusc-de-east-1",
                "https://ssmmessages.eusc-de-east-1.amazonaws.eu",
            ),
            (
                "us-gov-west-1",
                "https://ssmmessages.us-gov-west-1.amazonaws.com",
            ),
        ];
        for (region, url) in cases {
            assert_eq!(for_region(SSMMESSAGES, region, None).unwrap(), url);
        }
        assert_eq!(
            for_region(SSM, "cn-northwest-1", None).unwrap(),
            "https://ssm.cn-northwest-1.amazonaws.com.cn"
        );
        assert_eq!(
            for_region(SSMMESSAGES, "us-east-1", Some("example.internal")).unwrap(),
            "https://ssmmessages.us-east-1.example.internal"
        );
    }

    #[test]
    fn bad_regions_and_domains_are_refused() {
        for bad in [
            "",
            "us east 1",
            "us-east-1/../x",
            "ré-gion",
            &"a".repeat(101),
        ] {
            assert!(for_region(SSMMESSAGES, bad, None).is_err(), "{bad:?}");
        }
        assert!(check_region(&"a".repeat(100)).is_ok());
        let e = for_region(SSMMESSAGES, "us-east-1", Some("evil.com/x")).unwrap_err();
        assert!(e.starts_with("service_domain"), "{e}");
    }

    #[test]
    fn explicit_endpoints_are_urls_or_bare_hosts() {
        let ok = [
            ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
            ("https://gw.example:8443/", "https://gw.example:8443"),
            (
                "ssmmessages.us-east-1.amazonaws.com",
                "https://ssmmessages.us-east-1.amazonaws.com",
            ),
            ("vpce-1.example:443", "https://vpce-1.example"),
            ("http://gw:80", "http://gw"),
            ("http://gw:443", "http://gw:443"),
            ("http://[::1]:9000", "http://[::1]:9000"),
            ("https://[fd00::1]", "https://[fd00::1]"),
        ];
        for (raw, want) in ok {
            assert_eq!(normalize(raw).unwrap(), want, "{raw}");
        }
        let bad = [
            "ftp://host",
            "ws://host:1",
            "https://host/v1",
            "https://u:p@host",
            "https://host:0",
            "https://host:99999",
            "https://ho st",
            "https://-host",
            "http://[::1",
            "http://[zz]:1",
            "",
        ];
        for raw in bad {
            assert!(normalize(raw).is_err(), "{raw:?}");
        }
    }

    #[test]
    fn websocket_bases_follow_the_scheme() {
        assert_eq!(websocket_base("https://h:1"), "wss://h:1");
        assert_eq!(websocket_base("http://h"), "ws://h");
    }
}

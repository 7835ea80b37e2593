//! Version strings in the handshake, and the two ways upstream compares them (pure).
//!
//! The agent's `AgentVersion` (HandshakeRequest) and the client's `ClientVersion`
//! (HandshakeResponse) are not cosmetic for port sessions: each side picks its port mode
//! (multiplexed, one connection, or standard streams) from the *other* side's version,
//! and the two choices are never negotiated (protocol-sessions.md §2.2). If they
//! disagree, raw TCP bytes are parsed as smux frames, or smux frames reach the
//! destination. So both ends of this crate advertise compatibility levels that the
//! official peers understand, not this crate's own version (`CARGO_PKG_VERSION`, which
//! is still reported where it is informational: UpdateInstanceInformation, the logs):
//!
//! * [`AGENT_COMPAT_VERSION`] — four numeric parts (session-manager-plugin compares only
//!   versions with the same number of parts), greater than every agent gate the plugin
//!   knows (`2.3.722.0` TerminateSession flag, `3.0.196.0` multiplexing, `3.1.1511.0`
//!   multiplexing without smux keepalive), and no higher than needed.
//! * [`CLIENT_COMPAT_VERSION`] — at or above the agent's multiplexing gate (`1.1.70`)
//!   and above its keepalive gate (`1.2.331.0`), so the agent neither expects nor sends
//!   smux keepalives.
//!
//! [`agent_compare`] is upstream agent's comparison (`versionutil.Compare`, strict),
//! [`plugin_greater`] the plugin's (`versionutil`: same number of parts, all numeric,
//! strictly greater, anything else "not supported"). Each side of this crate decides with
//! the rule its official counterpart uses, so that our agent with the official plugin, the
//! official agent with our client, and ours with ours all agree.

use std::cmp::Ordering;

/// `AgentVersion` in every HandshakeRequest (see the module docs).
pub const AGENT_COMPAT_VERSION: &str = "3.2.0.0";
/// `ClientVersion` in the HandshakeResponse of `session-agent connect`.
pub const CLIENT_COMPAT_VERSION: &str = "1.2.500.0";
/// The agent multiplexes `LocalPortForwarding` for clients at or above this.
pub const MUX_MIN_CLIENT: &str = "1.1.70";
/// The agent sends smux keepalives to clients at or below this.
pub const MUX_KEEPALIVE_MAX_CLIENT: &str = "1.2.331.0";
/// The plugin multiplexes `LocalPortForwarding` for agents above this.
pub const MUX_AFTER_AGENT: &str = "3.0.196.0";
/// The plugin sends the TerminateSession flag (instead of calling the API) to agents
/// above this.
pub const TERMINATE_FLAG_AFTER_AGENT: &str = "2.3.722.0";
/// The plugin turns smux keepalive off for agents above this.
pub const MUX_NO_KEEPALIVE_AFTER_AGENT: &str = "3.1.1511.0";

/// Upstream agent's comparison: dot-separated parts compared numerically when both
/// parse as numbers, as text otherwise; when every shared part is equal, the version
/// with more parts is greater. An empty version (no handshake) is lower than any other.
pub fn agent_compare(a: &str, b: &str) -> Ordering {
    if a.is_empty() || b.is_empty() {
        return (!a.is_empty()).cmp(&!b.is_empty());
    }
    let (pa, pb): (Vec<&str>, Vec<&str>) = (a.split('.').collect(), b.split('.').collect());
    for (x, y) in pa.iter().zip(&pb) {
        let o = match (x.parse::<u64>(), y.parse::<u64>()) {
            (Ok(x), Ok(y)) => x.cmp(&y),
            _ => x.cmp(y),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    pa.len().cmp(&pb.len())
}

/// The plugin's comparison: true only when both versions have the same number of
/// parts, every part is a number, and `a` is strictly greater than `b`.
pub fn plugin_greater(a: &str, b: &str) -> bool {
    let parse = |v: &str| -> Option<Vec<u64>> { v.split('.').map(|p| p.parse().ok()).collect() };
    match (parse(a), parse(b)) {
        (Some(x), Some(y)) if x.len() == y.len() => x > y,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_rule_as_upstream() {
        assert_eq!(
            agent_compare("1.2.650.0", MUX_MIN_CLIENT),
            Ordering::Greater
        );
        assert_eq!(agent_compare("1.1.70", MUX_MIN_CLIENT), Ordering::Equal);
        assert_eq!(agent_compare("1.1.69.9", MUX_MIN_CLIENT), Ordering::Less);
        assert_eq!(agent_compare("1.1.70.0", MUX_MIN_CLIENT), Ordering::Greater);
        assert_eq!(agent_compare("", MUX_MIN_CLIENT), Ordering::Less);
        assert_eq!(agent_compare("", ""), Ordering::Equal);
        assert_eq!(agent_compare("1.10.0", "1.9.0"), Ordering::Greater);
        assert_eq!(
            agent_compare("1.2.331.0", MUX_KEEPALIVE_MAX_CLIENT),
            Ordering::Equal
        );
    }

    #[test]
    fn plugin_rule_as_upstream() {
        assert!(plugin_greater(AGENT_COMPAT_VERSION, MUX_AFTER_AGENT));
        assert!(plugin_greater(
            AGENT_COMPAT_VERSION,
            MUX_NO_KEEPALIVE_AFTER_AGENT
        ));
        assert!(plugin_greater(
            AGENT_COMPAT_VERSION,
            TERMINATE_FLAG_AFTER_AGENT
        ));
        assert!(!plugin_greater("3.0.196.0", MUX_AFTER_AGENT));
        // Different part counts or text: "not supported".
        assert!(!plugin_greater("0.1.0", MUX_AFTER_AGENT));
        assert!(!plugin_greater("4.0.0.x", MUX_AFTER_AGENT));
    }

    #[test]
    fn our_client_gets_mux_without_keepalive_from_the_agent_rule() {
        assert_ne!(
            agent_compare(CLIENT_COMPAT_VERSION, MUX_MIN_CLIENT),
            Ordering::Less
        );
        assert_eq!(
            agent_compare(CLIENT_COMPAT_VERSION, MUX_KEEPALIVE_MAX_CLIENT),
            Ordering::Greater
        );
    }
}

//! Who may do what on the gateway: the one ownership model every endpoint asks (pure).
//!
//! Three facts decide everything, all kept in the registry:
//!
//! * **who signed** — the request's [`Caller`] and its principal ([`super::auth`]);
//! * **which nodes they hold** — a target id belongs to the principal that registered it
//!   (its first control channel or UpdateInstanceInformation); only that principal may
//!   open the target's control channel, update its instance information, or open the
//!   *agent* side of a data channel of a session on that target. A node is released by
//!   DeregisterManagedInstance (its registrant or an admin);
//! * **which sessions they own** — a session belongs to the principal that started it;
//!   only the owner (or an admin) may resume it, terminate it, or see it in
//!   DescribeSessions. The client side of a data channel needs a token, and tokens come
//!   only from the owner's StartSession / ResumeSession.
//!
//! Admins (`--admin PRINCIPAL`) stand in for an IAM policy that allows
//! `ssm:DescribeSessions`, `ssm:ResumeSession` and `ssm:TerminateSession` on every session:
//! they may see, resume and terminate any session, and deregister any node; they never
//! hold another principal's node.
//!
//! Starting sessions is open to every caller, as an IAM policy with `ssm:StartSession` on
//! `*` would be: in strict mode, only the keys in the credentials file are callers at all.
//!
//! Refusals are AWS's `AccessDeniedException` with AWS's wording ("User: ARN is not
//! authorized to perform: ACTION on resource: ARN"); the API renders them as JSON, the
//! message gateway as XML ([`Denied`]).

use super::auth::{principal_arn, Caller};
use std::collections::BTreeSet;

/// A refused action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Denied {
    /// The caller's ARN.
    pub(crate) who: String,
    /// The IAM action, e.g. `ssm:TerminateSession`.
    pub(crate) action: &'static str,
    /// The resource's ARN.
    pub(crate) resource: String,
    /// Why, in a few words (after AWS's sentence).
    pub(crate) why: &'static str,
}

impl Denied {
    /// The message, in AWS's words, then ours.
    pub(crate) fn message(&self) -> String {
        format!(
            "User: {} is not authorized to perform: {} on resource: {} ({})",
            self.who, self.action, self.resource, self.why
        )
    }
}

/// The access policy: the account's ARNs and the admin principals.
#[derive(Debug, Clone, Default)]
pub(crate) struct Access {
    region: String,
    account_id: String,
    admins: BTreeSet<String>,
}

impl Access {
    pub(crate) fn new(region: &str, account_id: &str, admins: &[String]) -> Self {
        Self {
            region: region.to_owned(),
            account_id: account_id.to_owned(),
            admins: admins.iter().cloned().collect(),
        }
    }

    /// Whether `caller` is an admin.
    pub(crate) fn is_admin(&self, caller: &Caller) -> bool {
        self.admins.contains(&caller.principal)
    }

    /// The ARN of a session.
    pub(crate) fn session_arn(&self, session_id: &str) -> String {
        format!(
            "arn:aws:ssm:{}:{}:session/{session_id}",
            self.region, self.account_id
        )
    }

    /// The ARN of a node: an EC2 instance for `i-…`, else a managed instance.
    pub(crate) fn node_arn(&self, target: &str) -> String {
        if target.starts_with("i-") {
            format!(
                "arn:aws:ec2:{}:{}:instance/{target}",
                self.region, self.account_id
            )
        } else {
            format!(
                "arn:aws:ssm:{}:{}:managed-instance/{target}",
                self.region, self.account_id
            )
        }
    }

    fn deny(
        &self,
        caller: &Caller,
        action: &'static str,
        resource: String,
        why: &'static str,
    ) -> Denied {
        Denied {
            who: principal_arn(&self.account_id, &caller.principal),
            action,
            resource,
            why,
        }
    }

    /// Whether `caller` sees a session owned by `owner` (DescribeSessions).
    pub(crate) fn sees_session(&self, caller: &Caller, owner: &str) -> bool {
        caller.principal == owner || self.is_admin(caller)
    }

    /// `action` (`ssm:ResumeSession`, `ssm:TerminateSession`) on a session owned by
    /// `owner`: the owner or an admin.
    ///
    /// # Errors
    /// Anyone else.
    pub(crate) fn use_session(
        &self,
        caller: &Caller,
        action: &'static str,
        session_id: &str,
        owner: &str,
    ) -> Result<(), Denied> {
        if self.sees_session(caller, owner) {
            return Ok(());
        }
        Err(self.deny(
            caller,
            action,
            self.session_arn(session_id),
            "the session belongs to another identity",
        ))
    }

    /// `action` as the node `target` itself (control channel, instance information, the
    /// agent side of a data channel): its registrant, or anyone while it has none (the
    /// caller then registers it).
    ///
    /// # Errors
    /// The node is registered to another principal.
    pub(crate) fn act_as_node(
        &self,
        caller: &Caller,
        action: &'static str,
        target: &str,
        registrant: Option<&str>,
    ) -> Result<(), Denied> {
        match registrant {
            Some(owner) if owner != caller.principal => Err(self.deny(
                caller,
                action,
                self.node_arn(target),
                "the managed node is registered to another identity",
            )),
            _ => Ok(()),
        }
    }

    /// The agent side of a data channel of a session on `target`: only the principal
    /// holding the target (its registrant); a target with no registrant has no agent.
    ///
    /// # Errors
    /// Anyone else, admins included.
    pub(crate) fn agent_side(
        &self,
        caller: &Caller,
        session_id: &str,
        registrant: Option<&str>,
    ) -> Result<(), Denied> {
        if registrant == Some(caller.principal.as_str()) {
            return Ok(());
        }
        Err(self.deny(
            caller,
            "ssmmessages:CreateDataChannel",
            self.session_arn(session_id),
            "only the agent of the session's managed node may open its agent side",
        ))
    }

    /// DeregisterManagedInstance: the registrant or an admin.
    ///
    /// # Errors
    /// Anyone else.
    pub(crate) fn deregister(
        &self,
        caller: &Caller,
        target: &str,
        registrant: Option<&str>,
    ) -> Result<(), Denied> {
        if self.is_admin(caller) || registrant.is_none_or(|r| r == caller.principal) {
            return Ok(());
        }
        Err(self.deny(
            caller,
            "ssm:DeregisterManagedInstance",
            self.node_arn(target),
            "the managed node is registered to another identity",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(p: &str) -> Caller {
        Caller {
            access_key_id: format!("AKID{p}"),
            principal: p.into(),
            verified: true,
        }
    }

    #[test]
    fn sessions_belong_to_their_owner_and_admins() {
        let a = Access::new("us-east-1", "123456789012", &["root-team".into()]);
        let (alice, bob, admin) = (caller("alice"), caller("bob"), caller("root-team"));
        assert!(a
            .use_session(&alice, "ssm:ResumeSession", "alice-1", "alice")
            .is_ok());
        assert!(a
            .use_session(&admin, "ssm:TerminateSession", "alice-1", "alice")
            .is_ok());
        let denied = a
            .use_session(&bob, "ssm:TerminateSession", "alice-1", "alice")
            .unwrap_err();
        assert_eq!(
            denied.message(),
            "User: arn:aws:iam::123456789012:user/bob is not authorized to perform: ssm:TerminateSession on resource: arn:aws:ssm:us-east-1:123456789012:session/alice-1 (the session belongs to another identity)"
        );
        assert!(a.sees_session(&alice, "alice"));
        assert!(!a.sees_session(&bob, "alice"));
        assert!(a.sees_session(&admin, "alice"));
    }

    #[test]
    fn nodes_belong_to_their_registrant_and_not_even_to_admins() {
        let a = Access::new("eu-west-1", "1", &["admin".into()]);
        let (agent, other, admin) = (caller("web-role"), caller("mallory"), caller("admin"));
        let act = |c: &Caller, r: Option<&str>| {
            a.act_as_node(c, "ssmmessages:CreateControlChannel", "i-0abc", r)
        };
        assert!(act(&other, None).is_ok(), "an unregistered node is free");
        assert!(act(&agent, Some("web-role")).is_ok());
        let e = act(&other, Some("web-role")).unwrap_err();
        assert_eq!(e.resource, "arn:aws:ec2:eu-west-1:1:instance/i-0abc");
        assert!(act(&admin, Some("web-role")).is_err());
        assert!(a.agent_side(&agent, "s-1", Some("web-role")).is_ok());
        assert!(a.agent_side(&other, "s-1", Some("web-role")).is_err());
        assert!(a.agent_side(&admin, "s-1", Some("web-role")).is_err());
        assert!(
            a.agent_side(&agent, "s-1", None).is_err(),
            "no registrant, no agent"
        );
        assert!(a.deregister(&admin, "mi-1", Some("web-role")).is_ok());
        assert!(a.deregister(&agent, "mi-1", Some("web-role")).is_ok());
        let e = a.deregister(&other, "mi-1", Some("web-role")).unwrap_err();
        assert_eq!(e.resource, "arn:aws:ssm:eu-west-1:1:managed-instance/mi-1");
    }
}

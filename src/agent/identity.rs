//! Who and where the agent is, settled once at start (protocol.md §1.1): the gateway
//! endpoint and this node's target id, and in `gateway = "aws"` mode the region, the SSM
//! API endpoint and the request signer.
//!
//! AWS mode fills what the configuration leaves out the way the official agent does on
//! EC2: the region from the SDK's chain (`AWS_REGION`, the AWS config file, then the
//! instance metadata service, IMDSv2), the instance id from instance metadata, the
//! endpoints from the region's partition, credentials from the SDK's default chain (the
//! instance role on EC2). Instance metadata is reached through `aws-config`'s IMDS
//! client, so `AWS_EC2_METADATA_SERVICE_ENDPOINT` and `AWS_EC2_METADATA_DISABLED` work as
//! for any AWS tool. On premises, `target_id` names the managed-instance id (`mi-…`) and
//! `region` the region, and credentials come from the environment or a profile.

use super::AgentConfig;
use crate::protocol::endpoint::{self, SSM, SSMMESSAGES};
use crate::sign::Signer;
use std::sync::Arc;

/// The instance metadata path of the EC2 instance id.
pub const IMDS_INSTANCE_ID: &str = "/latest/meta-data/instance-id";

/// What the agent found out about itself.
#[derive(Debug)]
pub(crate) struct Identity {
    /// The message gateway's base URL.
    pub(crate) endpoint: String,
    /// This node's id.
    pub(crate) target_id: String,
    /// AWS mode only.
    pub(crate) aws: Option<AwsIdentity>,
    /// Signs message-gateway requests: AWS credentials, `dev`'s key, or in local mode the
    /// agent's own key ([`LOCAL_KEY_FILE`]); `None` when none could be had.
    pub(crate) signer: Option<Arc<Signer>>,
    /// The signer is the local mode's own key, which only an open gateway accepts.
    pub(crate) own_key: bool,
}

/// The agent's own key in local mode, under the state directory (0600).
///
/// A gateway in open mode does not verify signatures, but it does know each node by the
/// access key id that registered it (`gateway::access`), and lets only that key act as
/// the node: its control channel, its instance information, the agent side of its
/// sessions. An agent that signed nothing would be `anonymous`, like any unsigned caller
/// on the network; with a random key id of its own, kept across restarts, a caller who
/// does not know it cannot act as this node. The id is a bearer secret there: the file
/// is readable by root only and the id is never logged whole.
pub const LOCAL_KEY_FILE: &str = "agent-key.json";

#[derive(serde::Serialize, serde::Deserialize)]
struct LocalKey {
    access_key_id: String,
    secret_access_key: String,
}

/// The agent's own key in `state_dir`, created on first use.
///
/// # Errors
/// The file cannot be read, parsed or written.
pub fn local_key(state_dir: &std::path::Path) -> Result<(String, String), String> {
    let path = state_dir.join(LOCAL_KEY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let k: LocalKey = serde_json::from_slice(&bytes)
                .map_err(|e| format!("{} is not valid: {e}", path.display()))?;
            return Ok((k.access_key_id, k.secret_access_key));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    }
    let token = crate::gateway::random_token();
    let key = LocalKey {
        access_key_id: format!(
            "AGENT{}",
            token.get(..20).unwrap_or_default().to_ascii_uppercase()
        ),
        secret_access_key: token.get(20..60).unwrap_or_default().to_owned(),
    };
    super::recording::private_dir(state_dir)
        .and_then(|()| {
            crate::spool::layout::write_atomic(
                &path,
                &serde_json::to_vec(&key).map_err(std::io::Error::other)?,
            )
        })
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok((key.access_key_id, key.secret_access_key))
}

/// The first characters of a key id, for logs.
pub fn key_hint(id: &str) -> String {
    format!("{}…", id.chars().take(9).collect::<String>())
}

/// The AWS half of [`Identity`].
#[derive(Debug)]
pub(crate) struct AwsIdentity {
    /// The region everything is signed for.
    pub(crate) region: String,
    /// The SSM API (heartbeat).
    pub(crate) ssm_endpoint: String,
    /// Signs message-gateway requests (`ssmmessages`); `for_service(SSM)` for the API.
    pub(crate) signer: Arc<Signer>,
    /// The SDK configuration (credentials chain, region), shared with delivery.
    pub(crate) sdk: aws_config::SdkConfig,
}

/// What could not be found; each says what to configure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IdentityError {
    /// No region anywhere.
    #[error("no AWS region: set `region` in the agent's configuration (or AWS_REGION); on EC2 it comes from instance metadata, which did not answer")]
    NoRegion,
    /// The region found is not a region name.
    #[error("the AWS region {region:?} is not usable: {why}")]
    BadRegion {
        /// The region.
        region: String,
        /// Why.
        why: String,
    },
    /// Instance metadata did not give the instance id.
    #[error("cannot read the EC2 instance id from instance metadata (IMDSv2): {0}; off EC2, set `target_id` to the managed-instance id (mi-...)")]
    NoInstanceId(String),
    /// The SDK configuration has no credentials provider at all.
    #[error("no AWS credentials provider is configured")]
    NoCredentialsProvider,
}

/// Settles the identity. In local mode this is the configuration as it is; in AWS mode
/// `sdk` is the SDK configuration loaded with the configured region (if any).
///
/// # Errors
/// What AWS mode could not find.
pub(crate) async fn resolve(
    config: &AgentConfig,
    sdk: impl std::future::Future<Output = aws_config::SdkConfig>,
) -> Result<Identity, IdentityError> {
    let Some(settings) = &config.aws else {
        let (key, own_key) = match &config.local_key {
            Some(k) => (Some(k.clone()), false),
            None => match local_key(&config.state_dir) {
                Ok(k) => (Some(k), true),
                Err(e) => {
                    tracing::warn!(error = %e, "No key of its own: the agent's requests go unsigned, and any unsigned caller can act as this node on an open gateway");
                    (None, false)
                }
            },
        };
        let signer = key.map(|(id, secret)| {
            Arc::new(Signer::new(
                crate::sign::static_provider(&id, &secret, None),
                crate::gateway::DEV_REGION,
                SSMMESSAGES,
            ))
        });
        return Ok(Identity {
            endpoint: config.endpoint.clone().unwrap_or_default(),
            target_id: config.target_id.clone().unwrap_or_default(),
            aws: None,
            signer,
            own_key,
        });
    };
    let sdk = sdk.await;
    let region = sdk
        .region()
        .map(ToString::to_string)
        .ok_or(IdentityError::NoRegion)?;
    endpoint::check_region(&region).map_err(|why| IdentityError::BadRegion {
        region: region.clone(),
        why,
    })?;
    let domain = settings.service_domain.as_deref();
    let for_region = |service| {
        endpoint::for_region(service, &region, domain).map_err(|why| IdentityError::BadRegion {
            region: region.clone(),
            why,
        })
    };
    let gateway = match &config.endpoint {
        Some(e) => e.clone(),
        None => for_region(SSMMESSAGES)?,
    };
    let ssm_endpoint = match &settings.ssm_endpoint {
        Some(e) => e.clone(),
        None => for_region(SSM)?,
    };
    let target_id = match &config.target_id {
        Some(id) => id.clone(),
        None => instance_id().await?,
    };
    let provider = sdk
        .credentials_provider()
        .ok_or(IdentityError::NoCredentialsProvider)?;
    let signer = Arc::new(Signer::new(provider, &region, SSMMESSAGES));
    Ok(Identity {
        endpoint: gateway,
        target_id,
        aws: Some(AwsIdentity {
            region,
            ssm_endpoint,
            signer: signer.clone(),
            sdk,
        }),
        signer: Some(signer),
        own_key: false,
    })
}

/// The CIDR blocks of every VPC this instance's network interfaces are in, from
/// instance metadata (`network/interfaces/macs/MAC/vpc-ipv4-cidr-blocks` and
/// `vpc-ipv6-cidr-blocks`), for the port-forwarding deny list (upstream's
/// `VpcPrimaryCIDRBlock`). Lines that are not CIDRs are skipped.
///
/// # Errors
/// Instance metadata did not answer with the interfaces.
pub(crate) async fn vpc_cidrs() -> Result<Vec<ipnet::IpNet>, String> {
    const MACS: &str = "/latest/meta-data/network/interfaces/macs/";
    let provider = aws_config::provider_config::ProviderConfig::without_region()
        .with_http_client(crate::delivery::aws::https_client());
    let client = aws_config::imds::Client::builder()
        .configure(&provider)
        .build();
    let macs = client.get(MACS).await.map_err(|e| crate::error_chain(&e))?;
    let mut cidrs = Vec::new();
    for mac in macs
        .as_ref()
        .lines()
        .map(|l| l.trim().trim_end_matches('/'))
    {
        if mac.is_empty() || !mac.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
            continue;
        }
        for key in ["vpc-ipv4-cidr-blocks", "vpc-ipv6-cidr-blocks"] {
            // An interface without IPv6 has no such key: not an error.
            if let Ok(text) = client.get(&format!("{MACS}{mac}/{key}")).await {
                cidrs.extend(
                    text.as_ref()
                        .lines()
                        .filter_map(|l| l.trim().parse::<ipnet::IpNet>().ok()),
                );
            }
        }
    }
    cidrs.sort();
    cidrs.dedup();
    Ok(cidrs)
}

/// The EC2 instance id from instance metadata (IMDSv2: a session token first).
async fn instance_id() -> Result<String, IdentityError> {
    let provider = aws_config::provider_config::ProviderConfig::without_region()
        .with_http_client(crate::delivery::aws::https_client());
    let client = aws_config::imds::Client::builder()
        .configure(&provider)
        .build();
    let id = client
        .get(IMDS_INSTANCE_ID)
        .await
        .map_err(|e| IdentityError::NoInstanceId(crate::error_chain(&e)))?;
    let id = id.as_ref().trim().to_owned();
    if !super::config::valid_target_id(&id) {
        return Err(IdentityError::NoInstanceId(format!(
            "instance metadata answered {:?}, which is not an instance id",
            id.chars().take(80).collect::<String>()
        )));
    }
    Ok(id)
}

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
        return Ok(Identity {
            endpoint: config.endpoint.clone().unwrap_or_default(),
            target_id: config.target_id.clone().unwrap_or_default(),
            aws: None,
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
            signer,
            sdk,
        }),
    })
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

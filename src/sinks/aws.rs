//! The AWS SDK configuration every AWS sink shares, built from `[aws]`.

use crate::config::AwsConfig;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use std::time::Duration;

/// True when the environment carries static credentials (they then win over the emulator's).
fn env_credentials() -> bool {
    std::env::var_os("AWS_ACCESS_KEY_ID").is_some()
        && std::env::var_os("AWS_SECRET_ACCESS_KEY").is_some()
}

/// The instance tag the Auto Scaling service puts on every instance of a group.
pub const GROUP_TAG: &str = "aws:autoscaling:groupName";

/// The instance's Auto Scaling group from its `aws:autoscaling:groupName` tag, read through
/// IMDSv2 (needs "instance metadata tags" enabled on the launch template). Bounded by
/// `timeout` overall, one attempt: off EC2 the metadata address does not answer, and the
/// agent's start must not wait for it. `AWS_EC2_METADATA_SERVICE_ENDPOINT` overrides the
/// address (tests).
pub async fn autoscaling_group_from_imds(timeout: Duration) -> Result<String, String> {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let provider = aws_config::provider_config::ProviderConfig::default().with_http_client(http);
    let client = aws_config::imds::Client::builder()
        .configure(&provider)
        .max_attempts(1)
        .connect_timeout(timeout)
        .read_timeout(timeout)
        .build();
    let path = format!("/latest/meta-data/tags/instance/{GROUP_TAG}");
    match tokio::time::timeout(timeout, client.get(path)).await {
        Err(_) => Err(format!("IMDS did not answer within {timeout:?}")),
        Ok(Err(e)) => Err(format!(
            "IMDS tag {GROUP_TAG}: {}",
            aws_sdk_cloudwatch::error::DisplayErrorContext(&e)
        )),
        Ok(Ok(v)) => {
            let group = v.as_ref().trim().to_string();
            if group.is_empty() {
                Err(format!("IMDS tag {GROUP_TAG} is empty"))
            } else {
                Ok(group)
            }
        }
    }
}

/// Region, endpoint override, rustls (ring) HTTP client, operation + attempt timeouts (the SDK
/// has no read timeout of its own), and SDK retries off: each sink retries with its own backoff
/// and spools what still fails. Static test credentials only when an emulator endpoint is set and
/// the environment has none, so production always uses the normal credential chain.
///
/// One configuration (HTTP client, TLS roots, credential chain) is shared by every sink built
/// from the same `[aws]` section: three copies were a measurable part of the agent's RSS.
pub async fn sdk_config(aws: &AwsConfig) -> SdkConfig {
    static SHARED: tokio::sync::Mutex<Option<(Key, SdkConfig)>> =
        tokio::sync::Mutex::const_new(None);
    let key = Key::of(aws);
    let mut shared = SHARED.lock().await;
    if let Some((k, sdk)) = shared.as_ref()
        && *k == key
    {
        return sdk.clone();
    }
    let sdk = build(aws).await;
    *shared = Some((key, sdk.clone()));
    sdk
}

/// What a shared configuration is built from (a reload with other values builds a new one).
#[derive(PartialEq, Eq)]
struct Key {
    region: String,
    endpoint_url: Option<String>,
    attempt_timeout: Duration,
    operation_timeout: Duration,
    env_credentials: bool,
}

impl Key {
    fn of(aws: &AwsConfig) -> Key {
        Key {
            region: aws.region.clone(),
            endpoint_url: aws.endpoint_url.clone(),
            attempt_timeout: aws.attempt_timeout,
            operation_timeout: aws.operation_timeout,
            env_credentials: env_credentials(),
        }
    }
}

async fn build(aws: &AwsConfig) -> SdkConfig {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(aws.attempt_timeout.min(Duration::from_secs(3)))
        .operation_attempt_timeout(aws.attempt_timeout)
        .operation_timeout(aws.operation_timeout)
        .build();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(aws.region.clone()))
        .http_client(http)
        .timeout_config(timeouts)
        .retry_config(RetryConfig::disabled());
    if let Some(url) = &aws.endpoint_url {
        loader = loader.endpoint_url(url.clone());
        if !env_credentials() {
            loader = loader.credentials_provider(aws_credential_types::Credentials::new(
                "testing",
                "testing",
                None,
                None,
                "warden-emulator",
            ));
        }
    }
    loader.load().await
}

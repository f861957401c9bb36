//! How dstack connects to AWS (the S3 state store, the artifact store, the aws backend).
//!
//! Credentials and region come from the standard places — environment variables
//! (`AWS_ACCESS_KEY_ID`, `AWS_REGION`, `AWS_ENDPOINT_URL`, ...), `~/.aws/config` and
//! `~/.aws/credentials` profiles (`AWS_PROFILE` or a configured `profile`), and web identity — but
//! never the instance metadata service: a CLI that silently probes `169.254.169.254` on every
//! run is slow off EC2 and sends traffic nobody asked for. Set `AWS_EC2_METADATA_DISABLED=false`
//! to allow it (on an EC2 instance with an instance profile).

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::meta::credentials::CredentialsProviderChain;
use aws_config::meta::region::RegionProviderChain;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;

/// Where and as whom to connect.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Connection {
    pub region: Option<String>,
    pub profile: Option<String>,
    pub endpoint_url: Option<String>,
}

/// Whether the endpoint is overridden (in the settings or the environment); S3 then needs
/// path-style addressing, which S3-compatible stores expect.
pub fn endpoint_overridden(connection: &Connection) -> bool {
    connection.endpoint_url.is_some()
        || std::env::var_os("AWS_ENDPOINT_URL").is_some()
        || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some()
}

fn metadata_allowed() -> bool {
    std::env::var("AWS_EC2_METADATA_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("false"))
}

/// Load the shared SDK configuration for a connection.
pub async fn load(connection: &Connection) -> aws_config::SdkConfig {
    let profile = connection.profile.clone();
    let mut profile_region = aws_config::profile::ProfileFileRegionProvider::builder();
    let mut profile_credentials = aws_config::profile::ProfileFileCredentialsProvider::builder();
    if let Some(name) = &profile {
        profile_region = profile_region.profile_name(name);
        profile_credentials = profile_credentials.profile_name(name);
    }
    let region =
        RegionProviderChain::first_try(connection.region.clone().map(aws_config::Region::new))
            .or_else(aws_config::environment::EnvironmentVariableRegionProvider::new())
            .or_else(profile_region.build())
            .or_else("us-east-1");
    let mut credentials = CredentialsProviderChain::first_try(
        "Environment",
        aws_config::environment::EnvironmentVariableCredentialsProvider::new(),
    )
    .or_else("Profile", profile_credentials.build())
    .or_else(
        "WebIdentityToken",
        aws_config::web_identity_token::WebIdentityTokenCredentialsProvider::builder().build(),
    );
    if metadata_allowed() {
        credentials = credentials.or_else(
            "Ec2InstanceMetadata",
            aws_config::imds::credentials::ImdsCredentialsProvider::builder().build(),
        );
    }
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(region)
        .credentials_provider(credentials)
        .retry_config(RetryConfig::standard().with_max_attempts(3))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_attempt_timeout(Duration::from_mins(2))
                .build(),
        );
    if let Some(name) = &profile {
        loader = loader.profile_name(name);
    }
    if let Some(endpoint) = &connection.endpoint_url {
        loader = loader.endpoint_url(endpoint);
    }
    loader.load().await
}

/// An S3 client for a connection.
pub async fn s3(connection: &Connection) -> aws_sdk_s3::Client {
    let shared = load(connection).await;
    let config = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(endpoint_overridden(connection))
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

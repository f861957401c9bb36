//! AWS errors and what they mean for dstack.
//!
//! [`AwsError`] is what an EC2 call failed with: the AWS error code (`VolumeInUse`,
//! `InsufficientInstanceCapacity`, ...), its message and the HTTP status. [`to_backend`] turns it
//! into a [`BackendError`] whose kind drives the executor (throttling and 5xx are `Transient`
//! and retried with backoff; everything else stops the step) and whose message and hint say what
//! happened and what to do. Codes are matched here, once; nothing downstream matches strings.

use crate::backend::{BackendError, ErrorKind};

/// An EC2 call's failure.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message} ({code})")]
pub struct AwsError {
    /// The AWS error code, or the SDK's failure kind (`DispatchFailure`, `TimeoutError`).
    pub code: String,
    pub message: String,
    pub status: Option<u16>,
}

impl AwsError {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            status: None,
        }
    }

    /// There is no capacity (or no quota) for this launch here: another zone or another offer
    /// may work.
    pub fn is_capacity(&self) -> bool {
        matches!(
            self.code.as_str(),
            "InsufficientInstanceCapacity"
                | "InsufficientCapacity"
                | "InsufficientHostCapacity"
                | "InsufficientReservedInstanceCapacity"
                | "Unsupported"
                | "SpotMaxPriceTooLow"
                | "MaxSpotInstanceCountExceeded"
                | "InstanceLimitExceeded"
                | "VcpuLimitExceeded"
        )
    }

    /// The object does not exist (`InvalidVolume.NotFound`, `InvalidInstanceID.NotFound`, ...).
    pub fn is_not_found(&self) -> bool {
        self.code.ends_with(".NotFound") && !self.code.starts_with("InvalidZone")
            || self.code == "InvalidVolume.NotFound"
    }

    fn is_transient(&self) -> bool {
        matches!(
            self.code.as_str(),
            "RequestLimitExceeded"
                | "Throttling"
                | "ThrottlingException"
                | "RequestThrottled"
                | "RequestThrottledException"
                | "TooManyRequestsException"
                | "ServiceUnavailable"
                | "Unavailable"
                | "InternalError"
                | "InternalFailure"
                | "TimeoutError"
                | "DispatchFailure"
                | "ResponseError"
        ) || self.status.is_some_and(|s| s >= 500)
    }

    fn is_unauthorized(&self) -> bool {
        matches!(
            self.code.as_str(),
            "UnauthorizedOperation"
                | "AuthFailure"
                | "InvalidClientTokenId"
                | "SignatureDoesNotMatch"
                | "OptInRequired"
                | "Blocked"
                | "ExpiredToken"
                | "RequestExpired"
                | "MissingAuthenticationToken"
                | "UnrecognizedClientException"
                | "AccessDenied"
                | "AccessDeniedException"
        )
    }

    /// The kind of failure, for the executor.
    pub fn kind(&self) -> ErrorKind {
        if self.is_transient() {
            ErrorKind::Transient
        } else if self.is_unauthorized() {
            ErrorKind::Unauthorized
        } else if self.is_capacity()
            || matches!(
                self.code.as_str(),
                "VolumeInUse"
                    | "IncorrectState"
                    | "IncorrectInstanceState"
                    | "IdempotentParameterMismatch"
            )
        {
            ErrorKind::Conflict
        } else if self.is_not_found() {
            ErrorKind::NotFound
        } else if self.code.starts_with("Invalid")
            || matches!(
                self.code.as_str(),
                "MissingParameter" | "UnknownParameter" | "ValidationError" | "DryRunOperation"
            )
        {
            ErrorKind::Invalid
        } else {
            ErrorKind::Internal
        }
    }
}

/// The error of `what` (`creating the EBS volume for volume/data`) failing with `error`.
pub fn to_backend(what: &str, error: &AwsError) -> BackendError {
    let code = error.code.as_str();
    let detail = if error.message.is_empty() {
        code.to_string()
    } else {
        format!("{} ({code})", error.message.trim_end_matches('.'))
    };
    let kind = error.kind();
    let (message, hint): (String, Option<String>) = match code {
        "RequestLimitExceeded" | "Throttling" | "ThrottlingException" | "RequestThrottled"
        | "RequestThrottledException" | "TooManyRequestsException" => (
            format!("{what}: AWS is throttling requests: {detail}"),
            Some("dstack retries with backoff; if this persists, make fewer calls at once (`--parallelism`) or ask AWS for a higher API rate".into()),
        ),
        "DispatchFailure" | "TimeoutError" => (
            format!("{what}: cannot reach EC2: {detail}"),
            Some("check the network, the region, and `endpoint_url` of the aws backend in .dstack/config.yml".into()),
        ),
        "InsufficientInstanceCapacity" | "InsufficientCapacity" | "InsufficientHostCapacity"
        | "InsufficientReservedInstanceCapacity" | "Unsupported" => (
            format!("{what}: AWS has no capacity for it here: {detail}"),
            Some("allow more instance types, zones or regions (`instance_types`, `availability_zones`, `regions`), use `spot_policy: auto`, or try later".into()),
        ),
        "SpotMaxPriceTooLow" => (
            format!("{what}: the spot price is above `max_price`: {detail}"),
            Some("raise `max_price`, or use `spot_policy: auto` to fall back to on-demand".into()),
        ),
        "MaxSpotInstanceCountExceeded" | "InstanceLimitExceeded" | "VcpuLimitExceeded" => (
            format!("{what}: an account limit is reached: {detail}"),
            Some("terminate unused instances, or ask AWS for a higher quota (Service Quotas, EC2)".into()),
        ),
        "VolumeInUse" => (
            format!("{what}: the volume is in use: {detail}"),
            Some("stop what uses it (a run or a fleet instance), or detach it, then try again".into()),
        ),
        "InvalidVolume.ZoneMismatch" => (
            format!("{what}: the volume and the instance are in different availability zones: {detail}"),
            Some("an EBS volume attaches only to instances in its zone: set the fleet's `availability_zones` to the volume's zone, or create the volume in the instances' zone".into()),
        ),
        "InvalidInstanceType" | "InvalidInstanceType.NotFound" => (
            format!("{what}: the instance type does not exist here: {detail}"),
            Some("check `instance_types` (names like `g5.xlarge`) and `regions`".into()),
        ),
        "InvalidAMIID.NotFound" | "InvalidAMIID.Malformed" | "InvalidAMIID.Unavailable" => (
            format!("{what}: the machine image is not usable: {detail}"),
            Some("set `image: {name, owner}` of the aws backend in .dstack/config.yml to an image of this region".into()),
        ),
        "UnauthorizedOperation" | "AccessDenied" | "AccessDeniedException" => (
            format!("{what}: the AWS credentials are not allowed to do this: {detail}"),
            Some("grant the IAM user or role the EC2 permissions dstack needs, or use another `profile`".into()),
        ),
        "OptInRequired" => (
            format!("{what}: the AWS account is not subscribed to this service or region: {detail}"),
            Some("enable the region in the AWS account, or use another one in `regions`".into()),
        ),
        _ if kind == ErrorKind::Unauthorized => (
            format!("{what}: AWS refused the credentials: {detail}"),
            Some("check AWS_PROFILE / AWS_ACCESS_KEY_ID, ~/.aws/credentials, and `profile` of the aws backend in .dstack/config.yml".into()),
        ),
        _ if kind == ErrorKind::Transient => (
            format!("{what}: EC2 failed on its side: {detail}"),
            Some("dstack retries with backoff; if this persists, check the AWS Health Dashboard".into()),
        ),
        _ => (format!("{what}: {detail}"), None),
    };
    let error = BackendError::new(kind, message);
    match hint {
        Some(hint) => error.with_hint(hint),
        None => error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_kinds() {
        let kind = |code: &str| AwsError::new(code, "m").kind();
        assert_eq!(kind("RequestLimitExceeded"), ErrorKind::Transient);
        assert_eq!(kind("Throttling"), ErrorKind::Transient);
        assert_eq!(kind("InternalError"), ErrorKind::Transient);
        assert_eq!(kind("DispatchFailure"), ErrorKind::Transient);
        assert_eq!(kind("InsufficientInstanceCapacity"), ErrorKind::Conflict);
        assert_eq!(kind("VolumeInUse"), ErrorKind::Conflict);
        assert_eq!(kind("InvalidVolume.ZoneMismatch"), ErrorKind::Invalid);
        assert_eq!(kind("InvalidInstanceType"), ErrorKind::Invalid);
        assert_eq!(kind("InvalidParameterValue"), ErrorKind::Invalid);
        assert_eq!(kind("InvalidVolume.NotFound"), ErrorKind::NotFound);
        assert_eq!(kind("InvalidInstanceID.NotFound"), ErrorKind::NotFound);
        assert_eq!(kind("InvalidZone.NotFound"), ErrorKind::Invalid);
        assert_eq!(kind("UnauthorizedOperation"), ErrorKind::Unauthorized);
        assert_eq!(kind("AuthFailure"), ErrorKind::Unauthorized);
        assert_eq!(kind("SomethingNew"), ErrorKind::Internal);
        let server = AwsError {
            code: "Whatever".into(),
            message: String::new(),
            status: Some(503),
        };
        assert_eq!(server.kind(), ErrorKind::Transient);
    }

    #[test]
    fn messages_say_what_failed_and_what_to_do() {
        let error = to_backend(
            "attaching vol-1 to i-1",
            &AwsError::new(
                "InvalidVolume.ZoneMismatch",
                "The volume 'vol-1' is not in the same availability zone as instance 'i-1'",
            ),
        );
        assert_eq!(error.kind, ErrorKind::Invalid);
        assert!(error.message.starts_with("attaching vol-1 to i-1: the volume and the instance are in different availability zones"), "{}", error.message);
        assert!(error.message.ends_with("(InvalidVolume.ZoneMismatch)"));
        assert!(
            error
                .hint
                .as_deref()
                .is_some_and(|h| h.contains("availability_zones"))
        );
        let throttled = to_backend(
            "x",
            &AwsError::new("RequestLimitExceeded", "Request limit exceeded."),
        );
        assert!(throttled.is_retryable());
        assert_eq!(
            throttled.message,
            "x: AWS is throttling requests: Request limit exceeded (RequestLimitExceeded)"
        );
    }
}

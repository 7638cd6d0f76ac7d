//! What an AWS call's failure means (retry, throttled, missing resource, authorization, invalid)
//! and how long to wait before the next try: one rule for the metrics, logs and SNS sinks.
//!
//! Only an invalid request is ever dropped. Authorization failures (a revoked key, a missing
//! IAM permission, expired credentials) are fixed by an operator, not by the data changing, so
//! they keep the data and retry on a slow capped schedule while [`AccessWatch`] raises
//! `TelemetryEvent::AwsAccessDenied` once per episode and `AwsAccessRestored` after it.

use crate::telemetry::TelemetryEvent;
// Every service crate re-exports the same smithy types; the CloudWatch crate's names serve all.
use aws_sdk_cloudwatch::config::http::HttpResponse;
use aws_sdk_cloudwatch::error::{ProvideErrorMetadata, SdkError};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::broadcast;

/// Jittered exponential backoff: attempt n waits base·2ⁿ (capped), scaled into [½, 1] by jitter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
    /// Tries per batch within one flush (the first included); what still fails is spooled.
    pub attempts: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(500),
            max: Duration::from_secs(10),
            attempts: 3,
        }
    }
}

/// The schedule after an authorization failure: a credential rotation or an IAM fix takes
/// minutes, so 1 s doubling to 60 s, never giving up (the data waits in the spool).
pub const AUTH_BACKOFF: Backoff = Backoff {
    base: Duration::from_secs(1),
    max: Duration::from_secs(60),
    attempts: u32::MAX,
};

impl Backoff {
    /// Delay before retry number `retry` (0 = the first retry); `jitter` in [0, 1).
    pub fn delay(&self, retry: u32, jitter: f64) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32.checked_shl(retry.min(20)).unwrap_or(u32::MAX));
        let capped = exp.min(self.max);
        capped.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }
}

/// How a call failed, reduced to plain data so the rule is testable without the SDK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure<'a> {
    /// No response: connect error, timeout, I/O.
    NoResponse,
    /// The request could not be built locally.
    Construction,
    /// The service answered with an HTTP status and maybe an error code.
    Service { status: u16, code: Option<&'a str> },
}

impl<'a> Failure<'a> {
    /// Reduces any AWS SDK error to plain data (every service crate shares smithy's error shape).
    pub fn from_sdk<E: ProvideErrorMetadata>(e: &'a SdkError<E, HttpResponse>) -> Failure<'a> {
        match e {
            SdkError::ConstructionFailure(_) => Failure::Construction,
            SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => Failure::NoResponse,
            SdkError::ResponseError(r) => Failure::Service {
                status: r.raw().status().as_u16(),
                code: None,
            },
            SdkError::ServiceError(s) => Failure::Service {
                status: s.raw().status().as_u16(),
                code: s.err().code(),
            },
            _ => Failure::NoResponse,
        }
    }
}

/// What a failure means for the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Network, timeout, 5xx: keep it and retry with backoff.
    Retry,
    /// The service asks us to slow down: keep it, retry with backoff.
    Throttled,
    /// The group/stream/topic does not exist: create it where the sink may, else retry.
    NotFound,
    /// Credentials or IAM refuse the call: keep it, retry on [`AUTH_BACKOFF`], raise an alert.
    Auth,
    /// The request itself is invalid: no retry can succeed; drop it, counted and logged.
    Invalid,
}

impl ErrorClass {
    /// True when the data must be kept for another try.
    pub fn keeps_data(self) -> bool {
        self != ErrorClass::Invalid
    }
}

/// Error codes that mean "who you are or what you may do", across STS-signed services.
const AUTH_CODES: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "AuthorizationError",
    "AuthFailure",
    "UnrecognizedClient",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "InvalidAccessKeyId",
    "ExpiredToken",
    "ExpiredTokenException",
    "RequestExpired",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "MissingAuthenticationToken",
    "NotAuthorized",
    "OptInRequired",
];

const THROTTLE_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestLimitExceeded",
    "LimitExceededException",
    "TooManyRequestsException",
    "RequestThrottled",
    "SlowDown",
];

const RETRY_CODES: &[&str] = &[
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "InternalFailure",
    "InternalServiceFault",
    "InternalError",
    "InternalErrorException",
    "RequestTimeout",
    "RequestTimeoutException",
    // Sequence tokens are ignored by CloudWatch Logs today; resending is the fix.
    "InvalidSequenceTokenException",
];

const NOT_FOUND_CODES: &[&str] = &["ResourceNotFoundException", "NotFound", "NotFoundException"];

pub fn classify(f: Failure<'_>) -> ErrorClass {
    match f {
        Failure::NoResponse => ErrorClass::Retry,
        Failure::Construction => ErrorClass::Invalid,
        Failure::Service { status, code } => {
            let is = |list: &[&str]| code.is_some_and(|c| list.contains(&c));
            if is(AUTH_CODES) || code.is_some_and(|c| c.contains("AccessDenied")) {
                ErrorClass::Auth
            } else if is(THROTTLE_CODES) || status == 429 {
                ErrorClass::Throttled
            } else if is(NOT_FOUND_CODES) {
                ErrorClass::NotFound
            } else if is(RETRY_CODES) || status >= 500 {
                ErrorClass::Retry
            } else if status == 401 || status == 403 {
                ErrorClass::Auth
            } else if (400..500).contains(&status) {
                ErrorClass::Invalid
            } else {
                ErrorClass::Retry
            }
        }
    }
}

/// Tracks one sink's authorization episodes and announces their start and end.
pub struct AccessWatch {
    sink: &'static str,
    events: Option<broadcast::Sender<TelemetryEvent>>,
    /// The operation currently refused, while an episode lasts.
    denied: Mutex<Option<String>>,
}

impl AccessWatch {
    pub fn new(sink: &'static str, events: Option<broadcast::Sender<TelemetryEvent>>) -> Self {
        AccessWatch {
            sink,
            events,
            denied: Mutex::new(None),
        }
    }

    /// A call was refused for authorization: logs and emits `AwsAccessDenied` on the first
    /// refusal of an episode (or when another operation starts being refused).
    pub fn denied(&self, operation: &str, permission: &str, error: &str) {
        let mut denied = self.denied.lock().unwrap_or_else(|e| e.into_inner());
        if denied.as_deref() == Some(operation) {
            return;
        }
        *denied = Some(operation.to_string());
        tracing::error!(
            sink = self.sink,
            operation,
            permission,
            error,
            "AWS refused the call (authorization); data is kept and retried — grant the permission or fix the credentials"
        );
        if let Some(tx) = &self.events {
            let _ = tx.send(TelemetryEvent::AwsAccessDenied {
                sink: self.sink.to_string(),
                operation: operation.to_string(),
                permission: permission.to_string(),
                error: error.to_string(),
            });
        }
    }

    /// A call succeeded: ends an episode, if one was running.
    pub fn ok(&self) {
        let mut denied = self.denied.lock().unwrap_or_else(|e| e.into_inner());
        if denied.take().is_some() {
            tracing::info!(sink = self.sink, "AWS accepts the sink's calls again");
            if let Some(tx) = &self.events {
                let _ = tx.send(TelemetryEvent::AwsAccessRestored {
                    sink: self.sink.to_string(),
                });
            }
        }
    }

    /// True while an episode lasts.
    pub fn is_denied(&self) -> bool {
        self.denied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_jitters_within_half() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_millis(1000),
            attempts: 5,
        };
        let table = [
            (0, 0.0, 50),
            (0, 1.0, 100),
            (1, 1.0, 200),
            (2, 0.5, 300),
            (3, 1.0, 800),
            (4, 1.0, 1000),
            (30, 0.0, 500),
        ];
        for (retry, jitter, ms) in table {
            assert_eq!(
                b.delay(retry, jitter),
                Duration::from_millis(ms),
                "retry {retry} jitter {jitter}"
            );
        }
        assert_eq!(AUTH_BACKOFF.delay(0, 1.0), Duration::from_secs(1));
        assert_eq!(AUTH_BACKOFF.delay(10, 1.0), Duration::from_secs(60));
    }

    #[test]
    fn classification_table() {
        use ErrorClass::*;
        let svc = |status, code| Failure::Service { status, code };
        let table = [
            (Failure::NoResponse, Retry),
            (Failure::Construction, Invalid),
            (svc(500, Some("InternalServiceFault")), Retry),
            (svc(503, None), Retry),
            (svc(400, Some("ServiceUnavailableException")), Retry),
            (svc(400, Some("InvalidSequenceTokenException")), Retry),
            (svc(502, Some("Weird")), Retry),
            (svc(400, Some("Throttling")), Throttled),
            (svc(400, Some("ThrottlingException")), Throttled),
            (svc(400, Some("LimitExceededException")), Throttled),
            (svc(429, None), Throttled),
            (svc(400, Some("ResourceNotFoundException")), NotFound),
            (svc(404, Some("NotFound")), NotFound),
            (svc(400, Some("AccessDeniedException")), Auth),
            (svc(403, Some("AccessDenied")), Auth),
            (svc(400, Some("UnrecognizedClientException")), Auth),
            (svc(403, Some("InvalidClientTokenId")), Auth),
            (svc(403, Some("ExpiredToken")), Auth),
            (svc(400, Some("ExpiredTokenException")), Auth),
            (svc(403, Some("AuthorizationError")), Auth),
            (svc(400, Some("KMSAccessDeniedException")), Auth),
            (svc(403, None), Auth),
            (svc(400, Some("InvalidParameterValue")), Invalid),
            (svc(400, Some("InvalidParameterException")), Invalid),
            (svc(400, Some("MissingParameter")), Invalid),
            (svc(404, None), Invalid),
        ];
        for (f, want) in table {
            assert_eq!(classify(f), want, "{f:?}");
        }
        assert!(!Invalid.keeps_data());
        assert!(Auth.keeps_data() && Throttled.keeps_data() && NotFound.keeps_data());
    }

    #[test]
    fn access_episodes_are_announced_once_and_closed_once() {
        let (tx, mut rx) = broadcast::channel(16);
        let w = AccessWatch::new("logs", Some(tx));
        w.ok();
        w.denied(
            "PutLogEvents",
            "logs:PutLogEvents",
            "UnrecognizedClientException",
        );
        w.denied(
            "PutLogEvents",
            "logs:PutLogEvents",
            "UnrecognizedClientException",
        );
        assert!(w.is_denied());
        w.ok();
        w.ok();
        let got: Vec<TelemetryEvent> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(
            matches!(&got[0], TelemetryEvent::AwsAccessDenied { permission, .. }
            if permission == "logs:PutLogEvents")
        );
        assert!(matches!(&got[1], TelemetryEvent::AwsAccessRestored { sink } if sink == "logs"));
    }
}

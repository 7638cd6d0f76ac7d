//! Which PutMetricData failures are worth retrying, and how long to wait between tries.

use aws_sdk_cloudwatch::config::http::HttpResponse;
use aws_sdk_cloudwatch::error::{ProvideErrorMetadata, SdkError};
use std::time::Duration;

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

/// What a failure means for the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Network, timeout, throttling, 5xx: retry, then spool.
    Transient,
    /// The request itself is bad (validation): retrying cannot help; drop and count it.
    Permanent,
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

pub fn classify(f: Failure<'_>) -> ErrorClass {
    match f {
        Failure::NoResponse => ErrorClass::Transient,
        Failure::Construction => ErrorClass::Permanent,
        Failure::Service { status, code } => {
            let throttled =
                code.is_some_and(|c| c.contains("Throttl") || c == "RequestLimitExceeded");
            if status >= 500 || status == 429 || throttled || code == Some("InternalServiceFault") {
                ErrorClass::Transient
            } else if (400..500).contains(&status) {
                // Credentials may be fixed by rotation; keep the data rather than drop it.
                match code {
                    Some(c)
                        if c.contains("Credential")
                            || c.contains("Token")
                            || c.contains("AccessDenied") =>
                    {
                        ErrorClass::Transient
                    }
                    _ => ErrorClass::Permanent,
                }
            } else {
                ErrorClass::Transient
            }
        }
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
    }

    #[test]
    fn classification_table() {
        use ErrorClass::*;
        let table = [
            (Failure::NoResponse, Transient),
            (Failure::Construction, Permanent),
            (
                Failure::Service {
                    status: 500,
                    code: Some("InternalServiceFault"),
                },
                Transient,
            ),
            (
                Failure::Service {
                    status: 503,
                    code: None,
                },
                Transient,
            ),
            (
                Failure::Service {
                    status: 400,
                    code: Some("Throttling"),
                },
                Transient,
            ),
            (
                Failure::Service {
                    status: 429,
                    code: None,
                },
                Transient,
            ),
            (
                Failure::Service {
                    status: 400,
                    code: Some("InvalidParameterValue"),
                },
                Permanent,
            ),
            (
                Failure::Service {
                    status: 400,
                    code: Some("MissingParameter"),
                },
                Permanent,
            ),
            (
                Failure::Service {
                    status: 403,
                    code: Some("ExpiredToken"),
                },
                Transient,
            ),
            (
                Failure::Service {
                    status: 404,
                    code: None,
                },
                Permanent,
            ),
        ];
        for (f, want) in table {
            assert_eq!(classify(f), want, "{f:?}");
        }
    }
}

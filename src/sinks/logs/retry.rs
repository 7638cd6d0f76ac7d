//! Which CloudWatch Logs failures are retried, which need the group/stream (re)created, and
//! which are dropped. Backoff is the metrics sink's (one schedule for every AWS sink).

pub use crate::sinks::cloudwatch::retry::{Backoff, Failure};
use crate::sinks::cloudwatch::retry::{ErrorClass, classify as classify_aws};

/// What a failed call means for the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Network, timeout, throttling, 5xx, credentials: keep it spooled and retry with backoff.
    Retry,
    /// The group or stream is gone (deleted, or an emulator restarted): create it, then retry.
    Recreate,
    /// The request itself is invalid: retrying cannot help; drop it, counted and logged.
    Drop,
}

pub fn classify(f: Failure<'_>) -> Outcome {
    if let Failure::Service {
        code: Some("ResourceNotFoundException"),
        ..
    } = f
    {
        return Outcome::Recreate;
    }
    if let Failure::Service {
        code: Some("ServiceUnavailableException" | "LimitExceededException"),
        ..
    } = f
    {
        return Outcome::Retry;
    }
    match classify_aws(f) {
        ErrorClass::Transient => Outcome::Retry,
        ErrorClass::Permanent => Outcome::Drop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_table() {
        let svc = |status, code| Failure::Service { status, code };
        let table = [
            (Failure::NoResponse, Outcome::Retry),
            (Failure::Construction, Outcome::Drop),
            (svc(503, None), Outcome::Retry),
            (
                svc(500, Some("ServiceUnavailableException")),
                Outcome::Retry,
            ),
            (
                svc(400, Some("ServiceUnavailableException")),
                Outcome::Retry,
            ),
            (svc(400, Some("ThrottlingException")), Outcome::Retry),
            (svc(400, Some("LimitExceededException")), Outcome::Retry),
            (
                svc(400, Some("ResourceNotFoundException")),
                Outcome::Recreate,
            ),
            (svc(400, Some("InvalidParameterException")), Outcome::Drop),
            (svc(400, Some("UnrecognizedClientException")), Outcome::Drop),
            (svc(403, Some("AccessDeniedException")), Outcome::Retry),
            (svc(400, Some("ExpiredTokenException")), Outcome::Retry),
        ];
        for (f, want) in table {
            assert_eq!(classify(f), want, "{f:?}");
        }
    }
}

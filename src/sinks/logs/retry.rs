//! CloudWatch Logs failures and backoff: the shared AWS rule (`sinks::aws_error`). A
//! `NotFound` means the group or stream is missing: the shipper creates it, then retries.

pub use crate::sinks::aws_error::{AUTH_BACKOFF, Backoff, ErrorClass, Failure, classify};

//! PutMetricData's failures and backoff: the shared AWS rule (`sinks::aws_error`).

pub use crate::sinks::aws_error::{Backoff, ErrorClass, Failure, classify};

//! Sinks: where samples and logs leave the host (CloudWatch, CloudWatch Logs, Prometheus) and
//! the durable spool they share.

pub mod aws;
pub mod aws_error;
pub mod cloudwatch;
pub mod logs;
pub mod prometheus;
pub mod spool;

//! Sinks: where samples leave the host (CloudWatch, Prometheus) and the durable spool they share.

pub mod aws;
pub mod cloudwatch;
pub mod prometheus;
pub mod spool;

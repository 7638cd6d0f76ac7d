//! The PutMetricData call itself, its failures reduced to a retry class.

use super::request::{Datum, to_sdk};
use crate::sinks::aws_error::{ErrorClass, Failure, classify};
use aws_config::SdkConfig;

/// A failed call: whether to retry, and what to log.
#[derive(Debug, Clone, thiserror::Error)]
#[error("PutMetricData failed ({class:?}): {message}")]
pub struct PutError {
    pub class: ErrorClass,
    pub message: String,
}

/// One namespace's PutMetricData client.
#[derive(Clone)]
pub struct PutService {
    client: aws_sdk_cloudwatch::Client,
    namespace: String,
}

impl PutService {
    pub fn new(sdk: &SdkConfig, namespace: impl Into<String>) -> Self {
        PutService {
            client: aws_sdk_cloudwatch::Client::new(sdk),
            namespace: namespace.into(),
        }
    }

    pub async fn put(&self, datums: &[Datum]) -> Result<(), PutError> {
        let result = self
            .client
            .put_metric_data()
            .namespace(&self.namespace)
            .set_metric_data(Some(datums.iter().map(to_sdk).collect()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) => {
                let failure = Failure::from_sdk(&e);
                Err(PutError {
                    class: classify(failure),
                    message: format!("{}", aws_sdk_cloudwatch::error::DisplayErrorContext(&e)),
                })
            }
        }
    }
}

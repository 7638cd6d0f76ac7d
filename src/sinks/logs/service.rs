//! The CloudWatch Logs calls: PutLogEvents with its `rejectedLogEventsInfo` reduced to
//! counts, and — only when a put found the stream missing — create stream/group and set
//! retention (tolerating "already exists"; a refused retention call is only a warning).

use super::request::{LogEvent, Rejected};
use super::retry::{ErrorClass, Failure, classify};
use aws_config::SdkConfig;
use aws_sdk_cloudwatchlogs::config::http::HttpResponse;
use aws_sdk_cloudwatchlogs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_cloudwatchlogs::types::InputLogEvent;

/// A failed call: what to do about it, and what to log.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{call} failed ({class:?}): {message}")]
pub struct CallError {
    pub call: &'static str,
    pub class: ErrorClass,
    pub message: String,
}

impl CallError {
    /// The IAM permission the call needs (named in the access-denied alert).
    pub fn permission(&self) -> String {
        format!("logs:{}", self.call)
    }
}

fn call_error<E>(call: &'static str, e: SdkError<E, HttpResponse>) -> CallError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let failure = Failure::from_sdk(&e);
    CallError {
        call,
        class: classify(failure),
        message: format!("{}", aws_sdk_cloudwatchlogs::error::DisplayErrorContext(&e)),
    }
}

fn already_exists<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> bool {
    matches!(e, SdkError::ServiceError(s) if s.err().code() == Some("ResourceAlreadyExistsException"))
}

#[derive(Clone)]
pub struct LogsService {
    client: aws_sdk_cloudwatchlogs::Client,
}

impl LogsService {
    pub fn new(sdk: &SdkConfig) -> Self {
        LogsService {
            client: aws_sdk_cloudwatchlogs::Client::new(sdk),
        }
    }

    /// Makes `stream` exist after a put found it missing: the stream first (the group is
    /// usually made by infrastructure as code and the role may not create groups); only if
    /// the group is missing too, the group (then its retention, best effort) and the stream.
    pub async fn ensure(
        &self,
        group: &str,
        stream: &str,
        retention_days: u32,
    ) -> Result<(), CallError> {
        match self.create_stream(group, stream).await {
            Err(e) if e.class == ErrorClass::NotFound => {}
            other => return other,
        }
        match self
            .client
            .create_log_group()
            .log_group_name(group)
            .send()
            .await
        {
            Ok(_) => self.set_retention(group, retention_days).await,
            Err(e) if already_exists(&e) => {}
            Err(e) => return Err(call_error("CreateLogGroup", e)),
        }
        self.create_stream(group, stream).await
    }

    async fn create_stream(&self, group: &str, stream: &str) -> Result<(), CallError> {
        match self
            .client
            .create_log_stream()
            .log_group_name(group)
            .log_stream_name(stream)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if already_exists(&e) => Ok(()),
            Err(e) => Err(call_error("CreateLogStream", e)),
        }
    }

    /// Retention on a group the agent created; a refusal (no logs:PutRetentionPolicy) only
    /// warns: it must never keep events from being delivered.
    async fn set_retention(&self, group: &str, retention_days: u32) {
        if let Err(e) = self
            .client
            .put_retention_policy()
            .log_group_name(group)
            .retention_in_days(retention_days as i32)
            .send()
            .await
        {
            let e = call_error("PutRetentionPolicy", e);
            tracing::warn!(group, error = %e, permission = %e.permission(),
                "cannot set the log group's retention; events are delivered anyway");
        }
    }

    /// One PutLogEvents call; `events` must already be a valid, chronological batch.
    pub async fn put(
        &self,
        group: &str,
        stream: &str,
        events: &[LogEvent],
    ) -> Result<Rejected, CallError> {
        let input: Vec<InputLogEvent> = events
            .iter()
            .filter_map(|e| {
                InputLogEvent::builder()
                    .timestamp(e.timestamp_ms)
                    .message(&e.message)
                    .build()
                    .ok()
            })
            .collect();
        let out = self
            .client
            .put_log_events()
            .log_group_name(group)
            .log_stream_name(stream)
            .set_log_events(Some(input))
            .send()
            .await
            .map_err(|e| call_error("PutLogEvents", e))?;
        Ok(out
            .rejected_log_events_info()
            .map_or_else(Rejected::default, |r| {
                Rejected::from_indexes(
                    events.len(),
                    r.too_old_log_event_end_index(),
                    r.expired_log_event_end_index(),
                    r.too_new_log_event_start_index(),
                )
            }))
    }
}

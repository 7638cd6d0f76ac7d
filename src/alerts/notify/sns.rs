//! SNS: one topic per severity (`[notify.sns]`), subject ≤ 100 characters, the notification
//! as a JSON message, and message attributes severity/rule/host/state/dedupe_key for filters.

use super::{DeliveryError, MessageContext, rfc3339};
use crate::alerts::evaluator::{Notification, format_value};
use crate::alerts::rules::Severity;
use crate::config::SnsConfig;
use crate::sinks::aws_error::{ErrorClass, Failure, classify};
use aws_sdk_sns::types::MessageAttributeValue;
use serde_json::json;

/// SNS rejects longer subjects.
pub const MAX_SUBJECT: usize = 100;

pub struct SnsChannel {
    client: aws_sdk_sns::Client,
    topics: SnsConfig,
    context: MessageContext,
}

/// `[FIRING] critical gpu-lost @ host: summary`, printable ASCII only, at most 100 chars.
pub fn subject(n: &Notification, host: &str) -> String {
    let text = format!(
        "[{}] {} {} @ {}: {}",
        n.kind.as_str().to_uppercase(),
        n.severity.as_str(),
        n.rule,
        host,
        n.summary
    );
    // SNS subjects must be ASCII without control characters.
    let clean: String = text
        .chars()
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() {
                c
            } else {
                ' '
            }
        })
        .collect();
    if clean.len() <= MAX_SUBJECT {
        clean
    } else {
        format!("{}...", &clean[..MAX_SUBJECT - 3])
    }
}

/// The JSON message body: everything a subscriber (pager, ticketing, lambda) needs.
pub fn message(n: &Notification, ctx: &MessageContext) -> String {
    json!({
        "state": n.kind.as_str(),
        "dedupe_key": n.dedupe_key,
        "alert_id": n.alert_id,
        "rule": n.rule,
        "severity": n.severity.as_str(),
        "host": ctx.host,
        "labels": n.labels,
        "value": n.value,
        "op": n.op,
        "threshold": n.threshold,
        "value_text": format!("{} {} {}", format_value(n.value), n.op, format_value(n.threshold)),
        "since": rfc3339(n.since_ms),
        "since_ms": n.since_ms,
        "at_ms": n.at_ms,
        "summary": n.summary,
        "description": n.description,
        "runbook": ctx.runbook(&n.rule),
    })
    .to_string()
}

fn attr(value: &str) -> Option<MessageAttributeValue> {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .ok()
}

impl SnsChannel {
    pub fn new(sdk: &aws_config::SdkConfig, topics: SnsConfig, context: MessageContext) -> Self {
        SnsChannel {
            client: aws_sdk_sns::Client::new(sdk),
            topics,
            context,
        }
    }

    fn topic(&self, severity: Severity) -> Option<&str> {
        match severity {
            Severity::Info => self.topics.info_topic_arn.as_deref(),
            Severity::Warning => self.topics.warning_topic_arn.as_deref(),
            Severity::Critical => self.topics.critical_topic_arn.as_deref(),
        }
    }

    pub async fn deliver(&self, n: &Notification) -> Result<(), DeliveryError> {
        let Some(topic) = self.topic(n.severity) else {
            // No topic for this severity: routing says it does not go to SNS.
            return Ok(());
        };
        let mut req = self
            .client
            .publish()
            .topic_arn(topic)
            .subject(subject(n, &self.context.host))
            .message(message(n, &self.context));
        for (k, v) in [
            ("severity", n.severity.as_str()),
            ("rule", n.rule.as_str()),
            ("host", self.context.host.as_str()),
            ("state", n.kind.as_str()),
            ("dedupe_key", n.dedupe_key.as_str()),
        ] {
            if let Some(a) = attr(v) {
                req = req.message_attributes(k, a);
            }
        }
        match req.send().await {
            Ok(_) => Ok(()),
            Err(e) => {
                let text = format!("{}", aws_sdk_sns::error::DisplayErrorContext(&e));
                // The shared AWS rule: only an invalid request is hopeless; a missing topic,
                // throttling or refused credentials/IAM (sns:Publish) keep the message queued.
                let class = classify(Failure::from_sdk(&e));
                if class == ErrorClass::Auth {
                    tracing::error!(topic, permission = "sns:Publish", error = %text,
                        "SNS refused Publish (authorization); the notification is kept and retried");
                }
                Err(DeliveryError {
                    permanent: !class.keeps_data(),
                    message: format!("SNS Publish to {topic}: {text}"),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::evaluator::NotificationKind;

    fn n(summary: &str) -> Notification {
        Notification {
            kind: NotificationKind::Firing,
            dedupe_key: "k".into(),
            alert_id: "a".into(),
            rule: "gpu-utilization-high".into(),
            severity: Severity::Warning,
            labels: Default::default(),
            value: 95.0,
            op: ">".into(),
            threshold: 90.0,
            since_ms: 0,
            at_ms: 0,
            summary: summary.into(),
            description: String::new(),
        }
    }

    #[test]
    fn subjects_are_short_ascii() {
        let s = subject(&n("GPU 0 utilisation 95 % > 90 %"), "h1");
        assert_eq!(
            s,
            "[FIRING] warning gpu-utilization-high @ h1: GPU 0 utilisation 95 % > 90 %"
        );
        let long = subject(&n(&"é°x\n".repeat(80)), "h1");
        assert_eq!(long.len(), 100);
        assert!(long.chars().all(|c| c.is_ascii() && !c.is_ascii_control()));
    }
}

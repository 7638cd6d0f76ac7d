//! Slack incoming webhook: a Block Kit message in a coloured attachment (colour by severity,
//! green when resolved) with host, value vs threshold, since when, and the runbook link.

use super::{DeliveryError, MessageContext, rfc3339};
use crate::alerts::evaluator::{Notification, NotificationKind, format_value};
use crate::alerts::rules::Severity;
use crate::config::Secret;
use serde_json::{Value, json};
use std::time::Duration;

pub struct SlackChannel {
    http: reqwest::Client,
    webhook: Secret,
    channel: Option<String>,
    context: MessageContext,
}

pub fn colour(n: &Notification) -> &'static str {
    match (n.kind, n.severity) {
        (NotificationKind::Resolved, _) => "#2EB67D",
        (_, Severity::Info) => "#439FE0",
        (_, Severity::Warning) => "#ECB22E",
        (_, Severity::Critical) => "#E01E5A",
    }
}

/// The webhook body (pure, so the shape is unit-tested).
pub fn payload(n: &Notification, ctx: &MessageContext, channel: Option<&str>) -> Value {
    let state = n.kind.as_str().to_uppercase();
    let title = format!(
        "[{state}] {} {}: {}",
        n.severity.as_str(),
        n.rule,
        n.summary
    );
    let labels: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let value = if n.op.is_empty() {
        format_value(n.value)
    } else {
        format!(
            "{} (threshold {} {})",
            format_value(n.value),
            n.op,
            format_value(n.threshold)
        )
    };
    let since_secs = n.since_ms / 1000;
    let mut body = json!({
        "text": format!("{title} (host {})", ctx.host),
        "attachments": [{
            "color": colour(n),
            "fallback": title,
            "blocks": [
                {"type": "section", "text": {"type": "mrkdwn",
                    "text": format!("*{title}*\n{}", n.description)}},
                {"type": "section", "fields": [
                    {"type": "mrkdwn", "text": format!("*Host*\n{}", ctx.host)},
                    {"type": "mrkdwn", "text": format!("*Value*\n{value}")},
                    {"type": "mrkdwn", "text": format!("*Since*\n<!date^{since_secs}^{{date_short_pretty}} {{time}}|{}>", rfc3339(n.since_ms))},
                    {"type": "mrkdwn", "text": format!("*Labels*\n{}", if labels.is_empty() { "-".to_string() } else { labels.join(", ") })},
                ]},
                {"type": "section", "text": {"type": "mrkdwn",
                    "text": format!("<{}|Runbook: {}>", ctx.runbook(&n.rule), n.rule)}},
                {"type": "context", "elements": [{"type": "mrkdwn",
                    "text": format!("dedupe_key: {}", n.dedupe_key)}]},
            ],
        }],
    });
    if let (Some(c), Some(obj)) = (channel, body.as_object_mut()) {
        obj.insert("channel".into(), json!(c));
    }
    body
}

impl SlackChannel {
    pub fn new(
        webhook: Secret,
        channel: Option<String>,
        context: MessageContext,
    ) -> Result<Self, reqwest::Error> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            .build()?;
        Ok(SlackChannel {
            http,
            webhook,
            channel,
            context,
        })
    }

    pub async fn deliver(&self, n: &Notification) -> Result<(), DeliveryError> {
        let body = payload(n, &self.context, self.channel.as_deref());
        let resp = self
            .http
            .post(self.webhook.expose())
            .json(&body)
            .send()
            .await
            // The URL is a secret: never put reqwest's error (which includes it) in logs.
            .map_err(|e| {
                DeliveryError::transient(format!(
                    "Slack webhook unreachable ({})",
                    if e.is_timeout() {
                        "timeout"
                    } else if e.is_connect() {
                        "connect"
                    } else {
                        "request"
                    }
                ))
            })?;
        let status = resp.status().as_u16();
        match status {
            200..=299 => Ok(()),
            // invalid_payload / too large: resending the same body cannot succeed.
            400 | 413 => Err(DeliveryError::permanent(format!(
                "Slack webhook rejected the message ({status})"
            ))),
            _ => Err(DeliveryError::transient(format!(
                "Slack webhook answered {status}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_kit_carries_host_value_since_and_runbook() {
        let n = Notification {
            kind: NotificationKind::Firing,
            dedupe_key: "gpu-lost/GPU=1/1700000000000".into(),
            alert_id: "a".into(),
            rule: "gpu-utilization-high".into(),
            severity: Severity::Critical,
            labels: [("GPU".to_string(), "1".to_string())].into(),
            value: 95.5,
            op: ">".into(),
            threshold: 90.0,
            since_ms: 1_700_000_000_000,
            at_ms: 1_700_000_000_000,
            summary: "GPU 1 hot".into(),
            description: String::new(),
        };
        let ctx = MessageContext {
            host: "h1".into(),
            runbook_url: "https://r/runbook.md".into(),
        };
        let p = payload(&n, &ctx, None);
        let text = p.to_string();
        assert_eq!(p["attachments"][0]["color"], "#E01E5A");
        for want in [
            "*Host*\\nh1",
            "95.5 (threshold > 90)",
            "2023-11-14T22:13:20Z",
            "https://r/runbook.md#gpu-utilization-high",
            "dedupe_key: gpu-lost/GPU=1/1700000000000",
        ] {
            assert!(text.contains(want), "{want} not in {text}");
        }
    }
}

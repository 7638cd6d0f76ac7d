//! Host readiness: the reasons this host should leave the load balancer (`GET /ready` 503).
//!
//! GPU reasons come from the NVML sampler's events, folded into [`GpuHealth`] (pure, no
//! clock): a lost GPU until it answers again; a fatal XID (79 fallen off the bus, 48 double-bit
//! ECC, 63/64 row remapping pending/failed — NVIDIA's "reset the GPU" codes) until the GPU is
//! seen again after a re-initialisation (a reset or driver reload) or recovers; NVML gone on a
//! GPU host (`gpu.expected_count` set, or NVML saw a GPU earlier in this run) until it
//! initialises again. Model reasons come from the supervisor's states: a crash loop, or any
//! model not ready. `/health` stays liveness and never looks here.

use crate::telemetry::TelemetryEvent;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// XID codes after which the GPU needs a reset before it can be trusted with traffic.
pub const FATAL_XIDS: [u64; 4] = [48, 63, 64, 79];

/// One reason the host is not ready, with a stable `code` for machines and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Reason {
    /// `draining`, `gpu-lost`, `gpu-xid`, `nvml-unavailable`, `gpu-missing`,
    /// `model-crash-loop`, `model-not-ready`, `no-models`.
    pub code: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

impl Reason {
    fn host(code: &'static str, message: String) -> Reason {
        Reason {
            code,
            message,
            gpu: None,
            model: None,
        }
    }
}

/// What the NVML events say about the GPUs, folded one event at a time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpuHealth {
    /// GPUs this host is built with (`gpu.expected_count`).
    pub expected: Option<u32>,
    /// None until NVML reported either way; then whether it is initialised.
    nvml_up: Option<bool>,
    nvml_reason: String,
    /// GPUs NVML listed at its latest initialisation, and the most seen in this run.
    gpus_now: u32,
    gpus_seen: u32,
    lost: BTreeSet<u32>,
    /// Fatal XID codes per GPU since its last reset.
    xids: BTreeMap<u32, BTreeSet<u64>>,
}

impl GpuHealth {
    pub fn new(expected: Option<u32>) -> Self {
        GpuHealth {
            expected,
            ..Self::default()
        }
    }

    pub fn apply(&mut self, event: &TelemetryEvent) {
        match event {
            TelemetryEvent::NvmlUnavailable { reason } => {
                self.nvml_up = Some(false);
                self.nvml_reason = reason.clone();
            }
            TelemetryEvent::NvmlAvailable { gpus } => {
                self.nvml_up = Some(true);
                self.gpus_now = *gpus;
                self.gpus_seen = self.gpus_seen.max(*gpus);
                // A fresh initialisation re-reads every device: a reset or driver reload
                // happened, and a GPU still gone reports GpuLost again on its first read.
                self.lost.clear();
                self.xids.clear();
            }
            TelemetryEvent::GpuLost { gpu } => {
                self.lost.insert(*gpu);
            }
            TelemetryEvent::GpuRecovered { gpu } => {
                self.lost.remove(gpu);
                self.xids.remove(gpu);
            }
            TelemetryEvent::Xid { gpu, code } if FATAL_XIDS.contains(code) => {
                self.xids.entry(*gpu).or_default().insert(*code);
            }
            _ => {}
        }
    }

    /// A GPU host: configured with GPUs, or NVML saw one in this run.
    fn gpu_host(&self) -> bool {
        self.expected.is_some() || self.gpus_seen > 0
    }

    pub fn reasons(&self) -> Vec<Reason> {
        let mut out = Vec::new();
        if self.nvml_up == Some(false) && self.gpu_host() {
            out.push(Reason::host(
                "nvml-unavailable",
                format!("NVML is unavailable on a GPU host: {}", self.nvml_reason),
            ));
        }
        if self.nvml_up == Some(true)
            && let Some(expected) = self.expected
            && self.gpus_now < expected
        {
            out.push(Reason::host(
                "gpu-missing",
                format!(
                    "NVML lists {} GPU(s), the host has {expected}",
                    self.gpus_now
                ),
            ));
        }
        for gpu in &self.lost {
            out.push(Reason {
                gpu: Some(*gpu),
                ..Reason::host("gpu-lost", format!("GPU {gpu} has fallen off the bus"))
            });
        }
        for (gpu, codes) in &self.xids {
            let list: Vec<String> = codes.iter().map(|c| c.to_string()).collect();
            out.push(Reason {
                gpu: Some(*gpu),
                ..Reason::host(
                    "gpu-xid",
                    format!(
                        "GPU {gpu} reported fatal XID {} (needs a GPU reset)",
                        list.join(", ")
                    ),
                )
            });
        }
        out
    }
}

/// The model reasons from each model's supervisor state (`ready`, `crash-loop`, ...).
pub fn model_reasons<'a>(models: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<Reason> {
    let mut out = Vec::new();
    let mut any = false;
    for (name, state) in models {
        any = true;
        let (code, message) = match state {
            "ready" => continue,
            "crash-loop" => ("model-crash-loop", format!("model {name} is crash-looping")),
            other => ("model-not-ready", format!("model {name} is {other}")),
        };
        out.push(Reason {
            model: Some(name.to_string()),
            ..Reason::host(code, message)
        });
    }
    if !any {
        out.push(Reason::host("no-models", "no model is configured".into()));
    }
    out
}

/// The live [`GpuHealth`] of this host, fed by the telemetry event channel.
#[derive(Clone)]
pub struct ReadinessTracker {
    health: Arc<Mutex<GpuHealth>>,
}

impl ReadinessTracker {
    /// Folds every event from `events` until `cancel`. Subscribe before the samplers start,
    /// so the first NVML event is not missed.
    pub fn spawn(
        expected: Option<u32>,
        mut events: broadcast::Receiver<TelemetryEvent>,
        cancel: CancellationToken,
    ) -> (ReadinessTracker, tokio::task::JoinHandle<()>) {
        let tracker = ReadinessTracker {
            health: Arc::new(Mutex::new(GpuHealth::new(expected))),
        };
        let t = tracker.clone();
        let task = tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    _ = cancel.cancelled() => return,
                    e = events.recv() => e,
                };
                match event {
                    Ok(e) => t.apply(&e),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        // The sampler re-reports lost GPUs only on change; say so loudly.
                        tracing::warn!(missed = n, "readiness fell behind the telemetry events");
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        (tracker, task)
    }

    pub fn apply(&self, event: &TelemetryEvent) {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .apply(event);
    }

    pub fn gpu_reasons(&self) -> Vec<Reason> {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .reasons()
    }
}

impl crate::api::HostReadiness for ReadinessTracker {
    fn reasons(&self) -> Vec<Reason> {
        self.gpu_reasons()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(h: &GpuHealth) -> Vec<&'static str> {
        h.reasons().iter().map(|r| r.code).collect()
    }

    #[test]
    fn gpu_events_make_and_clear_reasons() {
        use TelemetryEvent::*;
        let mut h = GpuHealth::new(None);
        // A laptop: NVML never worked, no GPU expected: ready.
        h.apply(&NvmlUnavailable {
            reason: "driver not loaded".into(),
        });
        assert!(codes(&h).is_empty());
        h.apply(&NvmlAvailable { gpus: 2 });
        assert!(codes(&h).is_empty());
        h.apply(&GpuLost { gpu: 1 });
        assert_eq!(codes(&h), vec!["gpu-lost"]);
        assert_eq!(h.reasons()[0].gpu, Some(1));
        h.apply(&GpuRecovered { gpu: 1 });
        assert!(codes(&h).is_empty());
        // Non-fatal XIDs (13: graphics engine exception, 31: MMU fault) do not drain.
        h.apply(&Xid { gpu: 0, code: 13 });
        h.apply(&Xid { gpu: 0, code: 31 });
        assert!(codes(&h).is_empty());
        for code in FATAL_XIDS {
            let mut h = h.clone();
            h.apply(&Xid { gpu: 0, code });
            assert_eq!(codes(&h), vec!["gpu-xid"], "XID {code}");
            assert!(h.reasons()[0].message.contains(&code.to_string()));
        }
        h.apply(&Xid { gpu: 0, code: 79 });
        // Now a GPU host: NVML gone drains it, and the XID stays until a re-initialisation.
        h.apply(&NvmlUnavailable {
            reason: "handle lost".into(),
        });
        assert_eq!(codes(&h), vec!["nvml-unavailable", "gpu-xid"]);
        h.apply(&NvmlAvailable { gpus: 2 });
        assert!(codes(&h).is_empty());
    }

    #[test]
    fn expected_count_makes_a_gpu_host_from_the_start() {
        let mut h = GpuHealth::new(Some(2));
        assert!(codes(&h).is_empty(), "nothing known yet");
        h.apply(&TelemetryEvent::NvmlUnavailable {
            reason: "driver not loaded".into(),
        });
        assert_eq!(codes(&h), vec!["nvml-unavailable"]);
        h.apply(&TelemetryEvent::NvmlAvailable { gpus: 1 });
        assert_eq!(codes(&h), vec!["gpu-missing"]);
        h.apply(&TelemetryEvent::NvmlAvailable { gpus: 2 });
        assert!(codes(&h).is_empty());
    }

    #[test]
    fn the_openapi_document_describes_the_reasons() {
        let doc = crate::api::openapi::document(&[]).unwrap();
        let reason = &doc["components"]["schemas"]["Reason"];
        assert_eq!(reason["type"], "object", "{reason}");
        for field in ["code", "message"] {
            assert!(
                reason["required"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|f| f == field),
                "{reason}"
            );
        }
        let readiness = &doc["components"]["schemas"]["Readiness"]["properties"]["reasons"];
        assert!(readiness.to_string().contains("Reason"), "{readiness}");
    }

    #[test]
    fn model_states_give_model_reasons() {
        let r = model_reasons([("a", "ready"), ("b", "crash-loop"), ("c", "backoff")]);
        let got: Vec<(&str, Option<&str>)> =
            r.iter().map(|r| (r.code, r.model.as_deref())).collect();
        assert_eq!(
            got,
            vec![
                ("model-crash-loop", Some("b")),
                ("model-not-ready", Some("c"))
            ]
        );
        assert!(model_reasons([("a", "ready")]).is_empty());
        assert_eq!(model_reasons([]).first().map(|r| r.code), Some("no-models"));
    }
}

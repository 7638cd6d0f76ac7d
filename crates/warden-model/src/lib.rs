//! Model serving: one `warden serve-model` process loads a model, batches requests dynamically
//! on a dedicated inference thread and serves them over HTTP on 127.0.0.1.
//!
//! Layout: `fields` (declarative field definitions: the parsers and the JSON Schemas read
//! them), `schema` (JSON → validated samples, no tch), `models` (the five architectures),
//! `teachers` (the reference calculations the models learn), `training` (`warden models
//! train`), `gbdt` (the tree trainer writing XGBoost JSON), `evaluate` (`warden models
//! evaluate`), `card` (model cards), `xgboost` (tree ensembles as tensor ops), `torchscript`
//! (user modules), `batcher` (the queue and inference thread), `server` (axum routes and
//! Prometheus metrics), `weights` (`warden models init`: the shipped weights), `bench` lives
//! with the binary (`warden bench serving`).
//!
//! Metrics on the model process's `GET /metrics` (all carry the constant label `model`):
//! - `warden_model_requests_total{code}` — /infer responses by HTTP status
//! - `warden_model_errors_total{kind}` — failed /infer requests (invalid_json, invalid_input,
//!   body_too_large, queue_full, not_ready, inference_failed)
//! - `warden_model_request_duration_seconds` — /infer latency histogram
//! - `warden_model_queue_depth` — requests waiting for the inference thread (gauge)
//! - `warden_model_batch_size` — samples per forward pass (histogram; mean = sum / count)
//! - `warden_model_inference_duration_seconds` — forward pass time per batch (histogram)
//! - `warden_model_ready` — 1 once weights are loaded and a warm-up forward passed

pub mod batcher;
pub mod card;
pub mod evaluate;
pub mod fields;
pub mod gbdt;
pub mod metrics;
pub mod models;
pub mod schema;
pub mod server;
mod socket;
pub mod teachers;
pub mod torchscript;
pub mod training;
pub mod weights;
pub mod xgboost;

use models::{
    Model, VarStoreModel, clash_detector, compliance_checker, connection_designer, risk_analyzer,
    section_optimizer,
};
use schema::{Sample, SchemaError};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use server::{ServeOptions, run_model_server};

/// Model version reported by /metadata (the weights' format version, not the binary's).
pub const MODEL_VERSION: &str = "1";

#[derive(Debug, thiserror::Error)]
pub enum ServingError {
    #[error("unknown model {0:?}; built-in models are {1}")]
    UnknownModel(String, String),
    #[error("{0}")]
    Options(String),
    #[error("loading {path}: {message}")]
    Load { path: PathBuf, message: String },
    #[error("warm-up forward pass failed: {0}")]
    WarmUp(String),
    #[error("listening on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tch(#[from] tch::TchError),
    #[error(transparent)]
    Xgboost(#[from] xgboost::XgboostError),
    #[error("HTTP client: {0}")]
    Client(String),
}

/// What a serving process serves: one of the five built-ins, or a user's TorchScript module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    ConnectionDesigner,
    SectionOptimizer,
    ClashDetector,
    ComplianceChecker,
    RiskAnalyzer,
    TorchScript,
}

pub const BUILTIN: [ModelKind; 5] = [
    ModelKind::ConnectionDesigner,
    ModelKind::SectionOptimizer,
    ModelKind::ClashDetector,
    ModelKind::ComplianceChecker,
    ModelKind::RiskAnalyzer,
];

impl ModelKind {
    pub fn builtin(name: &str) -> Option<ModelKind> {
        BUILTIN.into_iter().find(|k| k.name() == name)
    }

    pub fn name(&self) -> &'static str {
        match self {
            ModelKind::ConnectionDesigner => connection_designer::NAME,
            ModelKind::SectionOptimizer => section_optimizer::NAME,
            ModelKind::ClashDetector => clash_detector::NAME,
            ModelKind::ComplianceChecker => compliance_checker::NAME,
            ModelKind::RiskAnalyzer => risk_analyzer::NAME,
            ModelKind::TorchScript => "torchscript",
        }
    }

    /// The file `warden models init` writes for this model inside the models dir.
    pub fn weight_file(&self) -> &'static str {
        match self {
            ModelKind::ConnectionDesigner => "connection-designer.safetensors",
            ModelKind::SectionOptimizer => "section-optimizer.json",
            ModelKind::ClashDetector => "clash-detector.safetensors",
            ModelKind::ComplianceChecker => "compliance-checker.safetensors",
            ModelKind::RiskAnalyzer => "risk-analyzer.safetensors",
            ModelKind::TorchScript => "model.pt",
        }
    }

    /// Validates a request body into samples (pure; runs on the async side).
    pub fn parse(&self, body: &Value) -> Result<Vec<Sample>, SchemaError> {
        let one = match self {
            ModelKind::ConnectionDesigner => connection_designer::parse(body),
            ModelKind::SectionOptimizer => section_optimizer::parse(body),
            ModelKind::ClashDetector => clash_detector::parse(body),
            ModelKind::ComplianceChecker => compliance_checker::parse(body),
            ModelKind::RiskAnalyzer => risk_analyzer::parse(body),
            ModelKind::TorchScript => return torchscript::parse(body),
        };
        one.map(|s| vec![s])
    }

    /// The response body for one request's outputs.
    pub fn respond(&self, mut outputs: Vec<Value>) -> Value {
        match self {
            ModelKind::TorchScript => json!({ "outputs": outputs }),
            _ => outputs.pop().unwrap_or(Value::Null),
        }
    }

    /// `/metadata`: name, version, schemas, an example body `/infer` accepts and (built-ins)
    /// the model card of the weights at `weights`. `row_shape` is the TorchScript row shape
    /// learnt at warm-up. Reads the weight file (for its hash): call it off the async workers.
    pub fn metadata(&self, name: &str, row_shape: &[i64], weights: &Path) -> Value {
        let (input, output, example) = match self {
            ModelKind::ConnectionDesigner => (
                connection_designer::input_schema(),
                connection_designer::output_schema(),
                connection_designer::example(),
            ),
            ModelKind::SectionOptimizer => (
                section_optimizer::input_schema(),
                section_optimizer::output_schema(),
                section_optimizer::example(),
            ),
            ModelKind::ClashDetector => (
                clash_detector::input_schema(),
                clash_detector::output_schema(),
                clash_detector::example(),
            ),
            ModelKind::ComplianceChecker => (
                compliance_checker::input_schema(),
                compliance_checker::output_schema(),
                compliance_checker::example(),
            ),
            ModelKind::RiskAnalyzer => (
                risk_analyzer::input_schema(),
                risk_analyzer::output_schema(),
                risk_analyzer::example(),
            ),
            ModelKind::TorchScript => (
                json!({
                    "inputs": format!("array of 1..{} rows, each a nested array of numbers \
                        (float32), all the same shape", torchscript::MAX_ROWS),
                    // Only known when the server was started with --input-shape.
                    "row_shape": if row_shape.is_empty() { Value::Null } else { json!(row_shape) },
                }),
                json!({"outputs": "array, one row per input row, in order"}),
                torchscript::example(row_shape),
            ),
        };
        let mut doc = json!({
            "name": name,
            "version": MODEL_VERSION,
            "kind": self.name(),
            "input_schema": input,
            "output_schema": output,
            "example": example,
        });
        if *self != ModelKind::TorchScript {
            doc["model_card"] = card::served(*self, weights);
        }
        doc
    }

    /// The example request body of a built-in model (`Null` for TorchScript without a shape).
    pub fn example(&self, row_shape: &[i64]) -> Value {
        match self {
            ModelKind::ConnectionDesigner => connection_designer::example(),
            ModelKind::SectionOptimizer => section_optimizer::example(),
            ModelKind::ClashDetector => clash_detector::example(),
            ModelKind::ComplianceChecker => compliance_checker::example(),
            ModelKind::RiskAnalyzer => risk_analyzer::example(),
            ModelKind::TorchScript => torchscript::example(row_shape),
        }
    }

    /// Loads the model's weights from `path` onto `device`. Runs on the inference thread.
    pub fn load(&self, path: &Path, device: tch::Device) -> Result<Box<dyn Model>, ServingError> {
        let load_err = |message: String| ServingError::Load {
            path: path.to_path_buf(),
            message,
        };
        if !path.exists() {
            return Err(load_err(
                "no such file (run `warden models init` or pass --weights)".into(),
            ));
        }
        let model: Box<dyn Model> = match self {
            ModelKind::ConnectionDesigner => Box::new(
                VarStoreModel::<connection_designer::ConnectionNet>::load(path, device)
                    .map_err(|e| load_err(e.to_string()))?,
            ),
            ModelKind::ClashDetector => Box::new(
                VarStoreModel::<clash_detector::ClashNet>::load(path, device)
                    .map_err(|e| load_err(e.to_string()))?,
            ),
            ModelKind::ComplianceChecker => Box::new(
                VarStoreModel::<compliance_checker::ComplianceNet>::load(path, device)
                    .map_err(|e| load_err(e.to_string()))?,
            ),
            ModelKind::RiskAnalyzer => Box::new(
                VarStoreModel::<risk_analyzer::RiskNet>::load(path, device)
                    .map_err(|e| load_err(e.to_string()))?,
            ),
            ModelKind::SectionOptimizer => {
                let e = xgboost::TreeEnsemble::load(path).map_err(|e| load_err(e.to_string()))?;
                Box::new(
                    section_optimizer::SectionOptimizer::from_ensemble(&e, device)
                        .map_err(|e| load_err(e.to_string()))?,
                )
            }
            ModelKind::TorchScript => Box::new(
                torchscript::TorchScriptModel::load(path, device)
                    .map_err(|e| load_err(e.to_string()))?,
            ),
        };
        Ok(model)
    }

    /// A body for the warm-up forward pass (TorchScript: a zero row of `row_shape`).
    pub fn warm_up_samples(&self, row_shape: &[i64]) -> Result<Vec<Sample>, SchemaError> {
        match self {
            ModelKind::TorchScript => {
                let n: i64 = row_shape.iter().product();
                Ok(vec![Sample::dense(
                    vec![0.0; n.max(0) as usize],
                    row_shape.to_vec(),
                )])
            }
            _ => self.parse(&self.example(row_shape)),
        }
    }
}

/// Chooses the tch device: `auto` is CUDA when libtorch sees a GPU.
pub fn select_device(device: warden::config::Device) -> Result<tch::Device, ServingError> {
    match device {
        warden::config::Device::Cpu => Ok(tch::Device::Cpu),
        warden::config::Device::Auto => Ok(tch::Device::cuda_if_available()),
        warden::config::Device::Cuda if tch::Cuda::is_available() => Ok(tch::Device::Cuda(0)),
        warden::config::Device::Cuda => Err(ServingError::Options(
            "--device cuda: libtorch sees no CUDA device (use --device auto or cpu)".into(),
        )),
    }
}

/// Batching knobs (the supervisor passes `ModelConfig`'s values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    pub max_batch: usize,
    pub batch_timeout: Duration,
    pub queue_capacity: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_batch: 32,
            batch_timeout: Duration::from_millis(2),
            queue_capacity: 1024,
        }
    }
}

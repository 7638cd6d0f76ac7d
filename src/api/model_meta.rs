//! What each model says about itself (its `/metadata`: schemas, example, model card), fetched
//! from the model processes and remembered, so `/openapi.json` and `/api/v1/models` still
//! describe a model while it restarts.

use super::{ModelEndpoint, proxy};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

#[derive(Default)]
pub struct ModelMetadata {
    last_good: RwLock<HashMap<String, Arc<Value>>>,
}

/// One model's metadata and whether it came from the model just now.
#[derive(Debug, Clone)]
pub struct Described {
    pub metadata: Option<Arc<Value>>,
    pub fresh: bool,
}

impl ModelMetadata {
    /// Asks every model at once (each bounded by the proxy's metadata timeout); a model that
    /// does not answer is described by its last good answer, if any.
    pub async fn describe(
        &self,
        http: &reqwest::Client,
        models: &[ModelEndpoint],
    ) -> Vec<Described> {
        let mut tasks = tokio::task::JoinSet::new();
        for (i, m) in models.iter().enumerate() {
            let http = http.clone();
            let port = m.port;
            tasks.spawn(async move { (i, proxy::metadata(&http, port).await) });
        }
        let mut answers = vec![None; models.len()];
        while let Some(Ok((i, meta))) = tasks.join_next().await {
            answers[i] = meta;
        }
        let mut cache = self
            .last_good
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        models
            .iter()
            .zip(answers)
            .map(|(m, answer)| match answer {
                Some(meta) => {
                    let meta = Arc::new(meta);
                    cache.insert(m.name.clone(), meta.clone());
                    Described {
                        metadata: Some(meta),
                        fresh: true,
                    }
                }
                None => Described {
                    metadata: cache.get(&m.name).cloned(),
                    fresh: false,
                },
            })
            .collect()
    }
}

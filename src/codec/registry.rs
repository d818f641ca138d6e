//! Confluent Schema Registry client: writer schemas by id, and registration
//! of herald's own status schema. Callers cache: ids are immutable.

use std::time::Duration;

use apache_avro::Schema;
use reqwest::{StatusCode, Url};
use serde::Deserialize;

use crate::backoff::Backoff;

/// Why the schema registry could not answer, or answered no.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry answered that the id does not exist: the record is bad.
    #[error("schema id {0} is not in the registry")]
    UnknownId(u32),
    #[error("schema id {id} from the registry does not parse: {reason}")]
    BadSchema { id: u32, reason: String },
    /// The registry could not be asked; the record is not at fault.
    #[error("schema registry unavailable: {0}")]
    Unavailable(String),
}

/// The flag of the schema registry.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Kafka")]
pub struct RegistryArgs {
    /// Confluent Schema Registry base URL. Without it, herald reads and writes with its bundled schemas.
    #[arg(long, env = "SCHEMA_REGISTRY_URL")]
    pub(crate) schema_registry_url: Option<Url>,
}

pub(crate) struct Registry {
    http: reqwest::Client,
    base: Url,
}

#[derive(Deserialize)]
struct SchemaById {
    schema: String,
}

#[derive(Deserialize)]
struct Registered {
    id: u32,
}

const ATTEMPTS: u32 = 5;

impl Registry {
    pub(crate) fn new(base: Url, timeout: Duration) -> Self {
        let http = reqwest::Client::builder().timeout(timeout).build().expect("static HTTP client settings");
        Registry { http, base }
    }

    pub(crate) async fn writer_schema(&self, id: u32) -> Result<Schema, RegistryError> {
        let url = self.url(&format!("schemas/ids/{id}"));
        let body: SchemaById = self
            .with_retries(|| self.http.get(url.clone()).send(), |status| {
                (status == StatusCode::NOT_FOUND).then_some(RegistryError::UnknownId(id))
            })
            .await?;
        Schema::parse_str(&body.schema).map_err(|e| RegistryError::BadSchema { id, reason: e.to_string() })
    }

    /// Registers `schema` under `subject` (idempotent in the registry) and
    /// returns its id.
    pub(crate) async fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        let url = self.url(&format!("subjects/{subject}/versions"));
        let body = serde_json::json!({ "schema": schema });
        let registered: Registered = self
            .with_retries(
                || {
                    self.http
                        .post(url.clone())
                        .header("content-type", "application/vnd.schemaregistry.v1+json")
                        .json(&body)
                        .send()
                },
                |_| None,
            )
            .await?;
        Ok(registered.id)
    }

    fn url(&self, path: &str) -> Url {
        let mut base = self.base.clone();
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        base.join(path).expect("registry paths are relative and valid")
    }

    /// Retries what the registry did not answer, with exponential backoff;
    /// `final_status` turns a definite answer into an error at once.
    async fn with_retries<T, F, Fut>(
        &self,
        request: F,
        final_status: impl Fn(StatusCode) -> Option<RegistryError>,
    ) -> Result<T, RegistryError>
    where
        T: serde::de::DeserializeOwned,
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = reqwest::Result<reqwest::Response>>,
    {
        let mut last = String::new();
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(2));
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                backoff.wait().await;
            }
            match request().await {
                Ok(resp) if resp.status().is_success() => {
                    return resp.json().await.map_err(|e| RegistryError::Unavailable(e.to_string()));
                }
                Ok(resp) => {
                    if let Some(err) = final_status(resp.status()) {
                        return Err(err);
                    }
                    last = format!("HTTP {}", resp.status());
                    if resp.status().is_client_error() {
                        break;
                    }
                }
                Err(e) => last = e.to_string(),
            }
            tracing::warn!(message = "Schema registry request failed.", attempt, error = %last);
        }
        Err(RegistryError::Unavailable(last))
    }
}

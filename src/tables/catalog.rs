//! Registration of the tables with an Iceberg REST catalog (the REST catalog API of the Iceberg
//! spec: Polaris, Gravitino, Nessie, Unity, Lakekeeper, AWS Glue's REST endpoint …), so that engines
//! configured with the catalog find each topic as `<namespace>.<table>`.
//!
//! The archive stays the source of truth: after a sync, [`publish`] brings the catalog's entry to
//! the table's newest version. A table the catalog does not know is registered with its metadata
//! location; one it knows gets a commit adding the snapshots it lacks, moving `main` and removing
//! the snapshots the archive expired, guarded by the snapshot the catalog had (a conflicting
//! commit is read again and retried). A catalog entry of another table (another uuid) is never
//! touched.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};

use super::metadata::TableMetadata;

/// Where and how to reach the catalog.
#[derive(Debug, Clone)]
pub struct Catalog {
    /// Base URI, e.g. `http://127.0.0.1:8181` (the `/v1/...` paths are appended).
    pub uri: String,
    pub namespace: String,
    /// Bearer token, if the catalog wants one.
    pub token: Option<String>,
}

/// Why the catalog could not be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("Iceberg REST catalog {uri}: {message}")]
    Failed { uri: String, message: String },
}

/// What [`publish`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Published {
    Registered,
    Committed,
    UpToDate,
}

/// The catalog's name of a topic's table: Kafka allows `.` and `-` in topic names, which many
/// engines do not take unquoted in a table name, so both become `_`.
pub fn table_name(topic: &str) -> String {
    topic.replace(['.', '-'], "_")
}

impl Catalog {
    fn failed(&self, message: impl Into<String>) -> CatalogError {
        CatalogError::Failed {
            uri: self.uri.clone(),
            message: message.into(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v1/{path}", self.uri.trim_end_matches('/'))
    }

    async fn call(
        &self,
        client: &reqwest::Client,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), CatalogError> {
        let mut request = client
            .request(method.clone(), self.url(path))
            .timeout(Duration::from_secs(30));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| self.failed(format!("{method} /v1/{path}: {e}")))?;
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        let value = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok((status, value))
    }

    fn refused(&self, what: &str, status: u16, body: &Value) -> CatalogError {
        let message = body["error"]["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| body.to_string());
        self.failed(format!("{what} answered {status}: {message}"))
    }
}

/// Bring the catalog's entry of `topic`'s table to `meta`, whose file is `location`.
pub async fn publish(
    catalog: &Catalog,
    topic: &str,
    meta: &TableMetadata,
    location: &str,
) -> Result<Published, CatalogError> {
    let client = reqwest::Client::new();
    let ns = &catalog.namespace;
    let name = table_name(topic);
    let (status, body) = catalog
        .call(
            &client,
            reqwest::Method::POST,
            "namespaces",
            Some(json!({"namespace": [ns]})),
        )
        .await?;
    if !matches!(status, 200 | 409) {
        return Err(catalog.refused("creating the namespace", status, &body));
    }
    let table = format!("namespaces/{ns}/tables/{name}");
    for _ in 0..5 {
        let (status, body) = catalog
            .call(&client, reqwest::Method::GET, &table, None)
            .await?;
        if status == 404 {
            let register = json!({"name": name, "metadata-location": location});
            let (status, body) = catalog
                .call(
                    &client,
                    reqwest::Method::POST,
                    &format!("namespaces/{ns}/register"),
                    Some(register),
                )
                .await?;
            match status {
                200 => return Ok(Published::Registered),
                409 => continue,
                _ => return Err(catalog.refused("registering the table", status, &body)),
            }
        }
        if status != 200 {
            return Err(catalog.refused("loading the table", status, &body));
        }
        let theirs = &body["metadata"];
        if theirs["table-uuid"].as_str() != Some(meta.table_uuid.as_str()) {
            return Err(catalog.failed(format!(
                "{ns}.{name} is another table (uuid {}, not {}); drop it from the catalog or choose another namespace",
                theirs["table-uuid"], meta.table_uuid
            )));
        }
        let current = theirs["current-snapshot-id"]
            .as_i64()
            .filter(|&id| id != -1);
        let known: BTreeSet<i64> = theirs["snapshots"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["snapshot-id"].as_i64())
            .collect();
        let ours: BTreeSet<i64> = meta.snapshots.iter().map(|s| s.snapshot_id).collect();
        let target = meta.current().map(|s| s.snapshot_id);
        let their_schemas: BTreeSet<i64> = theirs["schemas"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["schema-id"].as_i64())
            .collect();
        let new_schemas: Vec<&Value> = meta
            .schemas
            .iter()
            .filter(|s| {
                s["schema-id"]
                    .as_i64()
                    .is_some_and(|id| !their_schemas.contains(&id))
            })
            .collect();
        let same_schema =
            theirs["current-schema-id"].as_i64() == Some(i64::from(meta.current_schema_id));
        if current == target && known == ours && new_schemas.is_empty() && same_schema {
            return Ok(Published::UpToDate);
        }
        // Typed columns evolve the schema: new schemas first, which snapshots name.
        let mut updates: Vec<Value> = new_schemas
            .iter()
            .map(|s| json!({"action": "add-schema", "schema": s, "last-column-id": meta.last_column_id}))
            .collect();
        if !same_schema {
            // A schema added in this commit is named "the last added" (-1): a catalog may number
            // it otherwise.
            let added = new_schemas.last().is_some_and(|s| {
                s["schema-id"].as_i64() == Some(i64::from(meta.current_schema_id))
            });
            let id = if added { -1 } else { meta.current_schema_id };
            updates.push(json!({"action": "set-current-schema", "schema-id": id}));
        }
        updates.extend(
            meta.snapshots
                .iter()
                .filter(|s| !known.contains(&s.snapshot_id))
                .map(|s| json!({"action": "add-snapshot", "snapshot": s})),
        );
        if let Some(id) = target {
            updates.push(json!({"action": "set-snapshot-ref", "ref-name": "main", "type": "branch", "snapshot-id": id}));
        }
        let gone: Vec<i64> = known.difference(&ours).copied().collect();
        if !gone.is_empty() {
            updates.push(json!({"action": "remove-snapshots", "snapshot-ids": gone}));
        }
        updates.push(json!({"action": "set-properties", "updates": meta.properties}));
        let commit = json!({
            "requirements": [
                {"type": "assert-table-uuid", "uuid": meta.table_uuid},
                {"type": "assert-ref-snapshot-id", "ref": "main", "snapshot-id": current},
            ],
            "updates": updates,
        });
        let (status, body) = catalog
            .call(&client, reqwest::Method::POST, &table, Some(commit))
            .await?;
        match status {
            200 => return Ok(Published::Committed),
            // Another writer moved the catalog's entry: read it again.
            409 => continue,
            _ => return Err(catalog.refused("committing to the table", status, &body)),
        }
    }
    Err(catalog.failed(format!(
        "{ns}.{name} kept changing while Rewind tried to update it"
    )))
}

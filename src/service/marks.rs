//! Named restore points through the API: `POST /marks` takes one of a cluster into an archive,
//! `GET /marks` lists every archive's marks with whether each is archived.

use serde::Deserialize;
use serde_json::{json, Value};

use super::{client_config, ControlError, Registry};
use crate::kafka::topics::{regex_problem, TopicSelector};
use crate::marks::{self, MarkError, MarkRequest};

/// The body of `POST /marks`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TakeMark {
    pub name: String,
    #[serde(default = "default_name")]
    pub archive: String,
    #[serde(default = "default_name")]
    pub cluster: String,
    /// Regular expression of the cluster's topics (default: the topics the archive holds).
    pub topics: Option<String>,
    pub exclude: Option<String>,
}

fn default_name() -> String {
    "default".into()
}

/// A mark and what the archive holds of it, as the API shows it.
fn mark_json(
    archive: &str,
    mark: &crate::archive::marks::Mark,
    status: &crate::archive::marks::MarkStatus,
) -> Value {
    json!({
        "archive": archive,
        "name": mark.name,
        "taken_at": mark.taken_at,
        "taken_by": mark.taken_by,
        "partitions": mark.partitions.len(),
        "status": status.word(),
        "archived": status.complete(),
        "restorable_in_full": status.whole(),
        "detail": status.describe(),
    })
}

impl Registry {
    /// Take the mark `request` asks for.
    pub async fn take_mark(&self, request: TakeMark) -> Result<Value, ControlError> {
        let bad = |flag: &str, pattern: &str, e: regex::Error| {
            ControlError::BadRequest(format!(
                "{flag} {pattern:?} is not a valid regular expression: {}",
                regex_problem(&e)
            ))
        };
        let topics = match (&request.topics, &request.exclude) {
            (None, None) => None,
            (pattern, exclude) => {
                let pattern = pattern.as_deref().unwrap_or(".*");
                let selector =
                    TopicSelector::new(pattern).map_err(|e| bad("topics", pattern, e))?;
                Some(
                    selector
                        .excluding(exclude.as_deref())
                        .map_err(|e| bad("exclude", exclude.as_deref().unwrap_or(""), e))?,
                )
            }
        };
        if self.config.archive_named(&request.archive).is_none() {
            return Err(ControlError::NotFound(format!(
                "no archive named {:?}",
                request.archive
            )));
        }
        let client =
            client_config(&self.config, &request.cluster).map_err(ControlError::NotFound)?;
        let store = self
            .store(&request.archive)
            .await
            .map_err(ControlError::Unavailable)?;
        let asked = MarkRequest {
            name: request.name,
            topics,
            taken_by: format!("POST /marks ({})", self.identity),
            allow_cluster_change: false,
        };
        let mark = marks::take(&client, &*store, &asked)
            .await
            .map_err(|e| match e {
                MarkError::Usage(m) if m.contains("already exists") => ControlError::Conflict(m),
                MarkError::Usage(m) => ControlError::BadRequest(m),
                MarkError::NoArchive(url) => ControlError::Conflict(format!(
                "{url}: no Rewind archive there yet; a mark is taken for an archive a sink writes"
            )),
                other => ControlError::Unavailable(other.to_string()),
            })?;
        let status = marks::status(&*store, &mark)
            .await
            .map_err(|e| ControlError::Unavailable(e.to_string()))?;
        Ok(mark_json(&request.archive, &mark, &status))
    }

    /// Every mark of every archive the configuration names, oldest first within each.
    pub async fn marks(&self) -> Result<Value, ControlError> {
        let mut names = vec!["default".to_string()];
        names.extend(self.config.archives.keys().cloned());
        let mut out = Vec::new();
        for archive in names {
            if self
                .config
                .archive_named(&archive)
                .is_some_and(str::is_empty)
            {
                continue;
            }
            let store = self
                .store(&archive)
                .await
                .map_err(ControlError::Unavailable)?;
            for (mark, status) in marks::statuses(&*store)
                .await
                .map_err(|e| ControlError::Unavailable(e.to_string()))?
            {
                out.push(mark_json(&archive, &mark, &status));
            }
        }
        Ok(json!({ "marks": out }))
    }
}

//! What the sink decodes into typed columns (`[sink.decode]`): the rule of each topic, the schemas
//! of the registry it has fetched, and the shape of each record's typed values, which decides when a
//! schema change opens a new file.
//!
//! Invariant: decoding never holds a partition back for long and never loses a record. A schema
//! the registry does not give within a few seconds is asked for again only after
//! [`RETRY_AFTER`]; meanwhile the records that need it are archived raw, and counted.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_schema::DataType;
use regex::Regex;

use crate::archive::typed::{self, Codec, Decoding, SchemaText, Side, SideDecoding};
use crate::archive::Record;
use crate::config::{DecodeConfig, DecodeMode};
use crate::kafka::registry::Registry;

/// A schema the registry did not give is asked for again after this long.
const RETRY_AFTER: Duration = Duration::from_secs(30);
/// Each registry request of the sink gives up after this long, and is tried twice.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// References of references are followed this deep.
const REFERENCE_DEPTH: usize = 8;

/// The decoding rules of a sink and the schemas it knows.
pub struct Decoders {
    registry: Option<Registry>,
    rules: Vec<Rule>,
    schemas: Mutex<HashMap<u32, Fetched>>,
}

struct Rule {
    topics: Regex,
    key: Option<Mode>,
    value: Option<Mode>,
}

#[derive(Clone)]
enum Mode {
    Registry,
    Declared(Arc<Codec>),
}

#[derive(Clone)]
enum Fetched {
    Ready(Arc<Codec>),
    /// Not had (unknown to the registry, unreadable, or no answer): asked again after `until`.
    Missing {
        until: Instant,
    },
}

/// The column types of a record's typed key and value (`None`: not decoded); compared by address.
#[derive(Debug, Clone, Default)]
pub struct Shapes {
    pub key: Option<Arc<DataType>>,
    pub value: Option<Arc<DataType>>,
}

/// The joined column types of a partition's open file, as records join it.
#[derive(Debug, Clone, Default)]
pub struct OpenShapes {
    key: Option<DataType>,
    value: Option<DataType>,
    /// Shapes joined already, by address: the usual record costs a pointer comparison.
    seen: Vec<Arc<DataType>>,
}

impl OpenShapes {
    /// Whether a record of `shapes` can join the open file without a field changing type.
    pub fn admits(&self, shapes: &Shapes) -> bool {
        [(&self.key, &shapes.key), (&self.value, &shapes.value)]
            .into_iter()
            .all(|(had, new)| match (had, new) {
                (Some(had), Some(new)) => {
                    self.seen.iter().any(|s| Arc::ptr_eq(s, new))
                        || typed::merge(had, new).is_some()
                }
                _ => true,
            })
    }

    /// Join a record of `shapes` (which [`OpenShapes::admits`]).
    pub fn join(&mut self, shapes: &Shapes) {
        for (had, new) in [
            (&mut self.key, &shapes.key),
            (&mut self.value, &shapes.value),
        ] {
            let Some(new) = new else { continue };
            if self.seen.iter().any(|s| Arc::ptr_eq(s, new)) {
                continue;
            }
            *had = match had.take() {
                None => Some((**new).clone()),
                Some(h) => Some(typed::merge(&h, new).unwrap_or(h)),
            };
            self.seen.push(new.clone());
        }
    }
}

/// The JSON Schema `given` (a file path, or inline JSON starting with `{`) as a codec.
pub fn declared_schema(given: &str) -> Result<Arc<Codec>, String> {
    let text = if given.trim_start().starts_with('{') {
        given.to_string()
    } else {
        std::fs::read_to_string(given).map_err(|e| format!("cannot read {given:?}: {e}"))?
    };
    Codec::parse(SchemaText {
        kind: "JSON".into(),
        schema: text,
        references: Vec::new(),
    })
    .map(Arc::new)
}

impl std::fmt::Debug for Decoders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoders")
            .field("registry", &self.registry)
            .field("rules", &self.rules.len())
            .finish()
    }
}

impl Decoders {
    /// The sink's decoders, `None` when `[sink.decode]` decodes nothing.
    pub fn from_config(config: &DecodeConfig) -> Result<Option<Arc<Decoders>>, String> {
        if config.topics.is_empty() {
            return Ok(None);
        }
        let registry = config
            .registry
            .as_deref()
            .map(|url| {
                Registry::new(url)
                    .map(|r| r.with_patience(REQUEST_TIMEOUT, 2))
                    .map_err(|e| format!("sink.decode.registry: {e}"))
            })
            .transpose()?;
        let mut rules = Vec::new();
        for (i, rule) in config.topics.iter().enumerate() {
            let topics = Regex::new(&format!("^(?:{})$", rule.topics))
                .map_err(|e| format!("sink.decode.topics[{i}].topics: {e}"))?;
            let mode = |side: &str, mode: DecodeMode, schema: &Option<String>| match mode {
                DecodeMode::Off => Ok(None),
                DecodeMode::Registry if registry.is_none() => Err(format!(
                    "sink.decode.topics[{i}].{side} = \"registry\" needs sink.decode.registry"
                )),
                DecodeMode::Registry => Ok(Some(Mode::Registry)),
                DecodeMode::Json => {
                    let given = schema.as_deref().ok_or_else(|| {
                        format!("sink.decode.topics[{i}].{side} = \"json\" needs {side}_schema")
                    })?;
                    declared_schema(given)
                        .map(|c| Some(Mode::Declared(c)))
                        .map_err(|e| format!("sink.decode.topics[{i}].{side}_schema: {e}"))
                }
            };
            rules.push(Rule {
                topics,
                key: mode("key", rule.key, &rule.key_schema)?,
                value: mode("value", rule.value, &rule.value_schema)?,
            });
        }
        Ok(Some(Arc::new(Decoders {
            registry,
            rules,
            schemas: Mutex::new(HashMap::new()),
        })))
    }

    /// The registry, if one is configured (checked at start).
    pub fn registry(&self) -> Option<&Registry> {
        self.registry.as_ref()
    }

    fn rule(&self, topic: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.topics.is_match(topic))
    }

    /// Whether `topic`'s records are decoded at all.
    pub fn decodes(&self, topic: &str) -> bool {
        self.rule(topic).is_some()
    }

    /// The column types of `record`'s typed key and value, fetching a schema not known yet (a
    /// few seconds at most; one the registry did not give is not asked for again for a while).
    pub async fn shapes(&self, topic: &str, record: &Record) -> Shapes {
        let Some(rule) = self.rule(topic) else {
            return Shapes::default();
        };
        let mut shapes = Shapes::default();
        for (side, mode, bytes) in [
            (Side::Key, &rule.key, record.key.as_deref()),
            (Side::Value, &rule.value, record.value.as_deref()),
        ] {
            let (Some(mode), Some(bytes)) = (mode, bytes) else {
                continue;
            };
            let shape = match mode {
                Mode::Declared(codec) => codec.shape(bytes).ok(),
                Mode::Registry => match typed::wire_id(bytes) {
                    None => None,
                    Some(id) => match self.schema(id).await {
                        Some(codec) => codec.shape(&bytes[5..]).ok(),
                        None => None,
                    },
                },
            };
            match side {
                Side::Key => shapes.key = shape,
                Side::Value => shapes.value = shape,
            }
        }
        shapes
    }

    /// The decoding of a file of `topic`'s `records`: the schemas of their ids known so far.
    pub fn decoding(&self, topic: &str, records: &[Record]) -> Option<Decoding> {
        let rule = self.rule(topic)?;
        let known = self.schemas.lock().expect("schema cache");
        let side = |mode: &Option<Mode>, of: fn(&Record) -> Option<&[u8]>| {
            Some(match mode.as_ref()? {
                Mode::Declared(codec) => SideDecoding::Declared(codec.clone()),
                Mode::Registry => {
                    let mut codecs = BTreeMap::new();
                    for id in records.iter().filter_map(|r| typed::wire_id(of(r)?)) {
                        if let Some(Fetched::Ready(codec)) = known.get(&id) {
                            codecs.entry(id).or_insert_with(|| codec.clone());
                        }
                    }
                    SideDecoding::Registry(codecs)
                }
            })
        };
        Some(Decoding {
            key: side(&rule.key, |r| r.key.as_deref()),
            value: side(&rule.value, |r| r.value.as_deref()),
        })
    }

    /// The codec of schema `id`, fetched from the registry the first time.
    async fn schema(&self, id: u32) -> Option<Arc<Codec>> {
        match self.schemas.lock().expect("schema cache").get(&id) {
            Some(Fetched::Ready(codec)) => return Some(codec.clone()),
            Some(Fetched::Missing { until }) if Instant::now() < *until => return None,
            _ => {}
        }
        let registry = self.registry.as_ref()?;
        let fetched = match fetch(registry, id).await {
            Ok(text) => match Codec::parse(text) {
                Ok(codec) => Fetched::Ready(Arc::new(codec)),
                Err(why) => {
                    tracing::warn!(schema_id = id, %why, "cannot decode with this schema; its records are archived raw");
                    Fetched::Missing {
                        until: Instant::now() + RETRY_AFTER,
                    }
                }
            },
            Err(why) => {
                tracing::warn!(schema_id = id, %why, "no schema from the registry; records of it are archived raw for now");
                Fetched::Missing {
                    until: Instant::now() + RETRY_AFTER,
                }
            }
        };
        self.schemas
            .lock()
            .expect("schema cache")
            .insert(id, fetched.clone());
        match fetched {
            Fetched::Ready(codec) => Some(codec),
            Fetched::Missing { .. } => None,
        }
    }
}

/// Schema `id` and, resolved, the schemas it references.
async fn fetch(registry: &Registry, id: u32) -> Result<SchemaText, String> {
    let schema = registry
        .schema(id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("the registry has no schema {id}"))?;
    let mut references = Vec::new();
    let mut pending: Vec<(serde_json::Value, usize)> =
        schema.references.iter().map(|r| (r.clone(), 0)).collect();
    while let Some((reference, depth)) = pending.pop() {
        let name = reference["name"].as_str().unwrap_or_default().to_string();
        let subject = reference["subject"].as_str().unwrap_or_default();
        let version = reference["version"].as_i64().unwrap_or(-1) as i32;
        if depth > REFERENCE_DEPTH || references.iter().any(|r: &typed::Reference| r.name == name) {
            continue;
        }
        let found = registry
            .subject_version(subject, version)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("the registry has no version {version} of {subject:?}"))?;
        pending.extend(found.references.iter().map(|r| (r.clone(), depth + 1)));
        references.push(typed::Reference {
            name,
            schema: found.schema,
        });
    }
    // Referenced schemas first, as Avro's parser wants them defined before use.
    references.reverse();
    Ok(SchemaText {
        kind: schema.schema_type.unwrap_or_else(|| "AVRO".into()),
        schema: schema.schema,
        references,
    })
}

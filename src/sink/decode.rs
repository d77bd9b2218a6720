//! What the sink decodes into typed columns (`[sink.decode]`): the rule of each topic, the schemas
//! of the registry it has fetched, and the shape of each record's typed values, which decides when a
//! schema change opens a new file.
//!
//! Invariant: decoding never holds the backup up for long and never loses a record. A schema is
//! fetched in the background; the consume loop waits for it at most [`WAIT`], once per id. One the
//! registry did not give is asked for again after [`RETRY_AFTER`] (a schema that does not parse,
//! never: ids are immutable), and a registry that does not answer is left alone for as long.
//! Meanwhile the records that need it are archived raw, and counted. A file is decoded with the
//! schemas its records were checked against as they joined it, so what a file holds never depends
//! on when a fetch finished.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_schema::DataType;
use regex::Regex;

use crate::archive::typed::{self, Checked, Codec, Decoding, SchemaText, Side, SideDecoding};
use crate::archive::Record;
use crate::config::{DecodeConfig, DecodeMode};
use crate::kafka::registry::Registry;

/// A schema the registry did not give is asked for again after this long, and a registry that did
/// not answer is not asked anything for as long.
const RETRY_AFTER: Duration = Duration::from_secs(30);
/// Each registry request of the sink gives up after this long, and is tried twice.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the consume loop waits for a schema it has not seen before (once per id).
const WAIT: Duration = Duration::from_secs(1);
/// Fetches running at once; a new id beyond them is archived raw until one finishes.
const FETCHES: usize = 4;
/// References of references are followed this deep, and this many at most per schema.
const REFERENCE_DEPTH: usize = 8;
const REFERENCES: usize = 64;
/// Ids remembered as missing at most; past it, they are forgotten.
const MISSING: usize = 10_000;
/// Ids the registry may say it does not know within [`RETRY_AFTER`] before new ids are fetched
/// one at a time and not waited for: bytes that only look framed (a leading zero byte) would
/// otherwise make a request, and a wait of the consume loop, of every record.
const MISSES: usize = 16;

/// The decoding rules of a sink and the schemas it knows.
pub struct Decoders {
    registry: Option<Registry>,
    rules: Vec<Rule>,
    known: Mutex<Known>,
}

#[derive(Default)]
struct Known {
    schemas: HashMap<u32, Fetched>,
    /// The registry did not answer: nothing is asked of it until then.
    down_until: Option<Instant>,
    /// When it last said it does not know an id, the newest last (at most [`MISSES`]).
    misses: std::collections::VecDeque<Instant>,
}

impl Known {
    /// Whether new ids are fetched as usual now ([`MISSES`]).
    fn asking(&self, now: Instant) -> bool {
        self.down_until.is_none_or(|until| now >= until)
            && (self.misses.len() < MISSES
                || self.misses.front().is_none_or(|t| now >= *t + RETRY_AFTER))
    }
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
    /// Being fetched.
    Pending,
    /// Not had (unknown to the registry, or no answer): asked again after `until`.
    Missing {
        until: Instant,
    },
    /// Had, but it does not parse: ids are immutable, so it is never asked for again.
    Broken,
}

/// The typed shape of one side of a record: the schema id it was checked with (`None`: declared)
/// and its column type (compared by address).
#[derive(Debug, Clone)]
pub struct SideShape {
    pub id: Option<u32>,
    pub shape: Arc<DataType>,
}

/// The typed shapes of a record's key and value (`None`: not decoded).
#[derive(Debug, Clone, Default)]
pub struct Shapes {
    pub key: Option<SideShape>,
    pub value: Option<SideShape>,
}

/// The joined column types of a partition's open file, as records join it, and the schema ids
/// they were checked with: the file is decoded with exactly those.
#[derive(Debug, Clone, Default)]
pub struct OpenShapes {
    sides: [OpenSide; 2],
}

#[derive(Debug, Clone, Default)]
struct OpenSide {
    joined: Option<DataType>,
    /// Shapes joined already, by address and in order: the usual record costs a pointer
    /// comparison.
    seen: Vec<Arc<DataType>>,
    /// Shapes kept out (a field changed type where the file could not roll): their records are
    /// `incompatible` in this file.
    refused: Vec<Arc<DataType>>,
    ids: BTreeSet<u32>,
}

impl OpenSide {
    fn admits(&self, new: &SideShape) -> bool {
        match &self.joined {
            None => true,
            Some(had) => {
                self.seen.iter().any(|s| Arc::ptr_eq(s, &new.shape))
                    || (!self.refused.iter().any(|s| Arc::ptr_eq(s, &new.shape))
                        && typed::join(had, &new.shape).is_some())
            }
        }
    }

    fn join(&mut self, new: &SideShape) {
        self.ids.extend(new.id);
        let known = |s: &Arc<DataType>| Arc::ptr_eq(s, &new.shape);
        if self.seen.iter().any(known) || self.refused.iter().any(known) {
            return;
        }
        let joined = match &self.joined {
            None => Some((*new.shape).clone()),
            Some(h) => typed::join(h, &new.shape),
        };
        match joined {
            Some(joined) => {
                self.joined = Some(joined);
                self.seen.push(new.shape.clone());
            }
            None => self.refused.push(new.shape.clone()),
        }
    }
}

impl OpenShapes {
    /// Whether a record of `shapes` can join the open file without a field changing type.
    pub fn admits(&self, shapes: &Shapes) -> bool {
        [&shapes.key, &shapes.value]
            .into_iter()
            .zip(&self.sides)
            .all(|(new, side)| new.as_ref().is_none_or(|n| side.admits(n)))
    }

    /// Join a record of `shapes`.
    pub fn join(&mut self, shapes: &Shapes) {
        for (new, side) in [&shapes.key, &shapes.value]
            .into_iter()
            .zip(&mut self.sides)
        {
            if let Some(new) = new {
                side.join(new);
            }
        }
    }

    fn ids(&self, side: Side) -> &BTreeSet<u32> {
        &self.sides[side as usize].ids
    }

    /// What was decided for `side`'s shapes, for the file's encoder.
    fn checked(&self, side: Side) -> Checked {
        let s = &self.sides[side as usize];
        Checked {
            joined: s.seen.clone(),
            refused: s.refused.clone(),
        }
    }
}

/// Leaves a schema that is still pending when its fetch ends as missing (dropped with the fetch).
struct Settle {
    decoders: Arc<Decoders>,
    id: u32,
}

impl Drop for Settle {
    fn drop(&mut self) {
        // A poisoned lock (a panic elsewhere while holding it) is left alone.
        if let Ok(mut known) = self.decoders.known.lock() {
            if matches!(known.schemas.get(&self.id), Some(Fetched::Pending)) {
                let until = Instant::now() + RETRY_AFTER;
                known.schemas.insert(self.id, Fetched::Missing { until });
            }
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
            known: Mutex::new(Known::default()),
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

    /// The typed shapes of `record`'s key and value, fetching a schema not seen yet (waiting
    /// for it at most [`WAIT`]).
    pub async fn shapes(self: &Arc<Self>, topic: &str, record: &Record) -> Shapes {
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
                Mode::Declared(codec) => codec
                    .shape(bytes)
                    .ok()
                    .map(|shape| SideShape { id: None, shape }),
                Mode::Registry => match typed::wire_id(bytes) {
                    None => None,
                    Some(id) => match self.schema(id).await {
                        Some(codec) => codec.shape(&bytes[5..]).ok().map(|shape| SideShape {
                            id: Some(id),
                            shape,
                        }),
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

    /// The decoding of a file of `topic` whose records were checked as `open` says.
    pub fn decoding(&self, topic: &str, open: &OpenShapes) -> Option<Decoding> {
        let rule = self.rule(topic)?;
        let known = self.known.lock().expect("schema cache");
        let side = |mode: &Option<Mode>, side: Side| {
            Some(match mode.as_ref()? {
                Mode::Declared(codec) => SideDecoding::Declared(codec.clone()),
                Mode::Registry => SideDecoding::Registry(
                    open.ids(side)
                        .iter()
                        .filter_map(|id| match known.schemas.get(id) {
                            Some(Fetched::Ready(codec)) => Some((*id, codec.clone())),
                            _ => None,
                        })
                        .collect::<BTreeMap<_, _>>(),
                ),
            })
        };
        Some(Decoding {
            key: side(&rule.key, Side::Key),
            value: side(&rule.value, Side::Value),
            checked: [open.checked(Side::Key), open.checked(Side::Value)],
        })
    }

    /// The codec of schema `id`: known, or fetched in the background and waited for at most
    /// [`WAIT`] the first time.
    async fn schema(self: &Arc<Self>, id: u32) -> Option<Arc<Codec>> {
        let wait;
        {
            let mut known = self.known.lock().expect("schema cache");
            let now = Instant::now();
            match known.schemas.get(&id) {
                Some(Fetched::Ready(codec)) => return Some(codec.clone()),
                Some(Fetched::Pending | Fetched::Broken) => return None,
                Some(Fetched::Missing { until }) if now < *until => return None,
                _ => {}
            }
            if known.down_until.is_some_and(|until| now < until) {
                return None;
            }
            let pending = known
                .schemas
                .values()
                .filter(|f| matches!(f, Fetched::Pending))
                .count();
            // Past many unknown ids, one fetch at a time goes on in the background, unwaited for:
            // a real new id still gets its turn among framed-looking garbage.
            let asking = known.asking(now);
            if pending >= if asking { FETCHES } else { 1 } {
                return None;
            }
            wait = asking;
            if known.schemas.len() > MISSING {
                known
                    .schemas
                    .retain(|_, f| !matches!(f, Fetched::Missing { .. }));
            }
            known.schemas.insert(id, Fetched::Pending);
        }
        let decoders = self.clone();
        let mut fetching = tokio::spawn(async move {
            // A fetch that ends without storing its outcome (a panic, the task aborted) must not
            // hold one of the slots for good.
            let _settled = Settle {
                decoders: decoders.clone(),
                id,
            };
            decoders.fetch(id).await
        });
        if !wait {
            return None;
        }
        match tokio::time::timeout(WAIT, &mut fetching).await {
            Ok(Ok(codec)) => codec,
            // Still on its way (it stores what it gets), or gone.
            _ => None,
        }
    }

    /// Fetch and parse schema `id`, and remember the outcome.
    async fn fetch(&self, id: u32) -> Option<Arc<Codec>> {
        let registry = self.registry.as_ref()?;
        let (fetched, down) = match fetch(registry, id).await {
            Ok(text) => {
                // Parsing is CPU work (a .proto is compiled): off the runtime's threads.
                let parsed = tokio::task::spawn_blocking(move || Codec::parse(text))
                    .await
                    .unwrap_or_else(|_| Err("the parser stopped".into()));
                match parsed {
                    Ok(codec) => (Fetched::Ready(Arc::new(codec)), false),
                    Err(why) => {
                        tracing::warn!(schema_id = id, %why, "cannot decode with this schema; its records are archived without typed columns");
                        (Fetched::Broken, false)
                    }
                }
            }
            Err((why, down)) => {
                tracing::warn!(schema_id = id, %why, "no schema from the registry; records of it are archived without typed columns for now");
                let until = Instant::now() + RETRY_AFTER;
                (Fetched::Missing { until }, down)
            }
        };
        let mut known = self.known.lock().expect("schema cache");
        if down {
            known.down_until = Some(Instant::now() + RETRY_AFTER);
        } else if matches!(fetched, Fetched::Missing { .. }) {
            if known.misses.len() >= MISSES {
                known.misses.pop_front();
            }
            known.misses.push_back(Instant::now());
        }
        known.schemas.insert(id, fetched.clone());
        match fetched {
            Fetched::Ready(codec) => Some(codec),
            _ => None,
        }
    }
}

/// Schema `id` and, resolved, the schemas it references; an error says whether the registry did
/// not answer (rather than refuse).
async fn fetch(registry: &Registry, id: u32) -> Result<SchemaText, (String, bool)> {
    let failed = |e: crate::kafka::registry::RegistryError| {
        let down = e.may_pass();
        (e.to_string(), down)
    };
    let schema = registry
        .schema(id)
        .await
        .map_err(failed)?
        .ok_or_else(|| (format!("the registry has no schema {id}"), false))?;
    let mut references: Vec<typed::Reference> = Vec::new();
    let mut pending: Vec<(serde_json::Value, usize)> =
        schema.references.iter().map(|r| (r.clone(), 0)).collect();
    while let Some((reference, depth)) = pending.pop() {
        let name = reference["name"].as_str().unwrap_or_default().to_string();
        let subject = reference["subject"].as_str().unwrap_or_default();
        let version = reference["version"].as_i64().unwrap_or(-1) as i32;
        if depth > REFERENCE_DEPTH || references.iter().any(|r| r.name == name) {
            continue;
        }
        if references.len() >= REFERENCES {
            return Err((
                format!("schema {id} references more than {REFERENCES} schemas"),
                false,
            ));
        }
        let found = registry
            .subject_version(subject, version)
            .await
            .map_err(failed)?
            .ok_or_else(|| {
                (
                    format!("the registry has no version {version} of {subject:?}"),
                    false,
                )
            })?;
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

#[cfg(test)]
mod tests {
    use arrow_schema::{Field, Fields};

    use super::*;

    fn shape(field: &str, t: DataType) -> SideShape {
        SideShape {
            id: Some(1),
            shape: Arc::new(DataType::Struct(Fields::from(vec![Field::new(
                field, t, true,
            )]))),
        }
    }

    fn value(s: &SideShape) -> Shapes {
        Shapes {
            key: None,
            value: Some(s.clone()),
        }
    }

    #[test]
    fn a_shape_kept_out_of_a_file_stays_out_and_asks_for_a_roll_each_time() {
        let (long, text) = (
            shape("amount", DataType::Int64),
            shape("amount", DataType::Utf8),
        );
        let mut open = OpenShapes::default();
        open.join(&value(&long));
        assert!(!open.admits(&value(&text)));
        // The file could not roll: the record joins it untyped.
        open.join(&value(&text));
        assert!(
            !open.admits(&value(&text)),
            "a refused shape must ask for a roll again once one is allowed"
        );
        let checked = open.checked(Side::Value);
        assert_eq!(checked.joined.len(), 1);
        assert!(Arc::ptr_eq(&checked.refused[0], &text.shape));
        assert!(open.admits(&value(&long)));
    }

    #[test]
    fn ids_the_registry_does_not_know_stop_the_asking_for_a_while() {
        let now = Instant::now();
        let mut known = Known::default();
        assert!(known.asking(now));
        for _ in 0..MISSES {
            known.misses.push_back(now);
        }
        assert!(!known.asking(now));
        assert!(known.asking(now + RETRY_AFTER));
        known.down_until = Some(now + RETRY_AFTER * 2);
        assert!(!known.asking(now + RETRY_AFTER));
    }
}

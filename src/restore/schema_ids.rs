//! Schema ids rewritten on the way into the target (`--schema-ids-from URL --schema-ids-to URL`).
//!
//! A key or value in the Confluent wire format names its schema by the id the source cluster's
//! registry gave it. Restored into a cluster whose registry numbered the same schemas differently,
//! those ids would name other schemas, or none. Each id is mapped by subject and version: the
//! source registry says which subject versions registered it (the topic's own subject,
//! `<topic>-key` or `<topic>-value`, is taken when it is one of them), and the target registry
//! gives the id of that subject version. Only the four id bytes change; the rest of the record is
//! restored byte for byte. Records not in the wire format (no zero byte first, or shorter than five
//! bytes) are restored as they are. A framed record whose id either registry cannot map stops the
//! restore before the transaction holding it commits: guessing would restore data that no consumer
//! can read correctly.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::archive::datafile::Rows;
use crate::kafka::registry::{self, Registry, RegistryError, SubjectVersion};

/// The two registries and the ids mapped so far.
#[derive(Debug)]
pub struct SchemaIds {
    from: Registry,
    to: Registry,
    /// (source topic, key rather than value, source id) → target id.
    known: Mutex<HashMap<(String, bool, u32), u32>>,
}

/// The target ids of one chunk's source ids: (key rather than value, source id) → target id.
pub type ChunkIds = HashMap<(bool, u32), u32>;

impl SchemaIds {
    pub fn new(from: Registry, to: Registry) -> SchemaIds {
        SchemaIds {
            from,
            to,
            known: Mutex::new(HashMap::new()),
        }
    }

    /// The flags, as recorded with a restore's selection (no credentials).
    pub fn describe(&self) -> String {
        format!(
            " --schema-ids-from {} --schema-ids-to {}",
            self.from.url(),
            self.to.url()
        )
    }

    /// Both registries answer.
    pub async fn check(&self) -> Result<(), String> {
        for (side, registry) in [
            ("--schema-ids-from", &self.from),
            ("--schema-ids-to", &self.to),
        ] {
            registry.check().await.map_err(|e| format!("{side}: {e}"))?;
        }
        Ok(())
    }

    /// The target id of every schema id the keys and values of `rows` (from `topic`/`partition`)
    /// carry, asking the registries for the ones not mapped yet.
    pub async fn chunk(
        &self,
        topic: &str,
        partition: i32,
        rows: &Rows,
    ) -> Result<ChunkIds, String> {
        let view = rows.view();
        let mut out = ChunkIds::new();
        for i in 0..rows.len() {
            for (is_key, bytes) in [(true, view.key(i)), (false, view.value(i))] {
                let Some(id) = bytes.and_then(registry::wire_id) else {
                    continue;
                };
                if out.contains_key(&(is_key, id)) {
                    continue;
                }
                let cached = self
                    .known
                    .lock()
                    .expect("not poisoned")
                    .get(&(topic.to_string(), is_key, id))
                    .copied();
                let target = match cached {
                    Some(target) => target,
                    None => {
                        let target = self.map(topic, is_key, id).await.map_err(|e| {
                            format!("{topic}/{partition} at offset {}: {e}", view.offset(i))
                        })?;
                        self.known
                            .lock()
                            .expect("not poisoned")
                            .insert((topic.to_string(), is_key, id), target);
                        target
                    }
                };
                out.insert((is_key, id), target);
            }
        }
        Ok(out)
    }

    async fn map(&self, topic: &str, is_key: bool, id: u32) -> Result<u32, String> {
        let part = if is_key { "key" } else { "value" };
        let failed = |e: RegistryError| e.to_string();
        let Some(versions) = self.from.versions_of(id).await.map_err(failed)? else {
            return Err(format!(
                "the record's {part} is in the Confluent wire format with schema id {id}, which the source registry {} does not know; give --schema-ids-from the registry that assigned the ids, or restore topics whose records only look framed without these flags",
                self.from.url()
            ));
        };
        // The topic's own subject (TopicNameStrategy) when the schema is registered under it;
        // otherwise every subject version that registered it, which must agree in the target.
        let own = format!("{topic}-{part}");
        let candidates: Vec<&SubjectVersion> = match versions.iter().find(|v| v.subject == own) {
            Some(own) => vec![own],
            None => versions.iter().collect(),
        };
        if candidates.is_empty() {
            return Err(format!(
                "schema id {id} of the record's {part} is registered under no subject in the source registry {}",
                self.from.url()
            ));
        }
        let mut targets = Vec::new();
        for version in &candidates {
            match self.to.id_of(version).await.map_err(failed)? {
                Some(target) => targets.push((version, target)),
                None => {
                    return Err(format!(
                        "schema id {id} of the record's {part} is {} version {} in {}, which the target registry {} does not have; register it there (or restore the registry first) and run the same restore again",
                        version.subject,
                        version.version,
                        self.from.url(),
                        self.to.url()
                    ))
                }
            }
        }
        let first = targets[0].1;
        if targets.iter().any(|(_, t)| *t != first) {
            let list: Vec<String> = targets
                .iter()
                .map(|(v, t)| format!("{} version {} (id {t})", v.subject, v.version))
                .collect();
            return Err(format!(
                "schema id {id} of the record's {part} is registered under {}, which the target registry {} numbers differently; it cannot tell which one the record meant",
                list.join(", "),
                self.to.url()
            ));
        }
        Ok(first)
    }
}

/// `bytes` with its schema id mapped through `ids`, when it is in the wire format and mapped.
pub fn rewritten(bytes: Option<&[u8]>, is_key: bool, ids: &ChunkIds) -> Option<Vec<u8>> {
    let bytes = bytes?;
    let id = registry::wire_id(bytes)?;
    let target = *ids.get(&(is_key, id))?;
    (target != id).then(|| registry::with_wire_id(bytes, target))
}

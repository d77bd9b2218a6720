//! Schema ids rewritten on the way into the target (`--schema-ids-from URL --schema-ids-to URL`).
//!
//! A value (and, with `--schema-ids-keys`, a key) in the Confluent wire format names its schema by
//! the id the source cluster's registry gave it. Restored into a cluster whose registry numbered
//! the same schemas differently, those ids would name other schemas, or none. Each id is mapped by
//! subject and content: the source registry gives the schema and the subjects that registered it
//! (the topic's own subject, `<topic>-value` or `<topic>-key`, when it is one of them), and the
//! target registry the id under which that subject registers the same schema (its lookup compares
//! content, so a target whose versions were numbered otherwise, or that holds another schema under
//! the same version, can never give a wrong id). Only the four id bytes change; the rest of the
//! record is restored byte for byte. Records not in the wire format (no zero byte first, or shorter
//! than five bytes) are restored as they are. A framed record whose id cannot be mapped stops the
//! restore before its chunk is sent: guessing would restore data no consumer can read correctly.
//! Keys are left alone unless asked for: plain binary keys (a big-endian long below 2^32, say)
//! often begin with a zero byte.

use std::collections::HashMap;
use std::sync::Mutex;

use super::plan::Window;
use crate::archive::datafile::Rows;
use crate::kafka::registry::{self, Registry, RegistryError};

/// The two registries and the ids mapped so far.
#[derive(Debug)]
pub struct SchemaIds {
    from: Registry,
    to: Registry,
    /// Keys are rewritten too.
    keys: bool,
    /// (source topic, key rather than value, source id) → target id.
    known: Mutex<HashMap<(String, bool, u32), u32>>,
}

/// The target ids of one chunk's source ids: (key rather than value, source id) → target id.
pub type ChunkIds = HashMap<(bool, u32), u32>;

impl SchemaIds {
    pub fn new(from: Registry, to: Registry, keys: bool) -> SchemaIds {
        SchemaIds {
            from,
            to,
            keys,
            known: Mutex::new(HashMap::new()),
        }
    }

    /// Whether keys are rewritten too.
    pub fn keys(&self) -> bool {
        self.keys
    }

    /// The flags, as recorded with a restore's selection: whether ids are rewritten, not where
    /// from (a resumed restore may reach the registries at other addresses, as after a failover
    /// to a registry restored from the archive).
    pub fn describe(&self) -> &'static str {
        if self.keys {
            " --schema-ids --schema-ids-keys"
        } else {
            " --schema-ids"
        }
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

    /// The target id of every schema id the values (and keys, if asked) of `rows` (from
    /// `topic`/`partition`) carry, asking the registries for the ones not mapped yet. With
    /// `strict`, records outside it (which are not restored) are left out.
    pub async fn chunk(
        &self,
        topic: &str,
        partition: i32,
        rows: &Rows,
        strict: Option<&Window>,
    ) -> Result<ChunkIds, String> {
        let view = rows.view();
        let mut out = ChunkIds::new();
        for i in 0..rows.len() {
            if strict.is_some_and(|w| !w.contains(view.timestamp(i))) {
                continue;
            }
            let key = if self.keys { view.key(i) } else { None };
            for (is_key, bytes) in [(true, key), (false, view.value(i))] {
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
        let Some(schema) = self.from.schema(id).await.map_err(failed)? else {
            return Err(format!(
                "the record's {part} is in the Confluent wire format with schema id {id}, which the source registry {} does not know; give --schema-ids-from the registry that assigned the ids, or restore topics whose records only look framed without these flags",
                self.from.url()
            ));
        };
        let versions = self
            .from
            .versions_of(id)
            .await
            .map_err(failed)?
            .unwrap_or_default();
        // The topic's own subject (TopicNameStrategy) when the schema is registered under it;
        // otherwise every subject that registered it, which must agree in the target.
        let own = format!("{topic}-{part}");
        let mut subjects: Vec<&str> = if versions.iter().any(|v| v.subject == own) {
            vec![&own]
        } else {
            versions.iter().map(|v| v.subject.as_str()).collect()
        };
        subjects.sort_unstable();
        subjects.dedup();
        if subjects.is_empty() {
            return Err(format!(
                "schema id {id} of the record's {part} is registered under no subject in the source registry {}",
                self.from.url()
            ));
        }
        let mut found = Vec::new();
        for subject in &subjects {
            if let Some(target) = self.to.lookup(subject, &schema).await.map_err(failed)? {
                found.push((*subject, target));
            }
        }
        let Some(&(_, first)) = found.first() else {
            return Err(format!(
                "schema id {id} of the record's {part} (registered under {} in {}) is not registered with the same content under {} in the target registry {}; register it there (or restore the registry first) and run the same restore again",
                subjects.join(", "),
                self.from.url(),
                if subjects.len() == 1 { "that subject" } else { "any of them" },
                self.to.url()
            ));
        };
        if found.iter().any(|(_, t)| *t != first) {
            let list: Vec<String> = found
                .iter()
                .map(|(subject, t)| format!("{subject} (id {t})"))
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

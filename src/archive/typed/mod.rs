//! Typed columns: the keys and values of a topic decoded with their schemas and written beside the
//! raw bytes, as the columns `key_decoded` and `value_decoded` of a data file. Values in the
//! Confluent wire format (a zero byte, the schema id, the encoded data) are decoded with the
//! registry's Avro, JSON Schema or Protobuf schema of that id; plain JSON with a schema the operator
//! declared. The raw `key` and `value` stay the source of truth: restores never read typed columns.
//!
//! Invariant: a typed value is a pure function of a record's bytes and the schemas the file's footer
//! records (`rewind.decoded`), so compaction decodes its parts again into the same typed values, and
//! a record that cannot be decoded is still archived whole (its typed column is null, and counted).

mod arrays;
mod avro;
mod json;
mod proto;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow_array::ArrayRef;
use arrow_schema::{DataType, Field, Fields};
use serde::{Deserialize, Serialize};

use super::record::Record;

/// The typed column of keys, and of values.
pub const KEY_COLUMN: &str = "key_decoded";
pub const VALUE_COLUMN: &str = "value_decoded";
/// The footer key that records what a file's typed columns were decoded with.
pub const FOOTER_KEY: &str = "rewind.decoded";
/// Nesting deeper than this (a recursive schema) is not decoded.
const MAX_DEPTH: usize = 32;

/// A record's key or its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Key,
    Value,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Key => "key",
            Side::Value => "value",
        }
    }

    pub fn column(self) -> &'static str {
        match self {
            Side::Key => KEY_COLUMN,
            Side::Value => VALUE_COLUMN,
        }
    }

    fn of(self, record: &Record) -> Option<&[u8]> {
        match self {
            Side::Key => record.key.as_deref(),
            Side::Value => record.value.as_deref(),
        }
    }
}

/// A decoded value, before it becomes part of an Arrow column.
#[derive(Debug, Clone, PartialEq)]
pub enum Datum {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Decimal(i128),
    List(Vec<Datum>),
    /// Fields by name, in the schema's order.
    Record(Vec<(String, Datum)>),
}

/// A schema as a registry serves it, with the schemas it references resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaText {
    /// `AVRO`, `JSON` or `PROTOBUF` (a registry leaves it out for Avro).
    #[serde(rename = "schemaType", default = "avro_type")]
    pub kind: String,
    pub schema: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<Reference>,
}

fn avro_type() -> String {
    "AVRO".into()
}

impl SchemaText {
    /// The bytes it takes in a footer (as JSON, escapes included).
    pub fn footer_size(&self) -> usize {
        serde_json::to_vec(self).map_or(usize::MAX, |json| json.len())
    }
}

/// A schema another one references: its name there (a `.proto` import path, an Avro type's full
/// name) and its text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reference {
    pub name: String,
    pub schema: String,
}

/// Why a key or value got no typed value (the label of the sink's decode failure metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Failure {
    /// Not in the wire format, where the topic's values should be.
    NotFramed,
    /// The schema of its id could not be had (the registry did not know it or did not answer).
    UnknownSchema,
    /// Its bytes do not decode with its schema.
    Undecodable,
    /// Its schema's columns cannot join those of the file's other records (a field changed type).
    Incompatible,
}

impl Failure {
    pub const ALL: [Failure; 4] = [
        Failure::NotFramed,
        Failure::UnknownSchema,
        Failure::Undecodable,
        Failure::Incompatible,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Failure::NotFramed => "not_framed",
            Failure::UnknownSchema => "unknown_schema",
            Failure::Undecodable => "undecodable",
            Failure::Incompatible => "incompatible",
        }
    }
}

/// A parsed schema: the column type of what it decodes and how to decode it.
pub struct Codec {
    text: SchemaText,
    inner: Inner,
}

enum Inner {
    Avro(avro::AvroCodec),
    Json(json::JsonCodec),
    Proto(proto::ProtoCodec),
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec")
            .field("kind", &self.text.kind)
            .finish()
    }
}

impl Codec {
    /// Parse a schema (its references resolved); an error names what is wrong with it.
    pub fn parse(text: SchemaText) -> Result<Codec, String> {
        // A schema comes from a registry anyone may write to: a parser's panic is an error too.
        let inner = unpanicked(|| {
            Ok(match text.kind.to_ascii_uppercase().as_str() {
                "AVRO" => Inner::Avro(avro::AvroCodec::parse(&text)?),
                "JSON" => Inner::Json(json::JsonCodec::parse(&text.schema)?),
                "PROTOBUF" => Inner::Proto(proto::ProtoCodec::parse(&text)?),
                other => {
                    return Err(format!(
                        "schema type {other:?} is not Avro, JSON or Protobuf"
                    ))
                }
            })
        })?;
        Ok(Codec { text, inner })
    }

    pub fn text(&self) -> &SchemaText {
        &self.text
    }

    /// The column type of `body` (the bytes after the wire format's header): one per schema, but
    /// a Protobuf schema's body names which of its messages it holds.
    pub fn shape(&self, body: &[u8]) -> Result<Arc<DataType>, String> {
        match &self.inner {
            Inner::Avro(c) => c.shape(),
            Inner::Json(c) => c.shape(),
            Inner::Proto(c) => c.shape(body).map(|(shape, _)| shape),
        }
    }

    /// Decode `body` into a value of [`Codec::shape`] of at most `limit` ([`weight`]), and its
    /// weight. Bytes are anyone's: a decoder's panic is an error here too, never the sink's end,
    /// and each decoder spends `limit` as it builds, so no value grows far past it first.
    pub fn decode(&self, body: &[u8], limit: usize) -> Result<(Datum, usize), String> {
        let mut budget = Budget(limit);
        let datum = unpanicked(|| match &self.inner {
            Inner::Avro(c) => c.decode(body, &mut budget),
            Inner::Json(c) => c.decode(body, &mut budget),
            Inner::Proto(c) => c.decode(body, &mut budget),
        })?;
        let weight = weight(&datum);
        if weight > limit {
            return Err(TOO_LARGE.into());
        }
        Ok((datum, weight))
    }
}

#[cfg(test)]
impl Codec {
    /// [`Codec::decode`] within one record's budget.
    pub fn decode_alone(&self, body: &[u8]) -> Result<Datum, String> {
        self.decode(body, weight_budget(body.len())).map(|(d, _)| d)
    }
}

/// `f`'s result, with a panic as an error.
fn unpanicked<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err("the decoder failed on these bytes".into()))
}

/// The largest allocation the Avro decoder makes for one length it reads (a string, bytes, an
/// array block): set once per process ([`limit_avro_allocations`]), so hostile lengths cannot
/// make it allocate more.
pub const AVRO_MAX_ALLOCATION: usize = 128 << 20;

/// Cap the Avro decoder's allocations at [`AVRO_MAX_ALLOCATION`] (its default is 512 MiB); the
/// first call in a process decides.
pub fn limit_avro_allocations() {
    apache_avro::util::max_allocation_bytes(AVRO_MAX_ALLOCATION);
}

/// How one side of a file's records is decoded.
#[derive(Debug, Clone)]
pub enum SideDecoding {
    /// The wire format: each record names its schema, and these are the ones known by id.
    Registry(BTreeMap<u32, Arc<Codec>>),
    /// Plain JSON with a declared JSON Schema.
    Declared(Arc<Codec>),
}

impl SideDecoding {
    /// The codec of `bytes` and the bytes it decodes.
    fn locate<'a>(&'a self, bytes: &'a [u8]) -> Result<(&'a Arc<Codec>, &'a [u8]), Failure> {
        match self {
            SideDecoding::Declared(codec) => Ok((codec, bytes)),
            SideDecoding::Registry(codecs) => {
                let id = wire_id(bytes).ok_or(Failure::NotFramed)?;
                let codec = codecs.get(&id).ok_or(Failure::UnknownSchema)?;
                Ok((codec, &bytes[5..]))
            }
        }
    }
}

/// The schema id of bytes in the Confluent wire format.
pub fn wire_id(bytes: &[u8]) -> Option<u32> {
    match bytes {
        [0, a, b, c, d, ..] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

/// How a file's keys and values are decoded into typed columns.
#[derive(Debug, Clone, Default)]
pub struct Decoding {
    pub key: Option<SideDecoding>,
    pub value: Option<SideDecoding>,
    /// What the sink decided as the records joined the file, by side (key, value); left empty
    /// (compaction), the shapes join in the records' order.
    pub checked: [Checked; 2],
}

/// The shapes (by address) a sink joined into a file's typed column, in order, and those it
/// kept out (a field changed type where the file could not roll): the file is typed as the sink
/// decided, whatever order its records come in.
#[derive(Debug, Clone, Default)]
pub struct Checked {
    pub joined: Vec<Arc<DataType>>,
    pub refused: Vec<Arc<DataType>>,
}

/// What a file's footer records about one typed column (`rewind.decoded`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SideSpec {
    /// The schemas by id (wire format) ...
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub schemas: BTreeMap<u32, SchemaText>,
    /// ... or the declared one (plain JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub declared: Option<SchemaText>,
    /// Keys or values decoded.
    pub decoded: u64,
    /// Keys or values not decoded, by reason (`not_framed`, ...); null ones are neither.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub failed: BTreeMap<String, u64>,
}

/// What a file's footer records about its typed columns.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Spec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<SideSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<SideSpec>,
}

impl Spec {
    pub fn side(&self, side: Side) -> Option<&SideSpec> {
        match side {
            Side::Key => self.key.as_ref(),
            Side::Value => self.value.as_ref(),
        }
    }

    /// Keys and values not decoded for reason `why`, over both sides.
    pub fn failed(&self, why: Failure) -> u64 {
        [&self.key, &self.value]
            .into_iter()
            .flatten()
            .filter_map(|s| s.failed.get(why.as_str()))
            .sum()
    }
}

impl Decoding {
    pub fn side(&self, side: Side) -> Option<&SideDecoding> {
        match side {
            Side::Key => self.key.as_ref(),
            Side::Value => self.value.as_ref(),
        }
    }

    /// The decoding the footers of `specs` describe together (the parts of a compacted file): the
    /// schemas of all, by id. `None` when none of them has typed columns.
    pub fn from_specs<'a>(
        specs: impl IntoIterator<Item = &'a Spec>,
    ) -> Result<Option<Decoding>, String> {
        let mut schemas: [BTreeMap<u32, SchemaText>; 2] = Default::default();
        let mut declared: [Option<SchemaText>; 2] = Default::default();
        let mut any = [false; 2];
        let mut by_registry = [false; 2];
        for spec in specs {
            for (i, side) in [Side::Key, Side::Value].into_iter().enumerate() {
                let Some(s) = spec.side(side) else { continue };
                any[i] = true;
                for (id, text) in &s.schemas {
                    match schemas[i].get(id) {
                        // One id, two schemas: another registry's ids (a migrated one).
                        Some(had) if had != text => {
                            return Err(format!(
                                "the files name different {} schemas by id {id}",
                                side.as_str()
                            ))
                        }
                        Some(_) => {}
                        None => {
                            schemas[i].insert(*id, text.clone());
                        }
                    }
                }
                match &s.declared {
                    None => by_registry[i] = true,
                    Some(d) => match &declared[i] {
                        Some(had) if had != d => {
                            return Err(format!(
                                "the files declare different schemas for their {}s",
                                side.as_str()
                            ))
                        }
                        _ => declared[i] = Some(d.clone()),
                    },
                }
                if by_registry[i] && declared[i].is_some() {
                    return Err(format!(
                        "some files decode their {}s with a declared schema, others with the registry's",
                        side.as_str()
                    ));
                }
            }
        }
        if !any.iter().any(|a| *a) {
            return Ok(None);
        }
        let build = |i: usize| -> Result<Option<SideDecoding>, String> {
            if !any[i] {
                return Ok(None);
            }
            if let Some(d) = &declared[i] {
                return Ok(Some(SideDecoding::Declared(Arc::new(Codec::parse(
                    d.clone(),
                )?))));
            }
            let codecs = schemas[i]
                .iter()
                .filter_map(|(id, t)| Some((*id, Arc::new(Codec::parse(t.clone()).ok()?))))
                .collect();
            Ok(Some(SideDecoding::Registry(codecs)))
        };
        Ok(Some(Decoding {
            key: build(0)?,
            value: build(1)?,
            checked: Default::default(),
        }))
    }

    /// Get ready to encode `records` (one file's): the type of each typed column, joined over
    /// the schemas of all of them. A record whose schema cannot join is not decoded.
    pub fn prepare(&self, records: &[Record]) -> Prepared {
        let sides = [Side::Key, Side::Value]
            .into_iter()
            .filter_map(|side| {
                let checked = &self.checked[side as usize];
                Some(PreparedSide::new(
                    side,
                    self.side(side)?.clone(),
                    checked,
                    records,
                ))
            })
            .collect();
        Prepared { sides }
    }
}

/// The typed columns of one file, being encoded.
pub struct Prepared {
    sides: Vec<PreparedSide>,
}

struct PreparedSide {
    side: Side,
    decoding: SideDecoding,
    /// `None`: no record decodes, and the file gets no typed column of this side.
    shape: Option<DataType>,
    /// Shapes (by address) that could not join `shape`.
    rejected: Vec<Arc<DataType>>,
    /// The schemas of the values decoded, for the footer.
    used: BTreeMap<u32, SchemaText>,
    /// The bytes of their texts, at most [`SPEC_TEXT_LIMIT`].
    used_bytes: usize,
    /// The column would make the footer too large ([`Prepared::fit_footer`]): nothing is typed.
    too_wide: bool,
    decoded: u64,
    failed: BTreeMap<Failure, u64>,
}

impl PreparedSide {
    fn new(
        side: Side,
        decoding: SideDecoding,
        checked: &Checked,
        records: &[Record],
    ) -> PreparedSide {
        let mut shape: Option<DataType> = None;
        let mut seen: Vec<Arc<DataType>> = Vec::new();
        let mut rejected = checked.refused.clone();
        seen.extend(checked.refused.iter().cloned());
        let found = records
            .iter()
            .filter_map(|r| side.of(r))
            .filter_map(|bytes| {
                let (codec, body) = decoding.locate(bytes).ok()?;
                codec.shape(body).ok()
            });
        for s in checked.joined.iter().cloned().chain(found) {
            if seen.iter().any(|x| Arc::ptr_eq(x, &s)) {
                continue;
            }
            seen.push(s.clone());
            let joined = match &shape {
                None => Some((*s).clone()),
                Some(had) => join(had, &s),
            };
            match joined {
                Some(joined) => shape = Some(joined),
                None => rejected.push(s),
            }
        }
        PreparedSide {
            side,
            decoding,
            shape,
            rejected,
            used: BTreeMap::new(),
            used_bytes: 0,
            too_wide: false,
            decoded: 0,
            failed: BTreeMap::new(),
        }
    }

    /// The typed value of `record` and its weight ([`weight`]), counted as decoded or failed.
    fn value_of(&mut self, record: &Record) -> (Datum, usize) {
        let Some(bytes) = self.side.of(record) else {
            return (Datum::Null, 0);
        };
        let outcome = match self.shape {
            Some(_) => self.decode_one(bytes),
            // Nothing in the file decodes, so it has no typed column: every failure still counts.
            None => Err(match self.decoding.locate(bytes) {
                Err(why) => why,
                Ok(_) if self.too_wide => Failure::Incompatible,
                Ok(_) => Failure::Undecodable,
            }),
        };
        match outcome {
            Ok(decoded) => {
                self.decoded += 1;
                decoded
            }
            Err(why) => {
                *self.failed.entry(why).or_default() += 1;
                (Datum::Null, 0)
            }
        }
    }

    fn spec(&self) -> SideSpec {
        let (schemas, declared) = match &self.decoding {
            SideDecoding::Registry(_) => (self.used.clone(), None),
            SideDecoding::Declared(c) => (BTreeMap::new(), Some(c.text().clone())),
        };
        SideSpec {
            schemas,
            declared,
            decoded: self.decoded,
            failed: self
                .failed
                .iter()
                .map(|(f, n)| (f.as_str().to_string(), *n))
                .collect(),
        }
    }
}

impl PreparedSide {
    /// Decode one key or value within its budget ([`weight_budget`]); its schema joins the
    /// footer's once a value of it decodes.
    fn decode_one(&mut self, bytes: &[u8]) -> Result<(Datum, usize), Failure> {
        let (codec, body) = self.decoding.locate(bytes)?;
        let shape = codec.shape(body).map_err(|_| Failure::Undecodable)?;
        if self.rejected.iter().any(|r| Arc::ptr_eq(r, &shape)) {
            return Err(Failure::Incompatible);
        }
        let id = match &self.decoding {
            SideDecoding::Registry(_) => wire_id(bytes).filter(|id| !self.used.contains_key(id)),
            SideDecoding::Declared(_) => None,
        };
        let text = id.map_or(0, |_| codec.text().footer_size());
        if self.used_bytes.saturating_add(text) > SPEC_TEXT_LIMIT {
            // The footer would hold too many schemas: its columns cannot take this one's values.
            return Err(Failure::Incompatible);
        }
        let decoded = codec
            .decode(body, weight_budget(body.len()))
            .map_err(|_| Failure::Undecodable)?;
        if let Some(id) = id {
            self.used.insert(id, codec.text().clone());
            self.used_bytes += text;
        }
        Ok(decoded)
    }
}

/// The most a footer holds of one side's schema texts (`rewind.decoded`): readers refuse footers
/// beyond a few MiB, and the columns' own metadata needs room too.
pub(crate) const SPEC_TEXT_LIMIT: usize = 1 << 20;

/// The footer bytes one side's typed columns may take over all row groups ([`Prepared::fit_footer`]).
pub(crate) const FOOTER_COLUMNS_LIMIT: usize = 4 << 20;
/// The footer bytes of one leaf column in one row group, about: its path, offsets, encodings and
/// statistics (truncated to 64 bytes each).
const COLUMN_METADATA: usize = 256;

/// The leaf columns of a type.
pub(crate) fn leaves(t: &DataType) -> usize {
    match t {
        DataType::Struct(fs) => fs.iter().map(|f| leaves(f.data_type())).sum(),
        DataType::List(f) => leaves(f.data_type()),
        _ => 1,
    }
}

impl Prepared {
    /// The typed columns' fields, to follow the raw columns in the file's schema.
    pub fn fields(&self) -> Vec<Field> {
        self.sides
            .iter()
            .filter_map(|s| Some(Field::new(s.side.column(), s.shape.clone()?, true)))
            .collect()
    }

    /// Leave out a typed column whose metadata would pass [`FOOTER_COLUMNS_LIMIT`] in a file of
    /// about `row_groups` row groups (each row group describes each leaf column in the footer):
    /// readers refuse a footer of more than 16 MiB. Its records are then `incompatible`.
    pub fn fit_footer(&mut self, row_groups: usize) {
        for side in &mut self.sides {
            let columns = side.shape.as_ref().map_or(0, leaves);
            if columns
                .saturating_mul(row_groups)
                .saturating_mul(COLUMN_METADATA)
                > FOOTER_COLUMNS_LIMIT
            {
                side.shape = None;
                side.too_wide = true;
            }
        }
    }

    /// The typed columns of the first rows of `records` (a batch of the file's records, in
    /// order), and how many rows that is: rows are decoded until their values weigh
    /// [`BATCH_WEIGHT`] together (one at least), so that the batch's decoded values and columns
    /// take bounded memory whatever the records; the caller writes the raw columns of those rows
    /// and hands the others over again. Each value is decoded alone, so what it becomes never
    /// depends on its neighbours. Whatever goes wrong building a column, its values in this batch
    /// are null (and counted), never the file lost.
    pub fn columns(&mut self, records: &[Record]) -> (usize, Vec<ArrayRef>) {
        let mut values: Vec<Vec<Datum>> = self
            .sides
            .iter()
            .map(|_| Vec::with_capacity(records.len()))
            .collect();
        let mut decoded = vec![0u64; self.sides.len()];
        let (mut rows, mut weight) = (0, 0);
        for record in records {
            for ((side, out), decoded) in self.sides.iter_mut().zip(&mut values).zip(&mut decoded) {
                let before = side.decoded;
                let (datum, w) = side.value_of(record);
                *decoded += side.decoded - before;
                weight += w;
                out.push(datum);
            }
            rows += 1;
            if weight >= BATCH_WEIGHT {
                break;
            }
        }
        let columns = self
            .sides
            .iter_mut()
            .zip(values)
            .zip(decoded)
            .filter_map(|((side, values), decoded)| {
                let shape = side.shape.clone()?;
                let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let refs: Vec<&Datum> = values.iter().collect();
                    arrays::build(&shape, &refs)
                }));
                Some(built.unwrap_or_else(|_| {
                    side.decoded -= decoded;
                    *side.failed.entry(Failure::Undecodable).or_default() += decoded;
                    arrow_array::new_null_array(&shape, rows)
                }))
            })
            .collect();
        (rows, columns)
    }

    /// What the footer records, once every batch is encoded.
    pub fn spec(&self) -> Spec {
        let mut spec = Spec::default();
        for s in &self.sides {
            match s.side {
                Side::Key => spec.key = Some(s.spec()),
                Side::Value => spec.value = Some(s.spec()),
            }
        }
        spec
    }

    /// Keys and values not decoded so far, by side and reason.
    pub fn failures(&self) -> Vec<(Side, Failure, u64)> {
        self.sides
            .iter()
            .flat_map(|s| s.failed.iter().map(|(f, n)| (s.side, *f, *n)))
            .collect()
    }

    /// Keys and values decoded so far, by side.
    pub fn decoded(&self) -> Vec<(Side, u64)> {
        self.sides.iter().map(|s| (s.side, s.decoded)).collect()
    }
}

/// [`merge`] within [`COLUMN_BUDGET`] leaf columns: schemas of many columns each could join into
/// a column too wide for a file's footer.
pub fn join(a: &DataType, b: &DataType) -> Option<DataType> {
    merge(a, b).filter(|t| leaves(t) <= COLUMN_BUDGET)
}

/// The type that holds values of both `a` and `b`, if one does: fields either has (the other's
/// rows null in them), and `int` widened to `long`, `float` to `double`. Any other change of a
/// field's type is incompatible.
pub fn merge(a: &DataType, b: &DataType) -> Option<DataType> {
    use DataType::*;
    if a == b {
        return Some(a.clone());
    }
    Some(match (a, b) {
        (Int32, Int64) | (Int64, Int32) => Int64,
        (Float32, Float64) | (Float64, Float32) => Float64,
        (Struct(fa), Struct(fb)) => {
            let mut fields: Vec<Field> = Vec::with_capacity(fa.len().max(fb.len()));
            for f in fa.iter() {
                let t = match fb.find(f.name()) {
                    Some((_, g)) => merge(f.data_type(), g.data_type())?,
                    None => f.data_type().clone(),
                };
                fields.push(Field::new(f.name(), t, true));
            }
            for g in fb.iter().filter(|g| fa.find(g.name()).is_none()) {
                fields.push(Field::new(g.name(), g.data_type().clone(), true));
            }
            Struct(Fields::from(fields))
        }
        (List(ea), List(eb)) => List(Arc::new(element(merge(ea.data_type(), eb.data_type())?))),
        _ => return None,
    })
}

/// The element field of a typed list column.
fn element(t: DataType) -> Field {
    Field::new("element", t, true)
}

/// A struct of nullable fields; `None` without fields (Parquet has no empty groups), and the
/// field then has no column.
fn struct_of(fields: Vec<(String, DataType)>) -> Option<DataType> {
    if fields.is_empty() {
        return None;
    }
    Some(DataType::Struct(Fields::from(
        fields
            .into_iter()
            .map(|(n, t)| Field::new(n, t, true))
            .collect::<Vec<_>>(),
    )))
}

/// Columns (fields, elements) one schema may have: shared types are expanded where they are
/// used, so a small hostile schema could otherwise expand into billions.
pub(crate) const COLUMN_BUDGET: usize = 10_000;

fn spend_column(budget: &mut usize) -> Result<(), String> {
    *budget = budget
        .checked_sub(1)
        .ok_or_else(|| format!("the schema has more than {COLUMN_BUDGET} columns"))?;
    Ok(())
}

/// What one key or value may decode into ([`weight`]): a multiple of its own size (a value of
/// one-byte items weighs 32 bytes an item) and room for a wide schema's defaults, so that a small record cannot decode into a huge tree (proto3
/// defaults, enum names, counts of empty items).
pub(crate) fn weight_budget(bytes: usize) -> usize {
    bytes.saturating_mul(32).saturating_add(256 << 10)
}

/// What the typed values of one batch of rows may weigh together ([`Prepared::columns`]): the
/// decoded trees of a batch are held until its columns are built.
pub(crate) const BATCH_WEIGHT: usize = 64 << 20;

const TOO_LARGE: &str = "the value decodes into far more than its bytes";

/// The memory a decoded value holds, about: each value's own size, each field's name, and the
/// bytes of strings and byte arrays.
pub(crate) fn weight(d: &Datum) -> usize {
    NODE + match d {
        Datum::Str(s) => s.len(),
        Datum::Bytes(b) => b.len(),
        Datum::List(xs) => xs.iter().map(weight).sum(),
        Datum::Record(fs) => fs.iter().map(|(n, v)| FIELD + n.len() + weight(v)).sum(),
        _ => 0,
    }
}

/// The weight of a value without its heap ([`weight`]).
pub(crate) const NODE: usize = std::mem::size_of::<Datum>();
/// The weight of a field beside its value and name ([`weight`]).
pub(crate) const FIELD: usize = std::mem::size_of::<String>();

/// What a value being decoded may still weigh ([`weight`]): each decoder spends it as it builds
/// (never more than the value will weigh), so that it stops long before a hostile value is whole.
pub(crate) struct Budget(usize);

impl Budget {
    pub(crate) fn spend(&mut self, weight: usize) -> Result<(), String> {
        self.0 = self.0.checked_sub(weight).ok_or(TOO_LARGE)?;
        Ok(())
    }

    /// Refuse what could not fit, spending nothing.
    pub(crate) fn check(&self, weight: usize) -> Result<(), String> {
        if weight > self.0 {
            return Err(TOO_LARGE.into());
        }
        Ok(())
    }

    /// Spend what the fields named `names` weigh beside their values (the record's own value is
    /// spent apart).
    pub(crate) fn spend_fields<'a>(
        &mut self,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), String> {
        let names: usize = names.into_iter().map(|n| FIELD + n.len()).sum();
        self.spend(names)
    }
}

/// A map as a column: a list of key and value structs.
fn map_of(key: DataType, value: DataType) -> DataType {
    DataType::List(Arc::new(element(DataType::Struct(Fields::from(vec![
        Field::new("key", key, true),
        Field::new("value", value, true),
    ])))))
}

/// A map's entries as data, in key order so that a value decodes the same way every time.
fn map_datum(mut entries: Vec<(String, Datum)>) -> Datum {
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    Datum::List(
        entries
            .into_iter()
            .map(|(k, v)| Datum::Record(vec![("key".into(), Datum::Str(k)), ("value".into(), v)]))
            .collect(),
    )
}

/// Why a file of `merged` would hold fewer typed values than its `parts` (`None`: it would not):
/// on a side, fewer decoded or more that could not join the columns (a field changed type between
/// the parts). Other failures belong to the bytes, or shrink with more schemas.
pub fn lost_in_merge(parts: &[Spec], merged: &Spec) -> Option<String> {
    for side in [Side::Key, Side::Value] {
        let before: u64 = parts
            .iter()
            .filter_map(|p| p.side(side))
            .map(|s| s.decoded)
            .sum();
        let after = merged.side(side).map_or(0, |s| s.decoded);
        if after < before {
            return Some(format!(
                "{after} {}s would decode where the files decoded {before}",
                side.as_str()
            ));
        }
    }
    let incompatible = |s: &Spec| s.failed(Failure::Incompatible);
    let before: u64 = parts.iter().map(incompatible).sum();
    let after = incompatible(merged);
    (after > before)
        .then(|| format!("{after} records could not join the columns ({before} before)"))
}

/// Parse the footer's `rewind.decoded`.
pub fn spec_from_footer(kv: &HashMap<String, String>) -> Result<Option<Spec>, String> {
    kv.get(FOOTER_KEY)
        .map(|s| serde_json::from_str(s).map_err(|e| format!("footer {FOOTER_KEY}: {e}")))
        .transpose()
}

#[cfg(test)]
mod tests;

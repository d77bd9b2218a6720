//! Protobuf schemas (`.proto` source, as a registry serves them) as typed columns. The wire format
//! names the message after the schema id: a zigzag varint count of message indexes, then the
//! indexes (a single `0` byte for the file's first message). Messages are structs of their fields
//! in field order, repeated fields lists, maps lists of `key`/`value` structs in key order, enums
//! their value's name, `uint32`/`uint64` longs (a `uint64` past the long's range is null),
//! `google.protobuf.Timestamp` a timestamp and the wrapper types their value. A field without
//! presence (a proto3 scalar) that is not set has its default value; one with presence is null. A
//! message within itself (a recursive type, a tree) and a message without fields have no column
//! there.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arrow_schema::{DataType, TimeUnit};
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor,
    ReflectMessage, Value,
};
use protox::file::{File, FileResolver, GoogleFileResolver};

use super::{
    element, map_datum, map_of, struct_of, Budget, Datum, SchemaText, FIELD, MAX_DEPTH, NODE,
};

/// The name the main schema gets among its references.
const MAIN: &str = "__rewind_main.proto";

pub struct ProtoCodec {
    pub(super) pool: DescriptorPool,
    /// The column type of each message used so far, by its indexes.
    shapes: Mutex<HashMap<Vec<i64>, Arc<DataType>>>,
}

/// The schema and its references, by name, then Google's well-known types.
struct Sources {
    files: HashMap<String, String>,
    google: GoogleFileResolver,
}

impl FileResolver for Sources {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        match self.files.get(name) {
            Some(source) => File::from_source(name, source),
            None => self.google.open_file(name),
        }
    }
}

impl ProtoCodec {
    pub fn parse(text: &SchemaText) -> Result<ProtoCodec, String> {
        let mut files: HashMap<String, String> = text
            .references
            .iter()
            .map(|r| (r.name.clone(), r.schema.clone()))
            .collect();
        files.insert(MAIN.into(), text.schema.clone());
        let mut compiler = protox::Compiler::with_file_resolver(Sources {
            files,
            google: GoogleFileResolver::new(),
        });
        compiler
            .open_file(MAIN)
            .map_err(|e| format!("not a Protobuf schema: {e}"))?;
        let codec = ProtoCodec {
            pool: compiler.descriptor_pool(),
            shapes: Mutex::new(HashMap::new()),
        };
        // A schema whose first message has no column is refused as a whole.
        codec.shape(&[0])?;
        Ok(codec)
    }

    /// The message `indexes` name: the file's top-level messages, then nested ones, numbered as
    /// the compiled descriptor has them, map entry types included, as Confluent's serializers
    /// number them by default (their `normalize` option skips map entries; not followed here).
    fn message(&self, indexes: &[i64]) -> Result<MessageDescriptor, String> {
        let file = self
            .pool
            .get_file_by_name(MAIN)
            .ok_or("the schema's file is missing")?;
        let (first, rest) = indexes.split_first().ok_or("no message index")?;
        let mut message = usize::try_from(*first)
            .ok()
            .and_then(|i| file.messages().nth(i))
            .ok_or_else(|| format!("the schema has no message {first}"))?;
        for i in rest {
            message = usize::try_from(*i)
                .ok()
                .and_then(|i| message.child_messages().nth(i))
                .ok_or_else(|| format!("message {} has no nested message {i}", message.name()))?;
        }
        Ok(message)
    }

    /// The column type of `body`'s message, and the message's own bytes.
    pub fn shape<'a>(&self, body: &'a [u8]) -> Result<(Arc<DataType>, &'a [u8]), String> {
        let (indexes, rest) = message_indexes(body)?;
        let mut shapes = self.shapes.lock().expect("shape cache");
        if let Some(s) = shapes.get(&indexes) {
            return Ok((s.clone(), rest));
        }
        let message = self.message(&indexes)?;
        let shape = message_shape(&message, &[], &mut super::COLUMN_BUDGET.clone())?
            .ok_or_else(|| format!("message {} has no column", message.full_name()))?;
        let shape = Arc::new(shape);
        shapes.insert(indexes, shape.clone());
        Ok((shape, rest))
    }

    pub fn decode(&self, body: &[u8], budget: &mut Budget) -> Result<Datum, String> {
        let (indexes, rest) = message_indexes(body)?;
        let message = self.message(&indexes)?;
        let decoded = DynamicMessage::decode(message, rest).map_err(|e| e.to_string())?;
        message_datum(&decoded, &[], budget)
    }
}

/// The message indexes at the front of a body, and the message after them.
fn message_indexes(body: &[u8]) -> Result<(Vec<i64>, &[u8]), String> {
    let mut buf = body;
    let mut next = || -> Result<i64, String> {
        let v = prost::encoding::decode_varint(&mut buf).map_err(|e| e.to_string())?;
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    };
    let count = next()?;
    let indexes = match count {
        0 => vec![0],
        n if (1..=64).contains(&n) => (0..n).map(|_| next()).collect::<Result<_, _>>()?,
        n => return Err(format!("{n} message indexes")),
    };
    Ok((indexes, buf))
}

/// The column type of a message; `None` when it has none (no fields, or a message within itself,
/// a tree, whose nested copies are not typed).
fn message_shape(
    message: &MessageDescriptor,
    anc: &[String],
    budget: &mut usize,
) -> Result<Option<DataType>, String> {
    super::spend_column(budget)?;
    if let Some(t) = well_known(message, anc, budget)? {
        return Ok(t);
    }
    if anc.iter().any(|a| a == message.full_name()) || anc.len() > MAX_DEPTH {
        return Ok(None);
    }
    let anc = within(anc, message.full_name());
    let mut fields = Vec::new();
    for f in message.fields() {
        if let Some(t) = field_shape(&f, &anc, budget)? {
            fields.push((f.name().to_string(), t));
        }
    }
    Ok(struct_of(fields))
}

/// The ancestors of a message's fields: `anc` and the message.
fn within(anc: &[String], name: &str) -> Vec<String> {
    let mut out = anc.to_vec();
    out.push(name.to_string());
    out
}

/// The wrapper types, each a message of one field 1 that stands for a nullable value.
const WRAPPERS: [&str; 9] = [
    "google.protobuf.DoubleValue",
    "google.protobuf.FloatValue",
    "google.protobuf.Int64Value",
    "google.protobuf.UInt64Value",
    "google.protobuf.Int32Value",
    "google.protobuf.UInt32Value",
    "google.protobuf.BoolValue",
    "google.protobuf.StringValue",
    "google.protobuf.BytesValue",
];

/// Timestamps and wrappers as what they stand for (the outer `None`: not one of them).
fn well_known(
    message: &MessageDescriptor,
    anc: &[String],
    budget: &mut usize,
) -> Result<Option<Option<DataType>>, String> {
    Ok(match message.full_name() {
        "google.protobuf.Timestamp" => Some(Some(DataType::Timestamp(
            TimeUnit::Microsecond,
            Some("UTC".into()),
        ))),
        name if WRAPPERS.contains(&name) => {
            let value = message.get_field(1).ok_or("a wrapper without its value")?;
            Some(kind_shape(&value.kind(), anc, budget)?)
        }
        _ => None,
    })
}

fn field_shape(
    field: &FieldDescriptor,
    anc: &[String],
    budget: &mut usize,
) -> Result<Option<DataType>, String> {
    if field.is_map() {
        let Kind::Message(entry) = field.kind() else {
            return Err("a map field without its entry".into());
        };
        let key = kind_shape(&entry.map_entry_key_field().kind(), anc, budget)?;
        let value = kind_shape(&entry.map_entry_value_field().kind(), anc, budget)?;
        return Ok(key.zip(value).map(|(k, v)| map_of(k, v)));
    }
    let Some(t) = kind_shape(&field.kind(), anc, budget)? else {
        return Ok(None);
    };
    Ok(Some(if field.is_list() {
        DataType::List(Arc::new(element(t)))
    } else {
        t
    }))
}

fn kind_shape(kind: &Kind, anc: &[String], budget: &mut usize) -> Result<Option<DataType>, String> {
    Ok(Some(match kind {
        Kind::Double => DataType::Float64,
        Kind::Float => DataType::Float32,
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => DataType::Int32,
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 | Kind::Uint32 | Kind::Fixed32 => {
            DataType::Int64
        }
        Kind::Uint64 | Kind::Fixed64 => DataType::Int64,
        Kind::Bool => DataType::Boolean,
        Kind::String | Kind::Enum(_) => DataType::Utf8,
        Kind::Bytes => DataType::Binary,
        Kind::Message(m) => return message_shape(m, anc, budget),
    }))
}

/// A decoded message as data; every value is spent from `budget` as it is built, since a few
/// bytes of repeated empty messages become a record of every field each (proto3 defaults).
fn message_datum(
    message: &DynamicMessage,
    anc: &[String],
    budget: &mut Budget,
) -> Result<Datum, String> {
    budget.spend(NODE)?;
    let descriptor = message.descriptor();
    match descriptor.full_name() {
        "google.protobuf.Timestamp" => {
            let get = |n: u32| {
                descriptor
                    .get_field(n)
                    .map(|f| message.get_field(&f).into_owned())
            };
            let seconds = match get(1) {
                Some(Value::I64(s)) => s,
                _ => 0,
            };
            let nanos = match get(2) {
                Some(Value::I32(n)) => n,
                _ => 0,
            };
            return Ok(seconds
                .checked_mul(1_000_000)
                .and_then(|us| us.checked_add(i64::from(nanos) / 1000))
                .map_or(Datum::Null, Datum::Int));
        }
        name if WRAPPERS.contains(&name) => {
            if let Some(f) = descriptor.get_field(1) {
                return value_datum(&f.kind(), &message.get_field(&f), anc, budget);
            }
        }
        _ => {}
    }
    if anc.iter().any(|a| a == descriptor.full_name()) || anc.len() > MAX_DEPTH {
        // Not typed (see `message_shape`).
        return Ok(Datum::Null);
    }
    let anc = within(anc, descriptor.full_name());
    let fields: Vec<FieldDescriptor> = descriptor.fields().collect();
    budget.spend_fields(fields.iter().map(|f| f.name()))?;
    let mut out = Vec::with_capacity(fields.len());
    for f in fields {
        let v = if f.supports_presence() && !message.has_field(&f) {
            budget.spend(NODE)?;
            Datum::Null
        } else {
            field_datum(&f, &message.get_field(&f), &anc, budget)?
        };
        out.push((f.name().to_string(), v));
    }
    Ok(Datum::Record(out))
}

fn field_datum(
    field: &FieldDescriptor,
    value: &Value,
    anc: &[String],
    budget: &mut Budget,
) -> Result<Datum, String> {
    match value {
        Value::Map(entries) => {
            let value_kind = match field.kind() {
                Kind::Message(entry) => entry.map_entry_value_field().kind(),
                other => other,
            };
            budget.spend(NODE)?;
            let mut keyed: Vec<(MapKey, Datum)> = Vec::with_capacity(entries.len());
            for (k, v) in entries {
                // An entry is a record of a key and a value.
                budget.spend(2 * NODE + 2 * FIELD + "keyvalue".len())?;
                keyed.push((k.clone(), value_datum(&value_kind, v, anc, budget)?));
            }
            keyed.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(Datum::List(
                keyed
                    .into_iter()
                    .map(|(k, v)| {
                        Datum::Record(vec![("key".into(), key_datum(&k)), ("value".into(), v)])
                    })
                    .collect(),
            ))
        }
        Value::List(items) => {
            budget.spend(NODE)?;
            budget.check(items.len().saturating_mul(NODE))?;
            Ok(Datum::List(
                items
                    .iter()
                    .map(|v| value_datum(&field.kind(), v, anc, budget))
                    .collect::<Result<_, _>>()?,
            ))
        }
        other => value_datum(&field.kind(), other, anc, budget),
    }
}

fn key_datum(key: &MapKey) -> Datum {
    match key {
        MapKey::Bool(b) => Datum::Bool(*b),
        MapKey::I32(i) => Datum::Int((*i).into()),
        MapKey::I64(i) => Datum::Int(*i),
        MapKey::U32(i) => Datum::Int((*i).into()),
        MapKey::U64(i) => i64::try_from(*i).map_or(Datum::Null, Datum::Int),
        MapKey::String(s) => Datum::Str(s.clone()),
    }
}

fn value_datum(
    kind: &Kind,
    value: &Value,
    anc: &[String],
    budget: &mut Budget,
) -> Result<Datum, String> {
    if let Value::Message(m) = value {
        return message_datum(m, anc, budget);
    }
    budget.spend(NODE)?;
    Ok(match value {
        Value::Bool(b) => Datum::Bool(*b),
        Value::I32(i) => Datum::Int((*i).into()),
        Value::I64(i) => Datum::Int(*i),
        Value::U32(i) => Datum::Int((*i).into()),
        Value::U64(i) => i64::try_from(*i).map_or(Datum::Null, Datum::Int),
        Value::F32(f) => Datum::Float((*f).into()),
        Value::F64(f) => Datum::Float(*f),
        Value::String(s) => {
            budget.spend(s.len())?;
            Datum::Str(s.clone())
        }
        Value::Bytes(b) => {
            budget.spend(b.len())?;
            Datum::Bytes(b.to_vec())
        }
        Value::EnumNumber(n) => {
            let name = match kind {
                Kind::Enum(e) => e.get_value(*n).map(|v| v.name().to_string()),
                _ => None,
            };
            let name = name.unwrap_or_else(|| n.to_string());
            budget.spend(name.len())?;
            Datum::Str(name)
        }
        // Handled above.
        Value::Message(m) => return message_datum(m, anc, budget),
        Value::List(items) => {
            budget.check(items.len().saturating_mul(NODE))?;
            Datum::List(
                items
                    .iter()
                    .map(|v| value_datum(kind, v, anc, budget))
                    .collect::<Result<_, _>>()?,
            )
        }
        Value::Map(entries) => {
            let mut out = Vec::with_capacity(entries.len());
            for (k, v) in entries {
                budget.spend(2 * NODE + 2 * FIELD + "keyvalue".len())?;
                out.push((format!("{k:?}"), value_datum(kind, v, anc, budget)?));
            }
            map_datum(out)
        }
    })
}

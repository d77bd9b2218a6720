//! Avro schemas as typed columns. Records are structs; `["null", T]` is a nullable `T`, and other
//! unions a struct with one field per branch (named by the branch's type), only the one present
//! set; maps are lists of `key`/`value` structs in key order; enums are strings; fixed and
//! duration bytes; decimals `decimal(p, s)` (strings past 38 digits); dates, times and timestamps
//! keep their logical type (nanoseconds are cut to microseconds).

use std::collections::HashMap;
use std::sync::Arc;

use apache_avro::schema::{Name, Schema, UnionSchema};
use apache_avro::types::Value;
use arrow_schema::{DataType, TimeUnit};

use super::{map_datum, map_of, struct_of, Datum, SchemaText, MAX_DEPTH};

pub struct AvroCodec {
    schema: Schema,
    /// The schemas the main one references (and their named types).
    references: Vec<Schema>,
    names: HashMap<String, Schema>,
    shape: Arc<DataType>,
}

fn utc() -> Option<Arc<str>> {
    Some("UTC".into())
}

impl AvroCodec {
    pub fn parse(text: &SchemaText) -> Result<AvroCodec, String> {
        let (schema, references) = if text.references.is_empty() {
            (Schema::parse_str(&text.schema), Vec::new())
        } else {
            let list: Vec<&str> = text.references.iter().map(|r| r.schema.as_str()).collect();
            match Schema::parse_str_with_list(&text.schema, list) {
                Ok((s, refs)) => (Ok(s), refs),
                Err(e) => (Err(e), Vec::new()),
            }
        };
        let schema = schema.map_err(|e| format!("not an Avro schema: {e}"))?;
        let mut names = HashMap::new();
        for s in references.iter().chain(std::iter::once(&schema)) {
            collect_names(s, &mut names, 0);
        }
        let shape = shape_of(&schema, &names, 0)?
            .ok_or_else(|| "an Avro schema of null has no column".to_string())?;
        Ok(AvroCodec {
            schema,
            references,
            names,
            shape: Arc::new(shape),
        })
    }

    pub fn shape(&self) -> Result<Arc<DataType>, String> {
        Ok(self.shape.clone())
    }

    pub fn decode(&self, mut body: &[u8]) -> Result<Datum, String> {
        let value = if self.references.is_empty() {
            apache_avro::from_avro_datum(&self.schema, &mut body, None)
        } else {
            apache_avro::from_avro_datum_schemata(
                &self.schema,
                self.references.iter().collect(),
                &mut body,
                None,
            )
        }
        .map_err(|e| e.to_string())?;
        datum(&self.schema, value, &self.names, 0)
    }
}

fn full(name: &Name) -> String {
    name.fullname(None)
}

fn collect_names(schema: &Schema, names: &mut HashMap<String, Schema>, depth: usize) {
    if depth > MAX_DEPTH {
        return;
    }
    match schema {
        Schema::Record(r) => {
            names.insert(full(&r.name), schema.clone());
            for f in &r.fields {
                collect_names(&f.schema, names, depth + 1);
            }
        }
        Schema::Enum(e) => {
            names.insert(full(&e.name), schema.clone());
        }
        Schema::Fixed(f) => {
            names.insert(full(&f.name), schema.clone());
        }
        Schema::Array(a) => collect_names(&a.items, names, depth + 1),
        Schema::Map(m) => collect_names(&m.types, names, depth + 1),
        Schema::Union(u) => {
            for v in u.variants() {
                collect_names(v, names, depth + 1);
            }
        }
        _ => {}
    }
}

fn resolve<'a>(
    schema: &'a Schema,
    names: &'a HashMap<String, Schema>,
) -> Result<&'a Schema, String> {
    match schema {
        Schema::Ref { name } => names
            .get(&full(name))
            .ok_or_else(|| format!("the Avro type {} is not defined", full(name))),
        other => Ok(other),
    }
}

/// The branches of a union that hold a value.
fn branches(u: &UnionSchema) -> Vec<(usize, &Schema)> {
    u.variants()
        .iter()
        .enumerate()
        .filter(|(_, s)| !matches!(s, Schema::Null))
        .collect()
}

/// The field name of a union's branch: its type's name.
fn branch_name(s: &Schema) -> String {
    match s {
        Schema::Record(r) => r.name.name.clone(),
        Schema::Enum(e) => e.name.name.clone(),
        Schema::Fixed(f) => f.name.name.clone(),
        Schema::Ref { name } => name.name.clone(),
        other => format!("{:?}", apache_avro::schema::SchemaKind::from(other)).to_lowercase(),
    }
}

/// The column type of `schema`; `None` for null, which has no column.
fn shape_of(
    schema: &Schema,
    names: &HashMap<String, Schema>,
    depth: usize,
) -> Result<Option<DataType>, String> {
    if depth > MAX_DEPTH {
        return Err("the Avro schema nests too deep (a recursive type?)".into());
    }
    let t = match resolve(schema, names)? {
        Schema::Null => return Ok(None),
        Schema::Boolean => DataType::Boolean,
        Schema::Int => DataType::Int32,
        Schema::Long => DataType::Int64,
        Schema::Float => DataType::Float32,
        Schema::Double => DataType::Float64,
        Schema::Bytes | Schema::Fixed(_) | Schema::Duration => DataType::Binary,
        Schema::String | Schema::Enum(_) | Schema::Uuid | Schema::BigDecimal => DataType::Utf8,
        Schema::Decimal(d) if d.precision <= 38 => {
            DataType::Decimal128(d.precision as u8, d.scale as i8)
        }
        Schema::Decimal(_) => DataType::Utf8,
        Schema::Date => DataType::Date32,
        Schema::TimeMillis | Schema::TimeMicros => DataType::Time64(TimeUnit::Microsecond),
        Schema::TimestampMillis => DataType::Timestamp(TimeUnit::Millisecond, utc()),
        Schema::TimestampMicros | Schema::TimestampNanos => {
            DataType::Timestamp(TimeUnit::Microsecond, utc())
        }
        Schema::LocalTimestampMillis => DataType::Timestamp(TimeUnit::Millisecond, None),
        Schema::LocalTimestampMicros | Schema::LocalTimestampNanos => {
            DataType::Timestamp(TimeUnit::Microsecond, None)
        }
        Schema::Array(a) => match shape_of(&a.items, names, depth + 1)? {
            Some(t) => DataType::List(Arc::new(super::element(t))),
            None => return Ok(None),
        },
        Schema::Map(m) => match shape_of(&m.types, names, depth + 1)? {
            Some(t) => map_of(DataType::Utf8, t),
            None => return Ok(None),
        },
        Schema::Union(u) => {
            let present = branches(u);
            match present.as_slice() {
                [] => return Ok(None),
                [(_, one)] => return shape_of(one, names, depth + 1),
                many => {
                    let mut fields = Vec::new();
                    for (_, s) in many {
                        if let Some(t) = shape_of(s, names, depth + 1)? {
                            fields.push((branch_name(s), t));
                        }
                    }
                    struct_of(fields)?
                }
            }
        }
        Schema::Record(r) => {
            let mut fields = Vec::new();
            for f in &r.fields {
                if let Some(t) = shape_of(&f.schema, names, depth + 1)? {
                    fields.push((f.name.clone(), t));
                }
            }
            struct_of(fields)?
        }
        Schema::Ref { .. } => return Err("an Avro reference to a reference".into()),
    };
    Ok(Some(t))
}

/// `value` (of `schema`) as data of [`shape_of`]'s type.
fn datum(
    schema: &Schema,
    value: Value,
    names: &HashMap<String, Schema>,
    depth: usize,
) -> Result<Datum, String> {
    if depth > MAX_DEPTH {
        return Err("the value nests too deep".into());
    }
    let schema = resolve(schema, names)?;
    Ok(match (schema, value) {
        (_, Value::Null) => Datum::Null,
        (Schema::Union(u), Value::Union(i, v)) => {
            let present = branches(u);
            let branch = &u.variants()[(i as usize).min(u.variants().len() - 1)];
            if present.len() == 1 {
                datum(branch, *v, names, depth + 1)?
            } else {
                let inner = datum(branch, *v, names, depth + 1)?;
                Datum::Record(vec![(branch_name(branch), inner)])
            }
        }
        (Schema::Record(r), Value::Record(fields)) => {
            let mut out = Vec::with_capacity(fields.len());
            for ((name, v), f) in fields.into_iter().zip(&r.fields) {
                out.push((name, datum(&f.schema, v, names, depth + 1)?));
            }
            Datum::Record(out)
        }
        (Schema::Array(a), Value::Array(items)) => Datum::List(
            items
                .into_iter()
                .map(|v| datum(&a.items, v, names, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        (Schema::Map(m), Value::Map(entries)) => map_datum(
            entries
                .into_iter()
                .map(|(k, v)| Ok((k, datum(&m.types, v, names, depth + 1)?)))
                .collect::<Result<_, String>>()?,
        ),
        (Schema::Decimal(d), Value::Decimal(v)) => {
            let bytes = <Vec<u8>>::try_from(&v).map_err(|e| e.to_string())?;
            let unscaled = twos_complement(&bytes).ok_or("a decimal of more than 16 bytes")?;
            if d.precision <= 38 {
                Datum::Decimal(unscaled)
            } else {
                Datum::Str(scaled(unscaled, d.scale))
            }
        }
        (_, v) => scalar(v)?,
    })
}

fn scalar(value: Value) -> Result<Datum, String> {
    Ok(match value {
        Value::Null => Datum::Null,
        Value::Boolean(b) => Datum::Bool(b),
        Value::Int(i) | Value::Date(i) => Datum::Int(i.into()),
        Value::TimeMillis(i) => Datum::Int(i64::from(i) * 1000),
        Value::Long(i)
        | Value::TimeMicros(i)
        | Value::TimestampMillis(i)
        | Value::TimestampMicros(i)
        | Value::LocalTimestampMillis(i)
        | Value::LocalTimestampMicros(i) => Datum::Int(i),
        Value::TimestampNanos(i) | Value::LocalTimestampNanos(i) => Datum::Int(i.div_euclid(1000)),
        Value::Float(f) => Datum::Float(f.into()),
        Value::Double(f) => Datum::Float(f),
        Value::Bytes(b) | Value::Fixed(_, b) => Datum::Bytes(b),
        Value::String(s) | Value::Enum(_, s) => Datum::Str(s),
        Value::Uuid(u) => Datum::Str(u.to_string()),
        Value::BigDecimal(d) => Datum::Str(d.to_string()),
        Value::Duration(d) => Datum::Bytes(<[u8; 12]>::from(d).to_vec()),
        other => return Err(format!("an Avro value of an unexpected kind: {other:?}")),
    })
}

/// A big-endian two's-complement integer of at most 16 bytes.
fn twos_complement(bytes: &[u8]) -> Option<i128> {
    if bytes.len() > 16 {
        return None;
    }
    let fill = if bytes.first().is_some_and(|b| b & 0x80 != 0) {
        0xff
    } else {
        0
    };
    let mut full = [fill; 16];
    full[16 - bytes.len()..].copy_from_slice(bytes);
    Some(i128::from_be_bytes(full))
}

/// An unscaled decimal as text with `scale` digits after the point.
fn scaled(unscaled: i128, scale: usize) -> String {
    let digits = unscaled.unsigned_abs().to_string();
    let sign = if unscaled < 0 { "-" } else { "" };
    if scale == 0 {
        return format!("{sign}{digits}");
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{sign}{int}.{frac}")
}

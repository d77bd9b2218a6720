//! Avro schemas as typed columns. Records are structs; `["null", T]` is a nullable `T`, and other
//! unions a struct with one field per branch (named by the branch type's full name, dots as `_`),
//! only the one present set; maps are lists of `key`/`value` structs in key order; enums are
//! strings; fixed, duration and big-decimal bytes; decimals `decimal(p, s)` (strings past 38
//! digits; a value with more digits than its precision does not decode); dates, times and
//! timestamps keep their logical type (nanoseconds are cut to microseconds). A record without
//! fields (or only null ones) has no column.
//!
//! Values are read by Rewind's own Avro binary reader: no length or count in the bytes can make
//! it allocate more than the bytes hold, and bytes left after the value make it fail.

use std::collections::HashMap;
use std::sync::Arc;

use apache_avro::schema::{Name, Schema, UnionSchema};
use arrow_schema::{DataType, TimeUnit};

use super::{map_datum, map_of, struct_of, Budget, Datum, SchemaText, FIELD, MAX_DEPTH, NODE};

pub struct AvroCodec {
    schema: Schema,
    /// Every named type, the referenced schemas' too.
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
        let shape = shape_of(&schema, &names, 0, &mut super::COLUMN_BUDGET.clone())?
            .ok_or_else(|| "an Avro schema of null has no column".to_string())?;
        Ok(AvroCodec {
            schema,
            names,
            shape: Arc::new(shape),
        })
    }

    pub fn shape(&self) -> Result<Arc<DataType>, String> {
        Ok(self.shape.clone())
    }

    /// Decode `body`: every byte must belong to the value, and no length it states may claim more
    /// than the bytes left (Rewind's own reader, so that hostile counts allocate nothing).
    pub fn decode(&self, body: &[u8], budget: &mut Budget) -> Result<Datum, String> {
        let mut reader = Reader {
            buf: body,
            budget,
            names: &self.names,
        };
        let value = reader.read(&self.schema, 0)?;
        if !reader.buf.is_empty() {
            return Err(format!(
                "{} bytes follow the value (not this schema's)",
                reader.buf.len()
            ));
        }
        Ok(value)
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

/// The field name of union `u`'s branch `i`: its type's full name (dots as `_`), followed by `_`
/// and its index where another branch's name reads the same (`a.b_c` and `a_b.c`).
fn branch_name(u: &UnionSchema, i: usize) -> String {
    let variants = u.variants();
    let base = type_name(&variants[i]);
    let clash = variants
        .iter()
        .enumerate()
        .any(|(j, s)| j != i && !matches!(s, Schema::Null) && type_name(s) == base);
    if clash {
        format!("{base}_{i}")
    } else {
        base
    }
}

fn type_name(s: &Schema) -> String {
    let named = |n: &Name| full(n).replace('.', "_");
    match s {
        Schema::Record(r) => named(&r.name),
        Schema::Enum(e) => named(&e.name),
        Schema::Fixed(f) => named(&f.name),
        Schema::Ref { name } => named(name),
        other => format!("{:?}", apache_avro::schema::SchemaKind::from(other)).to_lowercase(),
    }
}

/// The column type of `schema`; `None` for null, which has no column.
fn shape_of(
    schema: &Schema,
    names: &HashMap<String, Schema>,
    depth: usize,
    budget: &mut usize,
) -> Result<Option<DataType>, String> {
    if depth > MAX_DEPTH {
        return Err("the Avro schema nests too deep (a recursive type?)".into());
    }
    super::spend_column(budget)?;
    let t = match resolve(schema, names)? {
        Schema::Null => return Ok(None),
        Schema::Boolean => DataType::Boolean,
        Schema::Int => DataType::Int32,
        Schema::Long => DataType::Int64,
        Schema::Float => DataType::Float32,
        Schema::Double => DataType::Float64,
        Schema::Bytes | Schema::Fixed(_) | Schema::Duration => DataType::Binary,
        Schema::String | Schema::Enum(_) | Schema::Uuid => DataType::Utf8,
        Schema::BigDecimal => DataType::Binary,
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
        Schema::Array(a) => match shape_of(&a.items, names, depth + 1, budget)? {
            Some(t) => DataType::List(Arc::new(super::element(t))),
            None => return Ok(None),
        },
        Schema::Map(m) => match shape_of(&m.types, names, depth + 1, budget)? {
            Some(t) => map_of(DataType::Utf8, t),
            None => return Ok(None),
        },
        Schema::Union(u) => {
            let present = branches(u);
            match present.as_slice() {
                [] => return Ok(None),
                [(_, one)] => return shape_of(one, names, depth + 1, budget),
                many => {
                    let mut fields = Vec::new();
                    for (i, s) in many {
                        if let Some(t) = shape_of(s, names, depth + 1, budget)? {
                            fields.push((branch_name(u, *i), t));
                        }
                    }
                    match struct_of(fields) {
                        Some(t) => t,
                        None => return Ok(None),
                    }
                }
            }
        }
        Schema::Record(r) => {
            let mut fields = Vec::new();
            for f in &r.fields {
                if let Some(t) = shape_of(&f.schema, names, depth + 1, budget)? {
                    fields.push((f.name.clone(), t));
                }
            }
            match struct_of(fields) {
                Some(t) => t,
                None => return Ok(None),
            }
        }
        Schema::Ref { .. } => return Err("an Avro reference to a reference".into()),
    };
    Ok(Some(t))
}

/// Avro binary decoding straight into data of [`shape_of`]'s type.
struct Reader<'a> {
    buf: &'a [u8],
    /// What this value may still weigh ([`super::weight`]).
    budget: &'a mut Budget,
    names: &'a HashMap<String, Schema>,
}

impl Reader<'_> {
    fn spend(&mut self, weight: usize) -> Result<(), String> {
        self.budget.spend(weight)
    }

    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        if n > self.buf.len() {
            return Err(format!("{n} bytes claimed, {} left", self.buf.len()));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn long(&mut self) -> Result<i64, String> {
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = *self.take(1)?.first().expect("one byte");
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok((value >> 1) as i64 ^ -((value & 1) as i64));
            }
        }
        Err("a varint longer than 10 bytes".into())
    }

    fn int(&mut self) -> Result<i64, String> {
        let v = self.long()?;
        i32::try_from(v).map_err(|_| format!("an int out of range: {v}"))?;
        Ok(v)
    }

    fn length(&mut self) -> Result<usize, String> {
        let n = self.long()?;
        usize::try_from(n).map_err(|_| format!("a negative length: {n}"))
    }

    fn bytes(&mut self) -> Result<Vec<u8>, String> {
        let n = self.length()?;
        self.spend(n)?;
        Ok(self.take(n)?.to_vec())
    }

    fn string(&mut self) -> Result<String, String> {
        String::from_utf8(self.bytes()?).map_err(|_| "a string that is not UTF-8".to_string())
    }

    /// The items of an array or map, block by block; `item` reads one.
    fn blocks(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<Datum, String>,
    ) -> Result<Vec<Datum>, String> {
        let mut out = Vec::new();
        loop {
            let count = self.long()?;
            if count == 0 {
                return Ok(out);
            }
            if count < 0 {
                // A block of -count items, preceded by its size in bytes.
                self.length()?;
            }
            let count = usize::try_from(count.unsigned_abs()).map_err(|_| "a block too large")?;
            // Every item weighs something, even one of no bytes (nulls), so counts cannot run
            // away: a block whose items could not all fit is refused before any is read.
            self.budget.check(count.saturating_mul(NODE))?;
            out.reserve(count.min(self.buf.len() + 1));
            for _ in 0..count {
                out.push(item(self)?);
            }
        }
    }

    fn read(&mut self, schema: &Schema, depth: usize) -> Result<Datum, String> {
        if depth > MAX_DEPTH {
            return Err("the value nests too deep".into());
        }
        let schema = resolve(schema, self.names)?;
        if !matches!(schema, Schema::Union(_)) {
            // A union weighs as its branch (or a field holding it).
            self.spend(NODE)?;
        }
        Ok(match schema {
            Schema::Null => Datum::Null,
            Schema::Boolean => match self.take(1)?[0] {
                0 => Datum::Bool(false),
                1 => Datum::Bool(true),
                b => return Err(format!("a boolean byte of {b}")),
            },
            Schema::Int | Schema::Date => Datum::Int(self.int()?),
            Schema::TimeMillis => Datum::Int(self.int()? * 1000),
            Schema::Long
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros => Datum::Int(self.long()?),
            Schema::TimestampNanos | Schema::LocalTimestampNanos => {
                Datum::Int(self.long()?.div_euclid(1000))
            }
            Schema::Float => {
                let b = self.take(4)?;
                Datum::Float(f32::from_le_bytes([b[0], b[1], b[2], b[3]]).into())
            }
            Schema::Double => {
                let b: [u8; 8] = self.take(8)?.try_into().expect("eight bytes");
                Datum::Float(f64::from_le_bytes(b))
            }
            Schema::Bytes | Schema::BigDecimal => Datum::Bytes(self.bytes()?),
            Schema::String | Schema::Uuid => Datum::Str(self.string()?),
            Schema::Fixed(f) => {
                self.spend(f.size)?;
                Datum::Bytes(self.take(f.size)?.to_vec())
            }
            Schema::Duration => Datum::Bytes(self.take(12)?.to_vec()),
            Schema::Enum(e) => {
                let i = self.int()?;
                let symbol = usize::try_from(i)
                    .ok()
                    .and_then(|i| e.symbols.get(i))
                    .ok_or_else(|| format!("enum {} has no symbol {i}", e.name.name))?;
                self.spend(symbol.len())?;
                Datum::Str(symbol.clone())
            }
            Schema::Decimal(d) => {
                let bytes = match resolve(&d.inner, self.names)? {
                    Schema::Fixed(f) => self.take(f.size)?.to_vec(),
                    _ => self.bytes()?,
                };
                let unscaled = twos_complement(&bytes).ok_or("a decimal of more than 16 bytes")?;
                if d.precision > 38 {
                    Datum::Str(scaled(unscaled, d.scale))
                } else if unscaled.unsigned_abs() >= 10u128.pow(d.precision as u32) {
                    // Stored, it would wrap into another number.
                    return Err(format!("a decimal of more than {} digits", d.precision));
                } else {
                    Datum::Decimal(unscaled)
                }
            }
            Schema::Array(a) => Datum::List(self.blocks(|r| r.read(&a.items, depth + 1))?),
            Schema::Map(m) => {
                let mut entries = Vec::new();
                self.blocks(|r| {
                    // An entry is a record of a key and a value.
                    r.spend(NODE + 2 * FIELD + "keyvalue".len())?;
                    let key = r.string()?;
                    let value = r.read(&m.types, depth + 1)?;
                    entries.push((key, value));
                    Ok(Datum::Null)
                })?;
                map_datum(entries)
            }
            Schema::Union(u) => {
                let i = self.long()?;
                let index = usize::try_from(i)
                    .ok()
                    .filter(|i| *i < u.variants().len())
                    .ok_or_else(|| format!("a union has no branch {i}"))?;
                let branch = &u.variants()[index];
                let value = self.read(branch, depth + 1)?;
                if branches(u).len() == 1 || matches!(value, Datum::Null) {
                    value
                } else {
                    let name = branch_name(u, index);
                    self.spend(NODE + FIELD + name.len())?;
                    Datum::Record(vec![(name, value)])
                }
            }
            Schema::Record(r) => {
                self.budget
                    .spend_fields(r.fields.iter().map(|f| f.name.as_str()))?;
                let mut fields = Vec::with_capacity(r.fields.len());
                for f in &r.fields {
                    let value = self.read(&f.schema, depth + 1)?;
                    fields.push((f.name.clone(), value));
                }
                Datum::Record(fields)
            }
            Schema::Ref { .. } => return Err("an Avro reference to a reference".into()),
        })
    }
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

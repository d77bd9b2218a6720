//! JSON Schema as typed columns, for values framed with a registry's JSON schema and for plain JSON
//! with a declared one. Objects with `properties` are structs (fields in name order), arrays lists
//! of their `items`, `integer` a long, `number` a double, strings with `"format": "date-time"`
//! timestamps; `$ref`s within the document are followed. Anything a single type does not describe
//! (`oneOf`, several types, objects without properties) is a string holding the value's JSON text.

use std::sync::Arc;

use arrow_schema::{DataType, TimeUnit};
use serde_json::Value;

use super::{element, struct_of, Budget, Datum, MAX_DEPTH, NODE};

pub struct JsonCodec {
    shape: Arc<DataType>,
}

impl JsonCodec {
    pub fn parse(schema: &str) -> Result<JsonCodec, String> {
        let root: Value =
            serde_json::from_str(schema).map_err(|e| format!("not a JSON Schema: {e}"))?;
        let shape = shape_of(&root, &root, 0, &mut super::COLUMN_BUDGET.clone())?
            .ok_or("a JSON Schema of null has no column")?;
        Ok(JsonCodec {
            shape: Arc::new(shape),
        })
    }

    pub fn shape(&self) -> Result<Arc<DataType>, String> {
        Ok(self.shape.clone())
    }

    pub fn decode(&self, body: &[u8], budget: &mut Budget) -> Result<Datum, String> {
        let value: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
        datum(&self.shape, &value, budget)
    }
}

/// Follow `$ref` (a JSON pointer into the document) to the schema it names.
fn resolve<'a>(schema: &'a Value, root: &'a Value, depth: usize) -> Result<&'a Value, String> {
    match schema.get("$ref").and_then(Value::as_str) {
        None => Ok(schema),
        Some(_) if depth > MAX_DEPTH => Err("the JSON Schema's $refs go too deep".into()),
        Some(r) => {
            let pointer = r
                .strip_prefix('#')
                .ok_or_else(|| format!("$ref {r:?} is outside the schema"))?;
            let target = root
                .pointer(pointer)
                .ok_or_else(|| format!("$ref {r:?} names nothing in the schema"))?;
            resolve(target, root, depth + 1)
        }
    }
}

fn shape_of(
    schema: &Value,
    root: &Value,
    depth: usize,
    budget: &mut usize,
) -> Result<Option<DataType>, String> {
    if depth > MAX_DEPTH {
        return Err("the JSON Schema nests too deep (a recursive type?)".into());
    }
    super::spend_column(budget)?;
    let schema = resolve(schema, root, depth)?;
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ if schema.get("properties").is_some() => vec!["object"],
        _ => return Ok(Some(DataType::Utf8)),
    };
    let present: Vec<&str> = types.into_iter().filter(|t| *t != "null").collect();
    let t = match present.as_slice() {
        [] => return Ok(None),
        ["boolean"] => DataType::Boolean,
        ["integer"] => DataType::Int64,
        ["number"] => DataType::Float64,
        ["string"] if schema.get("format").and_then(Value::as_str) == Some("date-time") => {
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
        }
        ["string"] => DataType::Utf8,
        ["array"] => match schema.get("items") {
            Some(items) if items.is_object() => match shape_of(items, root, depth + 1, budget)? {
                Some(t) => DataType::List(Arc::new(element(t))),
                None => return Ok(None),
            },
            _ => DataType::List(Arc::new(element(DataType::Utf8))),
        },
        ["object"] => match schema.get("properties").and_then(Value::as_object) {
            Some(props) if !props.is_empty() => {
                let mut fields = Vec::new();
                let mut names: Vec<&String> = props.keys().collect();
                names.sort();
                for name in names {
                    if let Some(t) = shape_of(&props[name], root, depth + 1, budget)? {
                        fields.push((name.clone(), t));
                    }
                }
                match struct_of(fields) {
                    Some(t) => t,
                    None => return Ok(None),
                }
            }
            _ => DataType::Utf8,
        },
        _ => DataType::Utf8,
    };
    Ok(Some(t))
}

/// `value` as data of type `t`; a part that does not fit its type is null. Each value is spent
/// from `budget` as it is built: absent properties are nulls of every field, so a wide schema
/// could otherwise make a tree far larger than the JSON.
fn datum(t: &DataType, value: &Value, budget: &mut Budget) -> Result<Datum, String> {
    budget.spend(NODE)?;
    Ok(match (t, value) {
        (_, Value::Null) => Datum::Null,
        (DataType::Utf8, Value::String(s)) => {
            budget.spend(s.len())?;
            Datum::Str(s.clone())
        }
        (DataType::Utf8, other) => {
            let text = other.to_string();
            budget.spend(text.len())?;
            Datum::Str(text)
        }
        (DataType::Boolean, Value::Bool(b)) => Datum::Bool(*b),
        (DataType::Int64, Value::Number(n)) => match n.as_i64() {
            Some(i) => Datum::Int(i),
            None => n
                .as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.2e18)
                .map_or(Datum::Null, |f| Datum::Int(f as i64)),
        },
        (DataType::Float64, Value::Number(n)) => n.as_f64().map_or(Datum::Null, Datum::Float),
        (DataType::Timestamp(..), Value::String(s)) => {
            crate::archive::time::parse_rfc3339_millis(s).map_or(Datum::Null, Datum::Int)
        }
        (DataType::List(f), Value::Array(items)) => {
            budget.check(items.len().saturating_mul(NODE))?;
            Datum::List(
                items
                    .iter()
                    .map(|v| datum(f.data_type(), v, budget))
                    .collect::<Result<_, _>>()?,
            )
        }
        (DataType::Struct(fields), Value::Object(map)) => {
            budget.spend_fields(fields.iter().map(|f| f.name().as_str()))?;
            Datum::Record(
                fields
                    .iter()
                    .map(|f| {
                        let v = match map.get(f.name()) {
                            Some(v) => datum(f.data_type(), v, budget)?,
                            None => {
                                budget.spend(NODE)?;
                                Datum::Null
                            }
                        };
                        Ok((f.name().clone(), v))
                    })
                    .collect::<Result<_, String>>()?,
            )
        }
        _ => Datum::Null,
    })
}

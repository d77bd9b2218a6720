//! Decoded values into Arrow arrays of a typed column's type. A value that does not fit its field's
//! type (which a schema's own values never are, but a widened field's may be) is null there.

use std::sync::Arc;

use arrow_array::{
    new_null_array, ArrayRef, BinaryArray, BooleanArray, Date32Array, Decimal128Array,
    Float32Array, Float64Array, Int32Array, Int64Array, ListArray, StringArray, StructArray,
    Time64MicrosecondArray, TimestampMicrosecondArray, TimestampMillisecondArray,
};
use arrow_buffer::{NullBuffer, OffsetBuffer};
use arrow_schema::{DataType, TimeUnit};

use super::Datum;

static NULL: Datum = Datum::Null;

/// The array of `values` (one per row; `Datum::Null` for a null row) as type `t`.
pub fn build(t: &DataType, values: &[&Datum]) -> ArrayRef {
    let ints = || -> Vec<Option<i64>> {
        values
            .iter()
            .map(|d| match d {
                Datum::Int(i) => Some(*i),
                _ => None,
            })
            .collect()
    };
    match t {
        DataType::Boolean => Arc::new(BooleanArray::from(
            values
                .iter()
                .map(|d| match d {
                    Datum::Bool(b) => Some(*b),
                    _ => None,
                })
                .collect::<Vec<_>>(),
        )),
        DataType::Int32 => Arc::new(Int32Array::from(
            ints()
                .into_iter()
                .map(|i| i.and_then(|i| i32::try_from(i).ok()))
                .collect::<Vec<_>>(),
        )),
        DataType::Int64 => Arc::new(Int64Array::from(ints())),
        DataType::Date32 => Arc::new(Date32Array::from(
            ints()
                .into_iter()
                .map(|i| i.and_then(|i| i32::try_from(i).ok()))
                .collect::<Vec<_>>(),
        )),
        DataType::Time64(TimeUnit::Microsecond) => Arc::new(Time64MicrosecondArray::from(ints())),
        DataType::Timestamp(TimeUnit::Millisecond, tz) => {
            Arc::new(TimestampMillisecondArray::from(ints()).with_timezone_opt(tz.clone()))
        }
        DataType::Timestamp(TimeUnit::Microsecond, tz) => {
            Arc::new(TimestampMicrosecondArray::from(ints()).with_timezone_opt(tz.clone()))
        }
        DataType::Float32 | DataType::Float64 => {
            let floats: Vec<Option<f64>> = values
                .iter()
                .map(|d| match d {
                    Datum::Float(f) => Some(*f),
                    Datum::Int(i) => Some(*i as f64),
                    _ => None,
                })
                .collect();
            if *t == DataType::Float32 {
                Arc::new(Float32Array::from(
                    floats
                        .into_iter()
                        .map(|f| f.map(|f| f as f32))
                        .collect::<Vec<_>>(),
                ))
            } else {
                Arc::new(Float64Array::from(floats))
            }
        }
        DataType::Utf8 => Arc::new(StringArray::from(
            values
                .iter()
                .map(|d| match d {
                    Datum::Str(s) => Some(s.as_str()),
                    _ => None,
                })
                .collect::<Vec<_>>(),
        )),
        DataType::Binary => Arc::new(BinaryArray::from(
            values
                .iter()
                .map(|d| match d {
                    Datum::Bytes(b) => Some(b.as_slice()),
                    Datum::Str(s) => Some(s.as_bytes()),
                    _ => None,
                })
                .collect::<Vec<_>>(),
        )),
        DataType::Decimal128(p, s) => {
            let array = Decimal128Array::from(
                values
                    .iter()
                    .map(|d| match d {
                        Datum::Decimal(v) => Some(*v),
                        _ => None,
                    })
                    .collect::<Vec<_>>(),
            );
            match array.with_precision_and_scale(*p, *s) {
                Ok(a) => Arc::new(a),
                Err(_) => new_null_array(t, values.len()),
            }
        }
        DataType::Struct(fields) => {
            let children = fields
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    let column: Vec<&Datum> = values
                        .iter()
                        .map(|d| match d {
                            Datum::Record(entries) => field_of(entries, i, f.name()),
                            _ => &NULL,
                        })
                        .collect();
                    build(f.data_type(), &column)
                })
                .collect();
            let nulls = NullBuffer::from(
                values
                    .iter()
                    .map(|d| matches!(d, Datum::Record(_)))
                    .collect::<Vec<_>>(),
            );
            match StructArray::try_new(fields.clone(), children, Some(nulls)) {
                Ok(a) => Arc::new(a),
                Err(_) => new_null_array(t, values.len()),
            }
        }
        DataType::List(field) => {
            let mut lengths = Vec::with_capacity(values.len());
            let mut items: Vec<&Datum> = Vec::new();
            for d in values {
                match d {
                    Datum::List(xs) => {
                        lengths.push(xs.len());
                        items.extend(xs.iter());
                    }
                    _ => lengths.push(0),
                }
            }
            let nulls = NullBuffer::from(
                values
                    .iter()
                    .map(|d| matches!(d, Datum::List(_)))
                    .collect::<Vec<_>>(),
            );
            let child = build(field.data_type(), &items);
            match ListArray::try_new(
                field.clone(),
                OffsetBuffer::from_lengths(lengths),
                child,
                Some(nulls),
            ) {
                Ok(a) => Arc::new(a),
                Err(_) => new_null_array(t, values.len()),
            }
        }
        other => new_null_array(other, values.len()),
    }
}

/// Field `name` of a record, found first where the type has it (`i`: the usual case, a record of
/// the same schema), else by name; null when the record has no such field.
fn field_of<'a>(entries: &'a [(String, Datum)], i: usize, name: &str) -> &'a Datum {
    match entries.get(i) {
        Some((n, d)) if n == name => d,
        _ => entries
            .iter()
            .find(|(n, _)| n == name)
            .map_or(&NULL, |(_, d)| d),
    }
}

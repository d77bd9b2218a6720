//! Typed columns in the table schema: the `key_decoded` and `value_decoded` columns of the files a
//! sync adds join the table's current schema by Iceberg's evolution rules. A field new to the
//! table is added (optional, with a new id); `int` widens to `long` and `float` to `double`; a field
//! whose type changed otherwise is dropped from the table and never added again (it is kept in the
//! property `rewind.typed.dropped`), since a name maps to one field id in the name mapping and one
//! id has one type. The files keep it, and engines reading them as Parquet see it.
//!
//! Invariant: the table's name mapping names every typed column of every file the table lists
//! (some readers, pyiceberg among them, refuse a file column the mapping lacks): the current
//! schema's fields, and the dropped ones under ids no schema uses; a field's id never changes.

use std::collections::BTreeMap;

use arrow_schema::{DataType, Field, TimeUnit};
use serde_json::{json, Value};

use super::metadata::TableMetadata;
use super::spec;
use crate::archive::typed::{KEY_COLUMN, VALUE_COLUMN};

/// The table property that keeps the typed fields dropped for a changed type: a JSON object from
/// each one's dotted path to its name mapping (ids no schema uses).
pub const DROPPED: &str = "rewind.typed.dropped";

/// The dropped fields of a table, by path.
type Dropped = BTreeMap<String, Value>;

fn dropped_of(meta: &TableMetadata) -> Dropped {
    meta.properties
        .get(DROPPED)
        .and_then(|d| serde_json::from_str(d).ok())
        .unwrap_or_default()
}

/// The typed columns of a data file's Parquet schema.
pub fn typed_fields(metadata: &parquet::file::metadata::ParquetMetaData) -> Vec<Field> {
    let Ok(schema) =
        parquet::arrow::parquet_to_arrow_schema(metadata.file_metadata().schema_descr(), None)
    else {
        return Vec::new();
    };
    schema
        .fields()
        .iter()
        .filter(|f| [KEY_COLUMN, VALUE_COLUMN].contains(&f.name().as_str()))
        .map(|f| (**f).clone())
        .collect()
}

/// The current schema of `meta`.
pub fn current(meta: &TableMetadata) -> Value {
    meta.schemas
        .iter()
        .find(|s| s["schema-id"].as_i64() == Some(i64::from(meta.current_schema_id)))
        .cloned()
        .unwrap_or_else(spec::schema)
}

/// Join the typed columns `files` carry into the table's current schema: a new schema becomes
/// current when a field was added, widened or dropped. Returns whether the table changed.
pub fn evolve(meta: &mut TableMetadata, files: &[Vec<Field>]) -> bool {
    let mut schema = current(meta);
    let mut dropped = dropped_of(meta);
    let dropped_before = dropped.clone();
    let mut next_id = meta.last_column_id + 1;
    let before = schema.clone();
    let fields = schema["fields"]
        .as_array_mut()
        .expect("a schema has fields");
    for field in files.iter().flatten() {
        let name = field.name().as_str();
        let t = field.data_type();
        if !dropped.contains_key(name) {
            match fields.iter().position(|f| f["name"] == name) {
                Some(i) => match join(&fields[i]["type"], t, &mut next_id, name, &mut dropped) {
                    Some(joined) => fields[i]["type"] = joined,
                    None => {
                        let gone = fields.remove(i);
                        let entry = mapped(gone["id"].clone(), name, &gone["type"]);
                        dropped.insert(name.to_string(), entry);
                    }
                },
                None => {
                    if let Some(joined) = iceberg_type(t, &mut next_id, name, &dropped) {
                        let id = next_id;
                        next_id += 1;
                        fields.push(
                            json!({"id": id, "name": name, "required": false, "type": joined}),
                        );
                    }
                }
            }
        }
        cover_dropped(name, t, &mut dropped, &mut next_id);
    }
    let changed = schema != before || dropped != dropped_before;
    if dropped != dropped_before {
        meta.properties.insert(
            DROPPED.into(),
            serde_json::to_string(&dropped).expect("mappings serialize"),
        );
    }
    meta.last_column_id = meta.last_column_id.max(next_id - 1);
    if schema != before {
        // A schema the table had before (a dropped field can make the fields what they were) is
        // current again under its own id, as Iceberg's catalogs would make it.
        match meta
            .schemas
            .iter()
            .find(|s| s["fields"] == schema["fields"])
        {
            Some(had) => meta.current_schema_id = had["schema-id"].as_i64().unwrap_or(0) as i32,
            None => {
                let id = meta
                    .schemas
                    .iter()
                    .filter_map(|s| s["schema-id"].as_i64())
                    .max()
                    .unwrap_or(0) as i32
                    + 1;
                schema["schema-id"] = json!(id);
                meta.schemas.push(schema);
                meta.current_schema_id = id;
            }
        }
    }
    changed
}

/// The dotted path of field `name` within `path`: a dot or backslash in a name (JSON property
/// names may hold any) is escaped with a backslash, so that paths stay apart.
fn child(path: &str, name: &str) -> String {
    let name = name.replace('\\', "\\\\").replace('.', "\\.");
    format!("{path}.{name}")
}

/// The names of a dotted path ([`child`]).
fn segments(path: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = path.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.last_mut().expect("one").extend(chars.next()),
            '.' => out.push(String::new()),
            c => out.last_mut().expect("one").push(c),
        }
    }
    out
}

/// Make the dropped fields' mappings name every column a file's field of type `t` at `path` has
/// there or below, with new ids for the names they lack.
fn cover_dropped(path: &str, t: &DataType, dropped: &mut Dropped, next_id: &mut i32) {
    if let Some(entry) = dropped.get_mut(path) {
        cover(entry, t, next_id);
        return;
    }
    match t {
        DataType::Struct(fields) => {
            for f in fields.iter() {
                cover_dropped(&child(path, f.name()), f.data_type(), dropped, next_id);
            }
        }
        DataType::List(element) => cover_dropped(
            &format!("{path}.element"),
            element.data_type(),
            dropped,
            next_id,
        ),
        _ => {}
    }
}

/// Make mapping `entry` name every nested column of `t`.
fn cover(entry: &mut Value, t: &DataType, next_id: &mut i32) {
    let children: Vec<(String, &DataType)> = match t {
        DataType::Struct(fields) => fields
            .iter()
            .map(|f| (f.name().clone(), f.data_type()))
            .collect(),
        DataType::List(element) => vec![("element".into(), element.data_type())],
        _ => return,
    };
    if entry.get("fields").is_none() {
        entry["fields"] = json!([]);
    }
    let nested = entry["fields"].as_array_mut().expect("fields are a list");
    for (name, t) in children {
        let i = match nested.iter().position(|m| m["names"][0] == name.as_str()) {
            Some(i) => i,
            None => {
                nested.push(json!({"field-id": *next_id, "names": [name]}));
                *next_id += 1;
                nested.len() - 1
            }
        };
        cover(&mut nested[i], t, next_id);
    }
}

/// The Iceberg type of a primitive Arrow type.
fn primitive(t: &DataType) -> Option<String> {
    Some(
        match t {
            DataType::Boolean => "boolean",
            DataType::Int32 => "int",
            DataType::Int64 => "long",
            DataType::Float32 => "float",
            DataType::Float64 => "double",
            DataType::Utf8 | DataType::LargeUtf8 => "string",
            DataType::Binary | DataType::LargeBinary => "binary",
            DataType::Date32 => "date",
            DataType::Time64(TimeUnit::Microsecond) => "time",
            DataType::Timestamp(_, Some(_)) => "timestamptz",
            DataType::Timestamp(_, None) => "timestamp",
            DataType::Decimal128(p, s) => return Some(format!("decimal({p}, {s})")),
            _ => return None,
        }
        .to_string(),
    )
}

/// The Iceberg type of `t`, with new ids for its nested fields (`None`: no Iceberg type holds it).
fn iceberg_type(t: &DataType, next_id: &mut i32, path: &str, dropped: &Dropped) -> Option<Value> {
    if let Some(p) = primitive(t) {
        return Some(json!(p));
    }
    match t {
        DataType::Struct(fields) => {
            let mut out = Vec::new();
            for f in fields.iter() {
                let here = child(path, f.name());
                if dropped.contains_key(&here) {
                    continue;
                }
                if let Some(t) = iceberg_type(f.data_type(), next_id, &here, dropped) {
                    let id = *next_id;
                    *next_id += 1;
                    out.push(json!({"id": id, "name": f.name(), "required": false, "type": t}));
                }
            }
            (!out.is_empty()).then(|| json!({"type": "struct", "fields": out}))
        }
        DataType::List(element) => {
            let here = format!("{path}.element");
            let t = iceberg_type(element.data_type(), next_id, &here, dropped)?;
            let id = *next_id;
            *next_id += 1;
            Some(json!({"type": "list", "element-id": id, "element-required": false, "element": t}))
        }
        _ => None,
    }
}

/// `had` (an Iceberg type) joined with `t`; `None` when `t` changed it beyond evolution. Nested
/// fields that changed so are dropped (into `dropped`), the rest joined.
fn join(
    had: &Value,
    t: &DataType,
    next_id: &mut i32,
    path: &str,
    dropped: &mut Dropped,
) -> Option<Value> {
    if let (Some(had), Some(new)) = (had.as_str(), primitive(t)) {
        return match (had, new.as_str()) {
            (a, b) if a == b => Some(json!(a)),
            ("int", "long") | ("long", "int") => Some(json!("long")),
            ("float", "double") | ("double", "float") => Some(json!("double")),
            _ => None,
        };
    }
    match (had["type"].as_str(), t) {
        (Some("struct"), DataType::Struct(new)) => {
            let mut out = had.clone();
            let fields = out["fields"].as_array_mut()?;
            let mut i = 0;
            while i < fields.len() {
                let name = fields[i]["name"].as_str().unwrap_or_default().to_string();
                if let Some((_, f)) = new.find(&name) {
                    let here = child(path, &name);
                    match join(&fields[i]["type"], f.data_type(), next_id, &here, dropped) {
                        Some(t) => fields[i]["type"] = t,
                        None => {
                            let gone = fields.remove(i);
                            let entry = mapped(gone["id"].clone(), &name, &gone["type"]);
                            dropped.insert(here, entry);
                            continue;
                        }
                    }
                }
                i += 1;
            }
            for f in new.iter() {
                let here = child(path, f.name());
                if dropped.contains_key(&here)
                    || fields.iter().any(|x| x["name"] == f.name().as_str())
                {
                    continue;
                }
                if let Some(t) = iceberg_type(f.data_type(), next_id, &here, dropped) {
                    let id = *next_id;
                    *next_id += 1;
                    fields.push(json!({"id": id, "name": f.name(), "required": false, "type": t}));
                }
            }
            Some(out)
        }
        (Some("list"), DataType::List(element)) => {
            let mut out = had.clone();
            let here = format!("{path}.element");
            out["element"] = join(
                &had["element"],
                element.data_type(),
                next_id,
                &here,
                dropped,
            )?;
            Some(out)
        }
        _ => None,
    }
}

/// The name mapping of `meta`'s current schema: the raw columns' ([`spec::name_mapping`]), every
/// typed field, and the dropped ones.
pub fn name_mapping(meta: &TableMetadata) -> Value {
    let schema = current(meta);
    let mut mapping = spec::name_mapping();
    let list = mapping.as_array_mut().expect("a mapping is a list");
    for field in schema["fields"].as_array().into_iter().flatten() {
        let name = field["name"].as_str().unwrap_or_default();
        if [KEY_COLUMN, VALUE_COLUMN].contains(&name) {
            list.push(mapped(field["id"].clone(), name, &field["type"]));
        }
    }
    for (path, entry) in dropped_of(meta) {
        let mut parents = segments(&path);
        parents.pop();
        let parents: Vec<&str> = parents.iter().map(String::as_str).collect();
        if let Some(list) = mapping_at(&mut mapping, &parents) {
            if !list.iter().any(|m| m["names"] == entry["names"]) {
                list.push(entry);
            }
        }
    }
    mapping
}

/// The list of mappings under the dotted `path` of names (`None` when a name is not mapped).
fn mapping_at<'a>(mapping: &'a mut Value, path: &[&str]) -> Option<&'a mut Vec<Value>> {
    let Some((first, rest)) = path.split_first() else {
        return mapping.as_array_mut();
    };
    let entry = mapping
        .as_array_mut()?
        .iter_mut()
        .find(|m| m["names"][0] == *first)?;
    if entry.get("fields").is_none() {
        entry["fields"] = json!([]);
    }
    mapping_at(&mut entry["fields"], rest)
}

fn mapped(id: Value, name: &str, t: &Value) -> Value {
    let mut out = json!({"field-id": id, "names": [name]});
    let nested: Vec<Value> = match t["type"].as_str() {
        Some("struct") => t["fields"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|f| {
                mapped(
                    f["id"].clone(),
                    f["name"].as_str().unwrap_or_default(),
                    &f["type"],
                )
            })
            .collect(),
        Some("list") => vec![mapped(t["element-id"].clone(), "element", &t["element"])],
        _ => Vec::new(),
    };
    if !nested.is_empty() {
        out["fields"] = json!(nested);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_schema::Fields;

    use super::*;

    fn table() -> TableMetadata {
        TableMetadata::new("u".into(), "file:///t".into(), 0, Default::default())
    }

    fn value(fields: Vec<(&str, DataType)>) -> Vec<Field> {
        let fields: Vec<Field> = fields
            .into_iter()
            .map(|(n, t)| Field::new(n, t, true))
            .collect();
        vec![Field::new(
            VALUE_COLUMN,
            DataType::Struct(Fields::from(fields)),
            true,
        )]
    }

    #[test]
    fn typed_fields_join_the_schema_by_iceberg_evolution() {
        let mut meta = table();
        assert!(!evolve(&mut meta, &[]));
        let tags = DataType::List(Arc::new(Field::new("element", DataType::Utf8, true)));
        assert!(evolve(
            &mut meta,
            &[value(vec![("id", DataType::Int32), ("tags", tags.clone())])]
        ));
        assert_eq!(meta.current_schema_id, 1);
        assert_eq!(meta.last_column_id, spec::field::LAST + 4);
        // The same again changes nothing.
        assert!(!evolve(
            &mut meta,
            &[value(vec![("id", DataType::Int32), ("tags", tags)])]
        ));
        // Widened, and a new field.
        assert!(evolve(
            &mut meta,
            &[value(vec![
                ("id", DataType::Int64),
                ("note", DataType::Utf8)
            ])]
        ));
        let schema = current(&meta);
        let typed = &schema["fields"].as_array().unwrap().last().unwrap()["type"]["fields"];
        assert_eq!(typed[0]["type"], "long");
        assert_eq!(typed[0]["id"], spec::field::LAST + 1, "ids never change");
        assert_eq!(typed[2]["name"], "note");
        // A changed type drops the field for good; the others stay.
        assert!(evolve(&mut meta, &[value(vec![("note", DataType::Int64)])]));
        let schema = current(&meta);
        let typed = &schema["fields"].as_array().unwrap().last().unwrap()["type"]["fields"];
        assert!(typed
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["name"] != "note"));
        let dropped: Value = serde_json::from_str(&meta.properties[DROPPED]).unwrap();
        let note_id = dropped["value_decoded.note"]["field-id"].clone();
        assert_eq!(note_id, json!(spec::field::LAST + 5));
        // Files with either type of the dropped field stay mapped, under its old id.
        assert!(!evolve(&mut meta, &[value(vec![("note", DataType::Utf8)])]));
        let mapping = name_mapping(&meta);
        let typed = mapping.as_array().unwrap().last().unwrap();
        assert_eq!(typed["names"], json!(["value_decoded"]));
        let note = typed["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["names"] == json!(["note"]));
        assert_eq!(note.unwrap()["field-id"], note_id);
        // The mapping names the typed fields, nested ones included.
        let mapping = mapping.to_string();
        assert!(
            mapping.contains(r#""names":["value_decoded"]"#),
            "{mapping}"
        );
        assert!(mapping.contains(r#""names":["element"]"#), "{mapping}");
    }

    #[test]
    fn a_dropped_field_whose_name_holds_a_dot_stays_mapped() {
        let mut meta = table();
        let fields = |t: DataType| {
            value(vec![
                ("http.status", t),
                ("http", DataType::Utf8),
                ("back\\slash", DataType::Int32),
            ])
        };
        assert!(evolve(&mut meta, &[fields(DataType::Int64)]));
        // `http.status` changes type: dropped, and still mapped where it is, beside `http`.
        assert!(evolve(&mut meta, &[fields(DataType::Utf8)]));
        let mapping = name_mapping(&meta);
        let typed = mapping.as_array().unwrap().last().unwrap();
        let names: Vec<&Value> = typed["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| &m["names"])
            .collect();
        assert!(names.contains(&&json!(["http.status"])), "{mapping}");
        assert!(names.contains(&&json!(["http"])), "{mapping}");
        for name in ["a", "a.b", "a\\.b", "\\", "a.", ""] {
            let path = child("value_decoded", name);
            assert_eq!(segments(&path), vec!["value_decoded", name], "{path}");
        }
    }

    #[test]
    fn a_schema_the_table_had_before_is_current_again_under_its_id() {
        let mut meta = table();
        assert!(evolve(&mut meta, &[value(vec![("a", DataType::Int32)])]));
        assert!(evolve(
            &mut meta,
            &[value(vec![("a", DataType::Int32), ("b", DataType::Utf8)])]
        ));
        assert_eq!(meta.current_schema_id, 2);
        // `b` changes type and is dropped: the fields are schema 1's again.
        assert!(evolve(&mut meta, &[value(vec![("b", DataType::Int64)])]));
        assert_eq!(meta.current_schema_id, 1);
        assert_eq!(meta.schemas.len(), 3);
    }
}

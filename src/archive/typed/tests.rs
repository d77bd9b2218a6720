use std::collections::BTreeMap;
use std::sync::Arc;

use apache_avro::types::Value as AvroValue;
use arrow_array::{Array, Int64Array, StringArray, StructArray};
use arrow_schema::DataType;

use super::*;
use crate::archive::record::Record;

fn framed(id: u32, body: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend(id.to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn text(kind: &str, schema: &str) -> SchemaText {
    SchemaText {
        kind: kind.into(),
        schema: schema.into(),
        references: Vec::new(),
    }
}

fn record(offset: i64, value: Option<Vec<u8>>) -> Record {
    Record {
        offset,
        timestamp: Some(1_700_000_000_000 + offset),
        timestamp_type: None,
        key: None,
        value,
        headers: Vec::new(),
    }
}

const ORDER_V1: &str = r#"{"type":"record","name":"Order","fields":[
    {"name":"id","type":"long"},{"name":"amount","type":"int"},
    {"name":"tags","type":{"type":"array","items":"string"}},
    {"name":"note","type":["null","string"],"default":null}]}"#;
const ORDER_V2: &str = r#"{"type":"record","name":"Order","fields":[
    {"name":"id","type":"long"},{"name":"amount","type":"long"},
    {"name":"tags","type":{"type":"array","items":"string"}},
    {"name":"note","type":["null","string"],"default":null},
    {"name":"currency","type":["null","string"],"default":null}]}"#;
const ORDER_STRING_AMOUNT: &str = r#"{"type":"record","name":"Order","fields":[
    {"name":"id","type":"long"},{"name":"amount","type":"string"}]}"#;

fn avro(schema: &str, fields: Vec<(&str, AvroValue)>) -> Vec<u8> {
    let schema = apache_avro::Schema::parse_str(schema).unwrap();
    let value = AvroValue::Record(fields.into_iter().map(|(k, v)| (k.into(), v)).collect());
    apache_avro::to_avro_datum(&schema, value).unwrap()
}

fn registry(codecs: &[(u32, SchemaText)]) -> SideDecoding {
    SideDecoding::Registry(
        codecs
            .iter()
            .map(|(id, t)| (*id, Arc::new(Codec::parse(t.clone()).unwrap())))
            .collect::<BTreeMap<_, _>>(),
    )
}

#[test]
fn avro_values_decode_and_evolve_into_one_column() {
    let v1 = avro(
        ORDER_V1,
        vec![
            ("id", AvroValue::Long(1)),
            ("amount", AvroValue::Int(250)),
            (
                "tags",
                AvroValue::Array(vec![AvroValue::String("a".into())]),
            ),
            ("note", AvroValue::Union(0, Box::new(AvroValue::Null))),
        ],
    );
    let v2 = avro(
        ORDER_V2,
        vec![
            ("id", AvroValue::Long(2)),
            ("amount", AvroValue::Long(1 << 40)),
            ("tags", AvroValue::Array(vec![])),
            (
                "note",
                AvroValue::Union(1, Box::new(AvroValue::String("hi".into()))),
            ),
            (
                "currency",
                AvroValue::Union(1, Box::new(AvroValue::String("EUR".into()))),
            ),
        ],
    );
    let decoding = Decoding {
        checked: Default::default(),
        key: None,
        value: Some(registry(&[
            (7, text("AVRO", ORDER_V1)),
            (9, text("AVRO", ORDER_V2)),
        ])),
    };
    let records = vec![
        record(0, Some(framed(7, &v1))),
        record(1, Some(framed(9, &v2))),
        record(2, None),
        record(3, Some(b"plain".to_vec())),
        record(4, Some(framed(12, &v1))),
    ];
    let mut prepared = decoding.prepare(&records);
    let (_, columns) = prepared.columns(&records);
    let column = columns[0].as_any().downcast_ref::<StructArray>().unwrap();
    // int widened to long; the new field is a new nullable column.
    assert_eq!(
        column.column_by_name("amount").unwrap().data_type(),
        &DataType::Int64
    );
    let amounts = column
        .column_by_name("amount")
        .unwrap()
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap();
    assert_eq!(amounts.value(0), 250);
    assert_eq!(amounts.value(1), 1 << 40);
    let currency = column
        .column_by_name("currency")
        .unwrap()
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap();
    assert!(currency.is_null(0));
    assert_eq!(currency.value(1), "EUR");
    let notes = column
        .column_by_name("note")
        .unwrap()
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap();
    assert!(notes.is_null(0));
    assert_eq!(notes.value(1), "hi");
    // A tombstone is null and no failure; plain bytes and an unknown id are failures.
    assert!(column.is_null(2) && column.is_null(3) && column.is_null(4));
    let spec = prepared.spec();
    let value = spec.value.unwrap();
    assert_eq!(value.decoded, 2);
    assert_eq!(value.failed.get("not_framed"), Some(&1));
    assert_eq!(value.failed.get("unknown_schema"), Some(&1));
    assert_eq!(
        value.schemas.keys().copied().collect::<Vec<_>>(),
        vec![7, 9]
    );
}

#[test]
fn an_incompatible_schema_leaves_its_records_undecoded_in_a_shared_file() {
    let v1 = avro(
        ORDER_V1,
        vec![
            ("id", AvroValue::Long(1)),
            ("amount", AvroValue::Int(3)),
            ("tags", AvroValue::Array(vec![])),
            ("note", AvroValue::Union(0, Box::new(AvroValue::Null))),
        ],
    );
    let changed = avro(
        ORDER_STRING_AMOUNT,
        vec![
            ("id", AvroValue::Long(2)),
            ("amount", AvroValue::String("3.50".into())),
        ],
    );
    let decoding = Decoding {
        checked: Default::default(),
        key: None,
        value: Some(registry(&[
            (1, text("AVRO", ORDER_V1)),
            (2, text("AVRO", ORDER_STRING_AMOUNT)),
        ])),
    };
    let records = vec![
        record(0, Some(framed(1, &v1))),
        record(1, Some(framed(2, &changed))),
    ];
    let mut prepared = decoding.prepare(&records);
    let (_, columns) = prepared.columns(&records);
    assert!(!columns[0].is_null(0));
    assert!(columns[0].is_null(1));
    assert_eq!(
        prepared.failures(),
        vec![(Side::Value, Failure::Incompatible, 1)]
    );
    // Alone, the changed schema decodes.
    let mut alone = decoding.prepare(&records[1..]);
    assert!(!alone.columns(&records[1..]).1[0].is_null(0));
}

#[test]
fn merge_widens_and_adds_but_refuses_changed_types() {
    let s = |fields: Vec<(&str, DataType)>| {
        struct_of(
            fields
                .into_iter()
                .map(|(n, t)| (n.to_string(), t))
                .collect(),
        )
        .unwrap()
    };
    let a = s(vec![("x", DataType::Int32), ("y", DataType::Utf8)]);
    let b = s(vec![("x", DataType::Int64), ("z", DataType::Float32)]);
    assert_eq!(
        merge(&a, &b),
        Some(s(vec![
            ("x", DataType::Int64),
            ("y", DataType::Utf8),
            ("z", DataType::Float32)
        ]))
    );
    let c = s(vec![("x", DataType::Utf8)]);
    assert_eq!(merge(&a, &c), None);
    assert_eq!(merge(&DataType::Utf8, &DataType::Binary), None);
}

#[test]
fn json_schema_and_declared_json_decode_by_their_schema() {
    let schema = r##"{"type":"object","properties":{
        "id":{"type":"integer"},"price":{"type":"number"},"when":{"type":"string","format":"date-time"},
        "item":{"$ref":"#/definitions/Item"},"any":{"oneOf":[{"type":"string"},{"type":"integer"}]}},
        "definitions":{"Item":{"type":"object","properties":{"sku":{"type":["null","string"]}}}}}"##;
    let codec = Codec::parse(text("JSON", schema)).unwrap();
    let d = codec
        .decode_alone(br#"{"id":5,"price":2,"when":"2026-12-05T10:00:00.250Z","item":{"sku":"X"},"any":7,"extra":1}"#)
        .unwrap();
    assert_eq!(
        d,
        Datum::Record(vec![
            ("any".into(), Datum::Str("7".into())),
            ("id".into(), Datum::Int(5)),
            (
                "item".into(),
                Datum::Record(vec![("sku".into(), Datum::Str("X".into()))])
            ),
            ("price".into(), Datum::Float(2.0)),
            ("when".into(), Datum::Int(1_796_464_800_250)),
        ])
    );
    assert!(codec.decode_alone(b"{not json").is_err());
}

#[test]
fn protobuf_messages_decode_by_their_indexes() {
    use prost::Message as _;
    let source = r#"syntax = "proto3";
        package shop;
        import "google/protobuf/timestamp.proto";
        message Order { int64 id = 1; string sku = 2; repeated int32 qty = 3; map<string, int64> attrs = 4;
            Status status = 5; google.protobuf.Timestamp at = 6; optional string note = 7;
            message Line { string sku = 1; } }
        enum Status { NEW = 0; PAID = 1; }"#;
    let codec = Codec::parse(text("PROTOBUF", source)).unwrap();
    let pool = match &codec.inner {
        Inner::Proto(p) => p.pool.clone(),
        _ => unreachable!(),
    };
    let order = pool.get_message_by_name("shop.Order").unwrap();
    let mut msg = prost_reflect::DynamicMessage::new(order);
    msg.set_field_by_name("id", prost_reflect::Value::I64(42));
    msg.set_field_by_name("sku", prost_reflect::Value::String("A-1".into()));
    msg.set_field_by_name(
        "qty",
        prost_reflect::Value::List(vec![
            prost_reflect::Value::I32(1),
            prost_reflect::Value::I32(2),
        ]),
    );
    msg.set_field_by_name("status", prost_reflect::Value::EnumNumber(1));
    let mut body = vec![0u8];
    body.extend(msg.encode_to_vec());
    let shape = codec.shape(&body).unwrap();
    assert!(matches!(&*shape, DataType::Struct(f) if f.len() == 7));
    let d = codec.decode_alone(&body).unwrap();
    let Datum::Record(fields) = d else {
        panic!("{d:?}")
    };
    assert_eq!(fields[0], ("id".into(), Datum::Int(42)));
    assert_eq!(
        fields[2],
        (
            "qty".into(),
            Datum::List(vec![Datum::Int(1), Datum::Int(2)])
        )
    );
    assert_eq!(fields[3], ("attrs".into(), Datum::List(vec![])));
    assert_eq!(fields[4], ("status".into(), Datum::Str("PAID".into())));
    assert_eq!(fields[5], ("at".into(), Datum::Null));
    assert_eq!(fields[6], ("note".into(), Datum::Null));
    // The nested message, by its indexes [0, 1] (count 2, zigzag 4; 0; 1, zigzag 2): nested types
    // count map entries, which come first here, as Confluent's serializers count them.
    let line = pool.get_message_by_name("shop.Order.Line").unwrap();
    let mut msg = prost_reflect::DynamicMessage::new(line);
    msg.set_field_by_name("sku", prost_reflect::Value::String("L".into()));
    let mut body = vec![4u8, 0, 2];
    body.extend(msg.encode_to_vec());
    assert_eq!(
        codec.decode_alone(&body).unwrap(),
        Datum::Record(vec![("sku".into(), Datum::Str("L".into()))])
    );
    assert!(Codec::parse(text("PROTOBUF", "message {")).is_err());
}

mod hostile {
    use proptest::prelude::*;

    use super::*;
    use crate::archive::datafile;

    const PROTO: &str = r#"syntax = "proto3"; message M { int64 a = 1; repeated string b = 2; map<string, M> c = 3; }"#;
    const JSON: &str = r#"{"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"array","items":{"type":"string"}}}}"#;

    fn decoding() -> Decoding {
        let side = registry(&[
            (1, text("AVRO", ORDER_V1)),
            (2, text("AVRO", ORDER_V2)),
            (3, text("JSON", JSON)),
            (4, text("PROTOBUF", PROTO)),
        ]);
        Decoding {
            checked: Default::default(),
            key: Some(side.clone()),
            value: Some(side),
        }
    }

    /// Bytes that claim one of the known ids (or another), then anything.
    fn bytes() -> impl Strategy<Value = Option<Vec<u8>>> {
        prop_oneof![
            Just(None),
            prop::collection::vec(any::<u8>(), 0..40).prop_map(Some),
            (0u32..6, prop::collection::vec(any::<u8>(), 0..40))
                .prop_map(|(id, body)| Some(framed(id, &body))),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        /// Whatever the bytes, encoding never fails or panics, every key and value is decoded or
        /// counted, and the file's records decode back exactly: typed columns never cost a byte.
        #[test]
        fn any_bytes_archive_whole_with_typed_columns(
            sides in prop::collection::vec((bytes(), bytes()), 1..30)
        ) {
            let records: Vec<Record> = sides
                .into_iter()
                .enumerate()
                .map(|(i, (k, v))| Record { key: k, ..record(i as i64, v) })
                .collect();
            let meta = datafile::file_meta("t", 0, 0, records.len() as i64, &records, "c", 0);
            let (bytes, typed) =
                datafile::encode_decoded_to(&meta, &records, Some(&decoding()), Vec::new(), usize::MAX)
                    .unwrap();
            let typed = typed.unwrap();
            let spec = typed.spec();
            for (side, count) in [
                (Side::Key, records.iter().filter(|r| r.key.is_some()).count()),
                (Side::Value, records.iter().filter(|r| r.value.is_some()).count()),
            ] {
                let s = spec.side(side).unwrap();
                prop_assert_eq!(s.decoded + s.failed.values().sum::<u64>(), count as u64);
            }
            let (_, back) = datafile::decode(bytes.into()).unwrap();
            prop_assert_eq!(back, records);
        }
    }
}

/// A zigzag varint, as Avro writes ints and longs.
fn varint(v: i64) -> Vec<u8> {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    let mut out = Vec::new();
    loop {
        let byte = (z & 0x7f) as u8;
        z >>= 7;
        if z == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

#[test]
fn hostile_avro_counts_lengths_and_leftovers_do_not_decode() {
    let codec = Codec::parse(text("AVRO", ORDER_V1)).unwrap();
    // id 1, amount 0, then an array block claiming 2^27 strings in a few bytes: refused before
    // anything is allocated for them (the library's reader reserved gigabytes here).
    let mut huge = vec![2, 0];
    huge.extend(varint(1 << 27));
    assert!(codec.decode_alone(&huge).is_err());
    let mut negative = vec![2, 0];
    negative.extend(varint(-(1 << 40)));
    negative.extend(varint(5));
    assert!(codec.decode_alone(&negative).is_err());
    // A string claiming more bytes than follow.
    let mut long = vec![2, 0, 2];
    long.extend(varint(1 << 30));
    assert!(codec.decode_alone(&long).is_err());
    // A whole value, then bytes that are not part of it.
    let mut whole = avro(
        ORDER_V1,
        vec![
            ("id", AvroValue::Long(1)),
            ("amount", AvroValue::Int(2)),
            ("tags", AvroValue::Array(vec![])),
            ("note", AvroValue::Union(0, Box::new(AvroValue::Null))),
        ],
    );
    assert!(codec.decode_alone(&whole).is_ok());
    whole.push(7);
    assert!(codec.decode_alone(&whole).is_err());
    // Null items cost nothing to send but budget to decode.
    let nulls = Codec::parse(text("AVRO", r#"{"type":"array","items":"null"}"#));
    assert!(nulls.is_err(), "an array of nulls has no column");
    let maps = Codec::parse(text("AVRO", r#"{"type":"map","values":"string"}"#)).unwrap();
    let mut bomb = varint(1 << 26);
    bomb.extend([0, 0]);
    assert!(maps.decode_alone(&bomb).is_err());
}

#[test]
fn avro_decimals_beyond_their_precision_and_named_union_branches() {
    let schema = r#"{"type":"record","name":"P","fields":[
        {"name":"price","type":{"type":"bytes","logicalType":"decimal","precision":4,"scale":2}},
        {"name":"either","type":["null",
            {"type":"record","name":"X","namespace":"a","fields":[{"name":"v","type":"int"}]},
            {"type":"record","name":"X","namespace":"b","fields":[{"name":"w","type":"string"}]}]}]}"#;
    let codec = Codec::parse(text("AVRO", schema)).unwrap();
    let shape = codec.shape(&[]).unwrap();
    let DataType::Struct(fields) = &*shape else {
        panic!("{shape:?}")
    };
    let DataType::Struct(branches) = fields[1].data_type() else {
        panic!()
    };
    let names: Vec<&str> = branches.iter().map(|f| f.name().as_str()).collect();
    assert_eq!(
        names,
        ["a_X", "b_X"],
        "branches named apart by their full names"
    );
    // 12.34 fits decimal(4, 2); 123.45 does not, and would wrap when stored.
    // price: 2 bytes, 0x04d2 = 1234; either: branch 2 (b.X), w: the string "z".
    let mut ok = vec![4, 0x04, 0xd2];
    ok.extend(varint(2));
    ok.extend(varint(1));
    ok.push(b'z');
    assert_eq!(
        codec.decode_alone(&ok).unwrap(),
        Datum::Record(vec![
            ("price".into(), Datum::Decimal(1234)),
            (
                "either".into(),
                Datum::Record(vec![(
                    "b_X".into(),
                    Datum::Record(vec![("w".into(), Datum::Str("z".into()))])
                )])
            ),
        ])
    );
    let mut too_wide = vec![6, 0x00, 0x30, 0x39];
    too_wide.extend(varint(0));
    assert!(
        codec.decode_alone(&too_wide).is_err(),
        "12345 has five digits"
    );
    // A null branch is a null value, not a struct of nulls.
    let mut null = vec![4, 0x04, 0xd2];
    null.extend(varint(0));
    assert_eq!(
        codec.decode_alone(&null).unwrap(),
        Datum::Record(vec![
            ("price".into(), Datum::Decimal(1234)),
            ("either".into(), Datum::Null)
        ])
    );
}

#[test]
fn a_merge_that_would_lose_typed_values_is_named() {
    let side = |decoded: u64, failed: &[(&str, u64)], declared: Option<&str>| SideSpec {
        schemas: if declared.is_none() {
            BTreeMap::from([(1, text("AVRO", ORDER_V1))])
        } else {
            BTreeMap::new()
        },
        declared: declared.map(|d| text("JSON", d)),
        decoded,
        failed: failed.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
    };
    let spec = |s: SideSpec| Spec {
        key: None,
        value: Some(s),
    };
    let parts = [
        spec(side(5, &[], None)),
        spec(side(3, &[("not_framed", 1)], None)),
    ];
    assert_eq!(
        lost_in_merge(&parts, &spec(side(8, &[("not_framed", 1)], None))),
        None
    );
    assert_eq!(
        lost_in_merge(&parts, &spec(side(9, &[], None))),
        None,
        "more decoded is fine"
    );
    assert!(lost_in_merge(&parts, &spec(side(7, &[], None))).is_some());
    assert!(lost_in_merge(&parts, &spec(side(8, &[("incompatible", 1)], None))).is_some());
    // Parts decoded by the registry and by a declared schema cannot be decoded as one.
    let mixed = [
        spec(side(1, &[], None)),
        spec(side(1, &[], Some(JSON_SCHEMA))),
    ];
    assert!(Decoding::from_specs(&mixed).is_err());
    let declared = [
        spec(side(1, &[], Some(JSON_SCHEMA))),
        spec(side(1, &[], Some(r#"{"type":"string"}"#))),
    ];
    assert!(Decoding::from_specs(&declared).is_err());
    assert!(Decoding::from_specs(&parts).unwrap().is_some());
}

const JSON_SCHEMA: &str = r#"{"type":"object","properties":{"a":{"type":"integer"}}}"#;

/// The process's peak resident memory so far, in bytes (Linux).
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib << 10
}

#[test]
fn a_few_bytes_of_repeated_empty_messages_do_not_become_a_huge_tree() {
    // 300,000 empty `Inner`s (two bytes each) of 100 fields each: as proto3 defaults, built whole
    // before being weighed, some 2 GB; spent as they are built, refused within the budget.
    let fields: String = (1..=100).map(|i| format!("int64 f{i} = {i}; ")).collect();
    let source = format!(
        "syntax = \"proto3\"; message Outer {{ repeated Inner items = 1; }} message Inner {{ {fields}}}"
    );
    let codec = Codec::parse(text("PROTOBUF", &source)).unwrap();
    let mut body = vec![0u8];
    for _ in 0..300_000 {
        body.extend([0x0a, 0x00]);
    }
    let before = peak_rss();
    assert!(codec.decode_alone(&body).is_err());
    // JSON: empty objects of a wide declared schema.
    let properties: Vec<String> = (0..100)
        .map(|i| format!(r#""field_number_{i}":{{"type":"integer"}}"#))
        .collect();
    let schema = format!(
        r#"{{"type":"object","properties":{{"items":{{"type":"array","items":{{"type":"object","properties":{{{}}}}}}}}}}}"#,
        properties.join(",")
    );
    let json = Codec::parse(text("JSON", &schema)).unwrap();
    let body = format!(r#"{{"items":[{}]}}"#, vec!["{}"; 200_000].join(","));
    assert!(json.decode_alone(body.as_bytes()).is_err());
    let grown = peak_rss().saturating_sub(before);
    assert!(grown < 1 << 30, "decoding grew the peak by {grown} bytes");
}

#[test]
fn a_batch_of_small_records_of_a_wide_schema_ends_early_and_every_value_decodes() {
    let decoding = declared(&wide_object(1000));
    let Some(SideDecoding::Declared(codec)) = &decoding.value else {
        unreachable!()
    };
    let one = weight(&codec.decode_alone(b"{}").unwrap());
    let records: Vec<Record> = (0..2000).map(|i| record(i, Some(b"{}".to_vec()))).collect();
    let mut prepared = decoding.prepare(&records);
    let mut rest = &records[..];
    let mut batches = Vec::new();
    while !rest.is_empty() {
        let (rows, columns) = prepared.columns(rest);
        assert!(rows >= 1);
        assert_eq!(columns[0].len(), rows);
        // The batch's values weigh what a batch may, and one more value at most.
        assert!(
            rows * one <= BATCH_WEIGHT + one,
            "{rows} values of {one} bytes"
        );
        batches.push(rows);
        rest = &rest[rows..];
    }
    assert!(batches.len() > 1, "2000 values of {one} bytes in one batch");
    assert_eq!(prepared.decoded(), vec![(Side::Value, 2000)]);
    assert!(prepared.failures().is_empty());
}

#[test]
fn a_file_whose_typed_values_end_its_batches_early_holds_every_record_and_value() {
    let decoding = declared(&wide_object(1000));
    let records: Vec<Record> = (0..2000)
        .map(|i| record(i, Some(format!(r#"{{"p7":{i}}}"#).into_bytes())))
        .collect();
    let meta = crate::archive::datafile::file_meta("t", 0, 0, 2000, &records, "c", 0);
    let (bytes, typed) = crate::archive::datafile::encode_decoded_to(
        &meta,
        &records,
        Some(&decoding),
        Vec::new(),
        usize::MAX,
    )
    .unwrap();
    assert_eq!(typed.unwrap().spec().value.unwrap().decoded, 2000);
    let bytes = bytes::Bytes::from(bytes);
    let (_, back) = crate::archive::datafile::decode(bytes.clone()).unwrap();
    assert_eq!(back, records);
    // Every row's typed value is its own.
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
        .unwrap()
        .build()
        .unwrap();
    let mut seen = 0i64;
    for batch in reader {
        let batch = batch.unwrap();
        let typed = batch
            .column_by_name(VALUE_COLUMN)
            .unwrap()
            .as_any()
            .downcast_ref::<StructArray>()
            .unwrap();
        let p7 = typed
            .column_by_name("p7")
            .unwrap()
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        for i in 0..p7.len() {
            assert_eq!(p7.value(i), seen);
            seen += 1;
        }
    }
    assert_eq!(seen, 2000);
}

#[test]
fn parts_naming_one_id_with_two_schemas_are_not_merged() {
    let spec = |schema: &str| Spec {
        key: None,
        value: Some(SideSpec {
            schemas: BTreeMap::from([(5, text("AVRO", schema))]),
            declared: None,
            decoded: 1,
            failed: BTreeMap::new(),
        }),
    };
    assert!(Decoding::from_specs(&[spec(ORDER_V1), spec(ORDER_V1)])
        .unwrap()
        .is_some());
    let err = Decoding::from_specs(&[spec(ORDER_V1), spec(ORDER_STRING_AMOUNT)]).unwrap_err();
    assert!(err.contains("id 5"), "{err}");
}

fn order_v1(id: i64) -> Vec<u8> {
    avro(
        ORDER_V1,
        vec![
            ("id", AvroValue::Long(id)),
            ("amount", AvroValue::Int(3)),
            ("tags", AvroValue::Array(vec![])),
            ("note", AvroValue::Union(0, Box::new(AvroValue::Null))),
        ],
    )
}

#[test]
fn a_file_is_typed_as_the_sink_decided_whatever_its_records_order() {
    let changed = avro(
        ORDER_STRING_AMOUNT,
        vec![
            ("id", AvroValue::Long(1)),
            ("amount", AvroValue::String("3.50".into())),
        ],
    );
    let side = registry(&[
        (1, text("AVRO", ORDER_V1)),
        (2, text("AVRO", ORDER_STRING_AMOUNT)),
    ]);
    let SideDecoding::Registry(codecs) = &side else {
        unreachable!()
    };
    let (v1, v2) = (
        codecs[&1].shape(&[]).unwrap(),
        codecs[&2].shape(&[]).unwrap(),
    );
    // The changed record came first (its schema was still being fetched when it was read); the
    // sink joined v1 and kept the changed shape out.
    let records = vec![
        record(0, Some(framed(2, &changed))),
        record(1, Some(framed(1, &order_v1(2)))),
        record(2, Some(framed(1, &order_v1(3)))),
    ];
    // Whether the sink saw the changed shape (and kept it out) or not (it was not fetched yet).
    for refused in [vec![v2], vec![]] {
        let decoding = Decoding {
            key: None,
            value: Some(side.clone()),
            checked: [
                Checked::default(),
                Checked {
                    joined: vec![v1.clone()],
                    refused,
                },
            ],
        };
        let mut prepared = decoding.prepare(&records);
        let (_, columns) = prepared.columns(&records);
        assert!(columns[0].is_null(0));
        assert!(!columns[0].is_null(1) && !columns[0].is_null(2));
        assert_eq!(
            prepared.failures(),
            vec![(Side::Value, Failure::Incompatible, 1)]
        );
        let schemas = prepared.spec().value.unwrap().schemas;
        assert_eq!(
            schemas.keys().collect::<Vec<_>>(),
            vec![&1],
            "only schemas of decoded values are in the footer"
        );
    }
}

#[test]
fn a_footer_holds_a_bounded_amount_of_schema_text() {
    let big = |name: &str| {
        format!(
            r#"{{"type":"record","name":"{name}","doc":"{}","fields":[{{"name":"a","type":"long"}}]}}"#,
            "d".repeat(SPEC_TEXT_LIMIT * 2 / 3)
        )
    };
    let side = registry(&[(1, text("AVRO", &big("A"))), (2, text("AVRO", &big("B")))]);
    let body = avro(&big("A"), vec![("a", AvroValue::Long(7))]);
    let records = vec![
        record(0, Some(framed(1, &body))),
        record(1, Some(framed(2, &body))),
        record(2, Some(framed(1, &body))),
    ];
    let decoding = Decoding {
        key: None,
        value: Some(side),
        checked: Default::default(),
    };
    let mut prepared = decoding.prepare(&records);
    let _ = prepared.columns(&records);
    let spec = prepared.spec().value.unwrap();
    assert_eq!(spec.schemas.keys().collect::<Vec<_>>(), vec![&1]);
    assert_eq!(spec.decoded, 2);
    assert_eq!(spec.failed, BTreeMap::from([("incompatible".into(), 1)]));
}

#[test]
fn avro_union_branches_whose_names_read_the_same_get_apart() {
    let schema = r#"{"type":"record","name":"R","fields":[{"name":"u","type":["null",
        {"type":"record","namespace":"a","name":"b_c","fields":[{"name":"x","type":"long"}]},
        {"type":"record","namespace":"a_b","name":"c","fields":[{"name":"y","type":"string"}]}]}]}"#;
    let codec = Codec::parse(text("AVRO", schema)).unwrap();
    let shape = codec.shape(&[]).unwrap();
    let DataType::Struct(fields) = &*shape else {
        panic!("{shape:?}")
    };
    let DataType::Struct(branches) = fields[0].data_type() else {
        panic!("{shape:?}")
    };
    let names: Vec<&str> = branches.iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, vec!["a_b_c_1", "a_b_c_2"]);
    // Branch 2 (`a_b.c`) with y = "z": its value goes to its own field.
    let body = [0x04, 0x02, b'z'];
    assert_eq!(
        codec.decode_alone(&body).unwrap(),
        Datum::Record(vec![(
            "u".into(),
            Datum::Record(vec![(
                "a_b_c_2".into(),
                Datum::Record(vec![("y".into(), Datum::Str("z".into()))])
            )])
        )])
    );
}

#[test]
fn a_column_too_wide_for_the_footer_of_its_row_groups_is_left_out() {
    let decoding = declared(&wide_object(3000));
    let records: Vec<Record> = (0..3).map(|i| record(i, Some(b"{}".to_vec()))).collect();
    // One row group: 3,000 columns fit.
    let mut prepared = decoding.prepare(&records);
    prepared.fit_footer(1);
    assert_eq!(prepared.fields().len(), 1);
    // Sixteen: some 12 MiB of column metadata, left out.
    let mut prepared = decoding.prepare(&records);
    prepared.fit_footer(16);
    assert!(prepared.fields().is_empty());
    assert!(prepared.columns(&records).1.is_empty());
    assert_eq!(
        prepared.failures(),
        vec![(Side::Value, Failure::Incompatible, 3)]
    );
}

/// A JSON Schema of an object of `n` integer properties, `p0` and on.
fn wide_object(n: usize) -> String {
    let properties: Vec<String> = (0..n)
        .map(|i| format!(r#""p{i}":{{"type":"integer"}}"#))
        .collect();
    format!(
        r#"{{"type":"object","properties":{{{}}}}}"#,
        properties.join(",")
    )
}

/// Values decoded by the declared JSON Schema `schema`.
fn declared(schema: &str) -> Decoding {
    Decoding {
        key: None,
        value: Some(SideDecoding::Declared(Arc::new(
            Codec::parse(text("JSON", schema)).unwrap(),
        ))),
        checked: Default::default(),
    }
}

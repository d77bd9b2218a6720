use proptest::prelude::*;

use super::*;

fn h(key: &str, value: Option<&[u8]>) -> Header {
    Header {
        key: key.to_string(),
        value: value.map(<[u8]>::to_vec),
    }
}

fn sample() -> Vec<Record> {
    vec![
        Record {
            offset: 10,
            timestamp: Some(1_795_428_900_000),
            timestamp_type: Some(TimestampType::Create),
            key: Some(b"order-1".to_vec()),
            value: Some(b"{}".to_vec()),
            headers: vec![
                h("trace", Some(b"a")),
                h("trace", Some(b"b")),
                h("null", None),
                h("", Some(b"")),
            ],
        },
        Record {
            offset: 11,
            timestamp: None,
            timestamp_type: None,
            key: None,
            value: Some(vec![0, 255, 0xc3, 0x28]),
            headers: vec![],
        },
        Record {
            offset: 14,
            timestamp: Some(1_600_000_000_000),
            timestamp_type: Some(TimestampType::LogAppend),
            key: Some(vec![]),
            value: None,
            headers: vec![h("x", None)],
        },
    ]
}

#[test]
fn records_and_footer_round_trip() {
    let records = sample();
    let meta = file_meta(
        "orders",
        3,
        10,
        15,
        &records,
        "cluster-1",
        1_795_428_900_456,
    );
    assert_eq!(
        (meta.min_timestamp, meta.max_timestamp),
        (Some(1_600_000_000_000), Some(1_795_428_900_000))
    );
    let bytes = encode(&meta, &records).unwrap();
    assert_eq!(read_meta(bytes.clone()).unwrap(), meta);
    let (decoded_meta, decoded) = decode(bytes).unwrap();
    assert_eq!(decoded_meta, meta);
    assert_eq!(decoded, records);
}

#[test]
fn the_file_carries_statistics_page_index_and_key_bloom_filter() {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::file::serialized_reader::ReadOptionsBuilder;

    let records: Vec<Record> = (0..20_000)
        .map(|i| Record {
            offset: 100 + i,
            timestamp: Some(1_795_428_900_000 + i),
            timestamp_type: Some(TimestampType::Create),
            key: Some(format!("key-{i}").into_bytes()),
            value: Some(vec![b'v'; 100]),
            headers: vec![],
        })
        .collect();
    let meta = file_meta("t", 0, 100, 20_100, &records, "c", 0);
    let bytes = encode(&meta, &records).unwrap();
    let options = ReadOptionsBuilder::new().build();
    let reader = SerializedFileReader::new_with_options(bytes, options).unwrap();
    let md = reader.metadata();
    let rg = md.row_group(0);
    let schema = rg.schema_descr();
    let idx = |name: &str| {
        (0..schema.num_columns())
            .find(|&i| schema.column(i).path().string() == name)
            .unwrap()
    };
    let offset_stats = rg.column(idx("offset")).statistics().unwrap();
    assert_eq!(
        offset_stats.min_bytes_opt(),
        Some(&100i64.to_le_bytes()[..])
    );
    assert_eq!(
        offset_stats.max_bytes_opt(),
        Some(&20_099i64.to_le_bytes()[..])
    );
    for column in ["offset", "timestamp"] {
        let chunk = rg.column(idx(column));
        assert!(
            chunk.column_index_offset().is_some(),
            "column index of {column}"
        );
        assert!(
            chunk.offset_index_offset().is_some(),
            "offset index of {column}"
        );
    }
    assert!(
        rg.column(idx("key")).bloom_filter_offset().is_some(),
        "bloom filter on key"
    );
    assert!(format!("{:?}", rg.column(idx("value")).compression())
        .to_lowercase()
        .contains("zstd"));
}

#[test]
fn a_large_file_is_split_into_row_groups_and_reads_back_whole() {
    let records: Vec<Record> = (0..3_000)
        .map(|i| Record {
            offset: i,
            timestamp: Some(1_795_428_900_000 + i),
            timestamp_type: Some(TimestampType::LogAppend),
            key: (i % 3 != 0).then(|| i.to_be_bytes().to_vec()),
            // Incompressible values, so the row groups really fill up.
            value: Some(
                (0..1_000u64)
                    .map(|j| {
                        // splitmix64 of (record, byte): no pattern zstd could shrink.
                        let mut x = (i as u64) << 32 | j;
                        x = (x ^ (x >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
                        x = (x ^ (x >> 27)).wrapping_mul(0x94d049bb133111eb);
                        (x ^ (x >> 31)) as u8
                    })
                    .collect(),
            ),
            headers: vec![h("n", Some(&i.to_le_bytes()))],
        })
        .collect();
    let meta = file_meta("t", 0, 0, 3_000, &records, "c", 0);
    let bytes = Bytes::from(encode_to(&meta, &records, Vec::new(), 256 * 1024).unwrap());
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let reader = SerializedFileReader::new(bytes.clone()).unwrap();
    assert!(
        reader.metadata().num_row_groups() >= 4,
        "{} row groups",
        reader.metadata().num_row_groups()
    );
    let (got_meta, got) = decode(bytes).unwrap();
    assert_eq!(got_meta, meta);
    assert!(got == records, "multi-row-group file differs");
}

/// Records with incompressible values of `size` bytes, so that row groups really fill up.
fn incompressible(count: i64, size: u64) -> Vec<Record> {
    (0..count)
        .map(|i| Record {
            offset: i,
            timestamp: Some(1_795_428_900_000 + i),
            timestamp_type: Some(TimestampType::LogAppend),
            key: (i % 3 != 0).then(|| i.to_be_bytes().to_vec()),
            value: Some(
                (0..size)
                    .map(|j| {
                        let mut x = (i as u64) << 32 | j;
                        x = (x ^ (x >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
                        x = (x ^ (x >> 27)).wrapping_mul(0x94d049bb133111eb);
                        (x ^ (x >> 31)) as u8
                    })
                    .collect(),
            ),
            headers: vec![h("n", Some(&i.to_le_bytes()))],
        })
        .collect()
}

#[test]
fn every_byte_before_the_footer_is_under_a_checksum_inside_the_file() {
    let records = incompressible(3_000, 1_000);
    let meta = file_meta("t", 0, 0, 3_000, &records, "c", 0);
    let bytes = Bytes::from(encode_to(&meta, &records, Vec::new(), 256 * 1024).unwrap());
    let metadata = parquet::file::metadata::ParquetMetaDataReader::new()
        .parse_and_finish(&bytes)
        .unwrap();
    let footer = Footer::of(&metadata).unwrap();
    assert_eq!(
        footer.meta, meta,
        "the checksums leave the rewind.* keys alone"
    );
    let payload: usize = records.iter().map(Record::payload_len).sum();
    assert_eq!(
        footer.payload_bytes,
        Some(payload as u64),
        "keys, values and headers, as a restore counts them"
    );
    let sums = footer.checksums.expect("the footer holds the checksums");
    assert!(metadata.num_row_groups() >= 4);
    assert_eq!(sums.row_groups.len(), metadata.num_row_groups());
    let size = bytes.len() as u64;
    let f = integrity::footer_start(&bytes[bytes.len() - 8..], size).unwrap();
    assert_eq!(sums.data, crate::storage::crc32c(&bytes[..f as usize]));
    let slice = |r: std::ops::Range<u64>| &bytes[r.start as usize..r.end as usize];
    let mut covered = 4;
    for i in 0..metadata.num_row_groups() {
        let range = integrity::row_group_range(&metadata, i).unwrap();
        assert_eq!(range.start, covered, "row groups follow each other");
        sums.check_row_group(i, slice(range.clone())).unwrap();
        covered = range.end;
    }
    let index = integrity::index_range(&metadata, f).unwrap();
    assert_eq!(index.start, covered);
    assert!(index.end > index.start, "bloom filters and page index");
    sums.check_index(slice(index.clone())).unwrap();
    assert!(integrity::check_file(&bytes, Some(&sums)).unwrap());

    // One flipped bit anywhere before the footer: the whole-file readers refuse the file, and the
    // range it is in no longer checks.
    let second = integrity::row_group_range(&metadata, 1).unwrap();
    for at in [second.start + 100, index.start + 3, index.end - 1] {
        let mut damaged = bytes.to_vec();
        damaged[at as usize] ^= 0x04;
        let damaged = Bytes::from(damaged);
        let err = decode(damaged.clone()).unwrap_err();
        assert!(matches!(err, DataFileError::Damaged(_)), "byte {at}: {err}");
        assert!(matches!(
            read_offsets(damaged.clone()),
            Err(DataFileError::Damaged(_))
        ));
        assert!(matches!(
            decode_rows(damaged.clone(), 1 << 20, |_| true),
            Err(DataFileError::Damaged(_))
        ));
        let part = |r: &std::ops::Range<u64>| &damaged[r.start as usize..r.end as usize];
        if second.contains(&at) {
            assert!(sums.check_row_group(1, part(&second)).is_err());
        } else {
            assert!(sums.check_index(part(&index)).is_err());
        }
    }
}

#[test]
fn the_footer_is_read_from_the_tail_alone() {
    let records = sample();
    let meta = file_meta("orders", 3, 10, 15, &records, "c", 1_795_428_900_456);
    let bytes = encode(&meta, &records).unwrap();
    let size = bytes.len() as u64;
    let need = match metadata_from_tail(&bytes.slice(bytes.len() - 8..), size).unwrap() {
        Err(n) => n,
        Ok(_) => panic!("8 bytes cannot hold the footer"),
    };
    assert!(need > 8 && need < bytes.len(), "{need}");
    let tail = bytes.slice(bytes.len() - need..);
    let metadata = metadata_from_tail(&tail, size).unwrap().unwrap();
    let footer = Footer::of(&metadata).unwrap();
    assert_eq!(footer.meta, meta);
    assert_eq!(footer.rows, meta.record_count);
    assert_eq!(footer.offsets.map(|(_, hi)| hi + 1), Some(meta.end));
    assert_eq!(footer.timestamps.map(|(lo, _)| lo), meta.min_timestamp);
    assert!(footer.key_bloom_filter);
}

#[test]
fn chunks_and_offsets_agree_with_a_full_decode() {
    let records: Vec<Record> = (0..20_000)
        .map(|i| Record {
            offset: 100 + 2 * i,
            timestamp: (i % 7 != 0).then_some(1_795_428_900_000 + i),
            timestamp_type: Some(TimestampType::Create),
            key: Some(i.to_le_bytes().to_vec()),
            value: Some(vec![b'v'; 50]),
            headers: vec![],
        })
        .collect();
    let meta = file_meta("t", 0, 100, 40_100, &records, "c", 0);
    let bytes = encode(&meta, &records).unwrap();
    let mut chunks = Vec::new();
    let got = decode_chunks(bytes.clone(), 256 * 1024, |c| {
        chunks.push(c);
        true
    })
    .unwrap();
    assert_eq!(got, meta);
    assert!(chunks.len() > 2, "{} chunks", chunks.len());
    assert!(chunks.concat() == records);
    let mut first = None;
    decode_chunks(bytes.clone(), 1, |c| {
        first = Some(c);
        false
    })
    .unwrap();
    // Batches follow the chunk size: a 1-byte chunk is one record.
    assert_eq!(first.unwrap()[..], records[..1]);
    let offsets = read_offsets(bytes).unwrap();
    let expected: Vec<_> = records.iter().map(|r| (r.offset, r.timestamp)).collect();
    assert_eq!(offsets, expected);
}

/// What `decode_rows` reads in place, copied out as records (offset, timestamp, key, value,
/// headers: what a restore sends).
fn owned(rows: &Rows) -> Vec<Record> {
    let view = rows.view();
    (0..rows.len())
        .map(|i| Record {
            offset: view.offset(i),
            timestamp: view.timestamp(i),
            timestamp_type: None,
            key: view.key(i).map(<[u8]>::to_vec),
            value: view.value(i).map(<[u8]>::to_vec),
            headers: view.headers(i).map(|(k, v)| h(k, v)).collect(),
        })
        .collect()
}

#[test]
fn rows_read_in_place_equal_the_records_and_slice_by_offset() {
    let mut records = sample();
    // More rows than one batch of a 1-byte chunk, with headers on rows of later batches too.
    for i in 0..50 {
        let mut r = records[i % 3].clone();
        r.offset = 20 + i as i64;
        records.push(r);
    }
    let meta = file_meta("t", 0, 10, 70, &records, "c", 0);
    let bytes = encode(&meta, &records).unwrap();
    let untyped = |rs: &[Record]| -> Vec<Record> {
        rs.iter()
            .cloned()
            .map(|r| Record {
                timestamp_type: None,
                ..r
            })
            .collect()
    };
    for chunk in [1, 256, 1 << 20] {
        let mut got = Vec::new();
        let mut batches = 0;
        let read = decode_rows(bytes.clone(), chunk, |rows| {
            assert_eq!(rows.view().offsets().len(), rows.len());
            got.extend(owned(&rows));
            batches += 1;
            true
        })
        .unwrap();
        assert_eq!(read, meta);
        assert_eq!(got, untyped(&records), "chunk of {chunk} bytes");
        if chunk == 1 {
            assert_eq!(batches, records.len());
        }
    }
    // A slice keeps its rows' headers (list offsets into the whole batch's header values).
    decode_rows(bytes, 1 << 20, |rows| {
        let slice = rows.slice(2, 5);
        assert_eq!(owned(&slice), untyped(&records[2..7]));
        assert!(slice.memory() > 0);
        false
    })
    .unwrap();
}

#[test]
fn foreign_parquet_is_refused() {
    let err = decode(Bytes::from_static(b"PAR1 not really")).unwrap_err();
    assert!(matches!(err, DataFileError::Parquet(_)), "{err:?}");
}

type RawRecord = (
    Option<i64>,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Vec<(String, Option<Vec<u8>>)>,
);

fn arb_record() -> impl Strategy<Value = RawRecord> {
    (
        prop::option::of(-1_000_000_000_000i64..5_000_000_000_000),
        prop::option::of(prop::collection::vec(any::<u8>(), 0..20)),
        prop::option::of(prop::collection::vec(any::<u8>(), 0..50)),
        prop::collection::vec(
            (
                "[a-z]{0,4}",
                prop::option::of(prop::collection::vec(any::<u8>(), 0..6)),
            ),
            0..4,
        ),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn any_records_round_trip(raw in prop::collection::vec(arb_record(), 1..60)) {
        let records: Vec<Record> = raw
            .into_iter()
            .enumerate()
            .map(|(i, (ts, key, value, headers))| Record {
                offset: i as i64 * 2,
                timestamp: ts,
                timestamp_type: ts.map(|_| TimestampType::Create),
                key,
                value,
                headers: headers.into_iter().map(|(k, v)| Header { key: k, value: v }).collect(),
            })
            .collect();
        let end = records.last().unwrap().offset + 1;
        let meta = file_meta("p", 0, 0, end, &records, "c", 0);
        let (m, decoded) = decode(encode(&meta, &records).unwrap()).unwrap();
        prop_assert_eq!(m, meta);
        prop_assert_eq!(decoded, records);
    }
}

/// `bytes` with the first page's header claiming `claim` uncompressed bytes (its varint grows, so
/// what follows shifts; the decoder meets this header first).
pub(crate) fn claim_uncompressed(bytes: &[u8], claim: i32) -> Bytes {
    // Page header at byte 4: field 1 (i32 type), then field 2 (i32 uncompressed size).
    assert_eq!(bytes[4], 0x15);
    let mut at = 5;
    while bytes[at] & 0x80 != 0 {
        at += 1;
    }
    at += 1;
    assert_eq!(bytes[at], 0x15);
    let start = at + 1;
    let mut end = start;
    while bytes[end] & 0x80 != 0 {
        end += 1;
    }
    let mut zigzag = ((claim << 1) ^ (claim >> 31)) as u32;
    let mut varint = Vec::new();
    loop {
        let b = (zigzag & 0x7f) as u8;
        zigzag >>= 7;
        if zigzag == 0 {
            varint.push(b);
            break;
        }
        varint.push(b | 0x80);
    }
    let mut out = bytes[..start].to_vec();
    out.extend_from_slice(&varint);
    out.extend_from_slice(&bytes[end + 1..]);
    Bytes::from(out)
}

#[test]
fn a_page_claiming_a_huge_size_is_refused_before_it_is_decoded() {
    let records = sample();
    let meta = file_meta("orders", 3, 10, 15, &records, "c", 0);
    // A file without checksums inside it: nothing else stands between a crafted header and the
    // decoder.
    let bytes = encode_without_checksums(&meta, &records);
    decode(bytes.clone()).unwrap();
    let hostile = claim_uncompressed(&bytes, i32::MAX);
    for err in [
        decode(hostile.clone()).unwrap_err(),
        read_offsets(hostile.clone()).unwrap_err(),
        decode_rows(hostile.clone(), 1 << 20, |_| true).unwrap_err(),
    ] {
        let message = err.to_string();
        assert!(
            message.contains("row group 0, column 0")
                && message.contains("claims 2147483647 uncompressed bytes"),
            "{message}"
        );
    }
    // A claim within the limit but beyond the chunk's data is the decoder's to refuse, and it does.
    let wrong = claim_uncompressed(&bytes, 1 << 20);
    assert!(decode(wrong).is_err());
}

#[test]
fn row_groups_read_alone_give_back_the_file_and_refuse_damage() {
    let records = incompressible(3_000, 1_000);
    let meta = file_meta("t", 0, 0, 3_000, &records, "c", 0);
    let bytes = Bytes::from(encode_to(&meta, &records, Vec::new(), 256 * 1024).unwrap());
    let size = bytes.len() as u64;
    // The footer from the tail alone, as a ranged reader gets it.
    let need = match metadata_from_tail(&bytes.slice(bytes.len() - 8..), size).unwrap() {
        Err(n) => n,
        Ok(_) => panic!("8 bytes cannot hold the footer"),
    };
    let parquet = metadata_from_tail(&bytes.slice(bytes.len() - need..), size)
        .unwrap()
        .unwrap();
    let groups = parquet.num_row_groups();
    assert!(groups >= 4, "{groups} row groups");
    let metadata = ArrowReaderMetadata::try_new(Arc::new(parquet), Default::default()).unwrap();
    let range_of = |g| integrity::row_group_range(metadata.metadata(), g).unwrap();
    let read = |g: usize, body: Bytes| {
        let mut got = Vec::new();
        decode_row_group(&metadata, g, range_of(g).start, body, 64 * 1024, |rows| {
            got.extend(records_of(&rows.batch).unwrap());
            true
        })
        .map(|()| got)
    };
    let mut got = Vec::new();
    for g in 0..groups {
        let range = range_of(g);
        got.extend(read(g, bytes.slice(range.start as usize..range.end as usize)).unwrap());
    }
    assert!(got == records, "the row groups together are the file");

    // A flipped bit in the row group is refused before anything is decoded.
    let second = range_of(1);
    let mut damaged = bytes
        .slice(second.start as usize..second.end as usize)
        .to_vec();
    damaged[100] ^= 0x04;
    let err = read(1, Bytes::from(damaged)).unwrap_err();
    assert!(matches!(err, DataFileError::Damaged(_)), "{err}");
    // So is another row group's bytes in its place, and a short read.
    let first = range_of(0);
    let err = read(1, bytes.slice(first.start as usize..first.end as usize)).unwrap_err();
    assert!(matches!(err, DataFileError::Damaged(_)), "{err}");
    let short = bytes.slice(second.start as usize..second.end as usize - 1);
    assert!(read(1, short).is_err());
    // The decoder gets no byte outside the row group it was handed.
    let window = Window {
        base: second.start,
        bytes: bytes.slice(second.start as usize..second.end as usize),
    };
    use parquet::file::reader::ChunkReader;
    assert!(window.get_bytes(second.start - 1, 10).is_err());
    assert!(window.get_bytes(second.end - 5, 10).is_err());
    assert_eq!(
        window.get_bytes(second.start, 4).unwrap(),
        bytes.slice(second.start as usize..second.start as usize + 4)
    );
}

proptest! {
    /// Whatever one row group's footer bounds say (a damaged footer: no checksum covers it), every
    /// row group that really holds offsets of the window is among those a reader reads.
    #[test]
    fn a_reader_reads_every_row_group_of_its_window_whatever_one_bound_says(
        sizes in proptest::collection::vec((1i64..50, 0i64..5), 1..8),
        from in 0i64..300,
        len in 0i64..300,
        damaged in 0usize..8,
        lie in (0i64..400, 0i64..400),
    ) {
        let mut bounds = Vec::new();
        let mut at = 0;
        for (rows, gap) in sizes {
            at += gap;
            bounds.push((at, at + rows - 1));
            at += rows;
        }
        let until = from + len;
        let mut said = bounds.clone();
        if let Some(b) = said.get_mut(damaged) {
            *b = (lie.0.min(lie.1), lie.0.max(lie.1));
        }
        let read = groups_holding(Some(&said), said.len(), from, until);
        for (g, &(min, max)) in bounds.iter().enumerate() {
            if max >= from && min < until {
                prop_assert!(read.contains(&g), "group {g} {:?} of {bounds:?} (said {said:?}) not in {read:?} for [{from}, {until})", (min, max));
            }
        }
        // Statistics that are missing or out of order: every group.
        prop_assert_eq!(groups_holding(None, 3, from, until), vec![0, 1, 2]);
    }
}

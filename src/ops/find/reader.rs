//! A data file in the store as `find` reads it: ranged requests, counted, with the file's tail
//! served again from memory, and every range past the footer checked against the checksums the
//! footer carries before it is used.
//!
//! Invariant: no byte reaches the Parquet decoder that a checksum refused.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::bloom_filter::Sbbf;
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader};

use super::TAIL_BYTES;
use crate::archive::datafile::{self, DataFileError};
use crate::storage::ObjectStore;

/// A data file in the store, read with ranged requests, counting the bytes it fetches.
pub(super) struct StoreReader {
    pub(super) store: Arc<dyn ObjectStore>,
    pub(super) key: String,
    pub(super) size: u64,
    pub(super) read: Arc<AtomicU64>,
    /// Byte ranges already read (the file's tail, its bloom filters), served again from memory:
    /// the footer, bloom filters and page index sit together at the end of a file.
    pub(super) cache: Vec<(u64, Bytes)>,
}

impl StoreReader {
    pub(super) fn cached(&self, range: &Range<u64>) -> Option<Bytes> {
        self.cache.iter().find_map(|(start, bytes)| {
            (range.start >= *start
                && range.start <= range.end
                && range.end <= start + bytes.len() as u64)
                .then(|| bytes.slice((range.start - start) as usize..(range.end - start) as usize))
        })
    }

    /// Read `range` (from memory when it was read before) and keep it for later reads.
    pub(super) async fn read_cached(
        &mut self,
        range: Range<u64>,
    ) -> parquet::errors::Result<Bytes> {
        if let Some(bytes) = self.cached(&range) {
            return Ok(bytes);
        }
        let start = range.start;
        let bytes = self.get_bytes(range).await?;
        self.cache.push((start, bytes.clone()));
        Ok(bytes)
    }

    /// Read the ranges not read yet, at once, and keep them.
    pub(super) async fn read_all_cached(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> parquet::errors::Result<()> {
        let missing: Vec<Range<u64>> = ranges
            .into_iter()
            .filter(|r| self.cached(r).is_none())
            .collect();
        if !missing.is_empty() {
            let read = self.get_byte_ranges(missing.clone()).await?;
            self.cache
                .extend(missing.into_iter().map(|r| r.start).zip(read));
        }
        Ok(())
    }

    /// Where the bloom filters and the page index are: between the last row group and the footer.
    pub(super) async fn index_range(
        &mut self,
        metadata: &ParquetMetaData,
    ) -> Result<Range<u64>, DataFileError> {
        let size = self.size;
        let last8 = self.read_cached(size.saturating_sub(8)..size).await?;
        let footer = datafile::integrity::footer_start(&last8, size)?;
        datafile::integrity::index_range(metadata, footer)
            .ok_or_else(|| DataFileError::Format("its row groups reach into its footer".into()))
    }

    /// Read the whole file (a file without checksums inside it) and check it against its stored
    /// checksum; false when it has none.
    pub(super) async fn read_whole(&mut self) -> Result<bool, DataFileError> {
        let got = self
            .store
            .get(&self.key)
            .await
            .map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))?;
        self.read
            .fetch_add(got.body.len() as u64, Ordering::Relaxed);
        let checked = match got.meta.crc32c {
            Some(stored) => {
                let actual = crate::storage::crc32c(&got.body);
                if actual != stored {
                    return Err(DataFileError::Damaged(format!(
                        "its bytes have CRC32C {actual:08x}, but it was stored with {stored:08x}"
                    )));
                }
                true
            }
            None => false,
        };
        self.size = got.body.len() as u64;
        self.cache = vec![(0, got.body)];
        Ok(checked)
    }

    /// The footer without the page index, from one read of the file's tail (most of the time).
    pub(super) async fn footer(&mut self) -> parquet::errors::Result<ParquetMetaData> {
        let size = self.size;
        let tail = self
            .read_cached(size.saturating_sub(TAIL_BYTES as u64)..size)
            .await?;
        let start = datafile::integrity::footer_start(&tail[tail.len().saturating_sub(8)..], size)
            .map_err(|e| parquet::errors::ParquetError::General(e.to_string()))?;
        if size - start > datafile::bounds::MAX_FOOTER_BYTES {
            return Err(parquet::errors::ParquetError::General(format!(
                "its footer claims {} bytes, more than the {} MiB a reader accepts",
                size - start,
                datafile::bounds::MAX_FOOTER_BYTES >> 20
            )));
        }
        ParquetMetaDataReader::new()
            .with_page_index_policy(PageIndexPolicy::Skip)
            .load_and_finish(self, size)
            .await
    }

    /// The groups whose bloom filter on `key` may hold `k` (groups without one are kept), reading
    /// the filters of all of them concurrently.
    pub(super) async fn bloom_filter_pass(
        &mut self,
        metadata: &ParquetMetaData,
        key: usize,
        groups: Vec<usize>,
        k: &[u8],
    ) -> parquet::errors::Result<Vec<usize>> {
        let ranges: Vec<Option<Range<u64>>> = groups
            .iter()
            .map(|&g| {
                let column = metadata.row_group(g).column(key);
                let offset = u64::try_from(column.bloom_filter_offset()?).ok()?;
                let length = u64::try_from(column.bloom_filter_length()?).ok()?;
                Some(offset..offset + length)
            })
            .collect();
        // Every filter not read yet, at once (in files Rewind writes they sit together before the
        // page index, usually inside the tail already read; other writers put each after its
        // row group).
        let missing: Vec<Range<u64>> = ranges
            .iter()
            .flatten()
            .filter(|r| self.cached(r).is_none())
            .cloned()
            .collect();
        if !missing.is_empty() {
            let read = self.get_byte_ranges(missing.clone()).await?;
            self.cache
                .extend(missing.into_iter().map(|r| r.start).zip(read));
        }
        let mut keep = Vec::with_capacity(groups.len());
        for (g, range) in groups.into_iter().zip(ranges) {
            let Some(range) = range else {
                keep.push(g);
                continue;
            };
            let bytes = self.read_cached(range).await?;
            if Sbbf::from_bytes(&bytes)?.check(k) {
                keep.push(g);
            }
        }
        Ok(keep)
    }

    /// `metadata` with the page index (column and offset indexes) added.
    pub(super) async fn page_index(
        &mut self,
        metadata: ParquetMetaData,
    ) -> parquet::errors::Result<ParquetMetaData> {
        let mut reader = ParquetMetaDataReader::new_with_metadata(metadata)
            .with_page_index_policy(PageIndexPolicy::Optional);
        reader.load_page_index(&mut *self).await?;
        reader.finish()
    }
}

impl AsyncFileReader for StoreReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move {
            if let Some(bytes) = self.cached(&range) {
                return Ok(bytes);
            }
            let bytes = self
                .store
                .get_range(&self.key, range)
                .await
                .map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))?;
            self.read.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            Ok(bytes)
        }
        .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move {
            futures::future::try_join_all(ranges.into_iter().map(|range| {
                let cached = self.cached(&range);
                let store = self.store.clone();
                let key = self.key.clone();
                let read = self.read.clone();
                async move {
                    if let Some(bytes) = cached {
                        return Ok(bytes);
                    }
                    let bytes = store
                        .get_range(&key, range)
                        .await
                        .map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))?;
                    read.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    Ok(bytes)
                }
            }))
            .await
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let metadata = self.footer().await?;
            Ok(Arc::new(self.page_index(metadata).await?))
        }
        .boxed()
    }
}

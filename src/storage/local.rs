//! The `file://` backend: an archive in a directory.
//!
//! Invariant: an object appears complete or not at all. Every write goes to a hidden temporary file
//! in the destination directory, is fsynced, and is then published atomically: create-only puts with
//! `link(2)` (which, like `O_EXCL`, fails when the name exists and never replaces it), overwrites and
//! compare-and-swap puts with `rename(2)` under an exclusive lock on the key, so two processes sharing
//! the directory get the same answers S3 gives them.
//!
//! Each file carries its CRC32C in the `user.rewind.crc32c` extended attribute (8 lowercase hex
//! digits), set on the temporary file before it is published, so a file never appears without it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::UNIX_EPOCH;

use async_trait::async_trait;
use bytes::Bytes;
use rand::Rng;
use xattr::FileExt;

use super::{
    check_key, GetResult, ListPage, MultipartUpload, ObjectMeta, ObjectStore, PutMode, PutResult,
    StorageError, StorageResult, StorageUrl,
};

/// Keys under this root folder belong to the backend (locks), never to the archive.
pub(super) const RESERVED_PREFIX: &str = ".rewind";
/// Temporary files end with this; listings skip them.
pub(super) const TMP_SUFFIX: &str = ".rewind-tmp";
/// The extended attribute holding a file's CRC32C.
pub const CRC32C_XATTR: &str = "user.rewind.crc32c";
const PAGE_SIZE: usize = 1000;
/// Number of lock files keys are spread over.
const LOCK_STRIPES: u64 = 1024;

/// An archive in a local directory.
#[derive(Debug, Clone)]
pub struct LocalStore {
    url: StorageUrl,
    root: PathBuf,
}

impl LocalStore {
    /// The archive in the directory a `file://` URL names, creating nothing: a directory that does
    /// not exist reads as an empty archive, and the first write creates the folders it needs.
    /// Readers open it through [`super::open_reader`], which refuses writes.
    pub fn open(url: StorageUrl) -> StorageResult<LocalStore> {
        let StorageUrl::Local { root } = &url else {
            return Err(StorageError::InvalidUrl {
                url: url.to_string(),
                reason: "not a file:// URL".into(),
            });
        };
        let root = root.clone();
        Ok(LocalStore { url, root })
    }

    /// Open the archive for writing, creating its directory when missing, so that a writer
    /// pointed at a place it cannot write learns it before it starts. The lock folder is made by
    /// the first write that needs it.
    pub fn create(url: StorageUrl) -> StorageResult<LocalStore> {
        let store = LocalStore::open(url)?;
        if !store.root.is_dir() {
            fs::create_dir_all(&store.root)
                .map_err(|e| store.io("create the archive directory", e))?;
        }
        Ok(store)
    }

    fn io(&self, op: &str, source: io::Error) -> StorageError {
        StorageError::Io {
            url: self.url.to_string(),
            op: op.to_string(),
            source,
        }
    }

    fn not_found(&self, key: &str) -> StorageError {
        StorageError::NotFound {
            url: self.url.to_string(),
            key: key.to_string(),
        }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// Map a file-system error on `key` to the error the trait promises.
    fn key_error(&self, op: &str, key: &str, err: io::Error) -> StorageError {
        if err.kind() == io::ErrorKind::NotFound {
            self.not_found(key)
        } else {
            self.io(&format!("{op} {key:?}"), err)
        }
    }

    async fn blocking<T, F>(&self, f: F) -> StorageResult<T>
    where
        T: Send + 'static,
        F: FnOnce(LocalStore) -> StorageResult<T> + Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(store))
            .await
            .map_err(|e| StorageError::Other {
                url: self.url.to_string(),
                op: "blocking task".into(),
                message: e.to_string(),
            })?
    }

    /// A new hidden temporary file beside where `key` will live.
    fn temp_file(&self, key: &str) -> StorageResult<(PathBuf, File)> {
        let path = self.path(key);
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        fs::create_dir_all(&dir)
            .map_err(|e| self.io(&format!("create the folder of {key:?}"), e))?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("object");
        let tmp = dir.join(format!(
            ".{}.{:016x}{TMP_SUFFIX}",
            name,
            rand::rng().random::<u64>()
        ));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| self.io(&format!("create a temporary file for {key:?}"), e))?;
        Ok((tmp, file))
    }

    /// Publish a fully written and synced temporary file as `key`, honouring `mode`.
    fn publish(&self, tmp: &Path, key: &str, mode: &PutMode) -> StorageResult<PutResult> {
        let path = self.path(key);
        // The published object is this very inode (link and rename keep inode, size and mtime), so
        // its tag is known before publishing, with no window for another writer to slip in.
        let etag = fs::metadata(tmp)
            .map(|m| etag_of(&m))
            .map_err(|e| self.io(&format!("write {key:?}"), e))?;
        let result = match mode {
            PutMode::Create => self.link_new(tmp, &path, key),
            PutMode::Overwrite => {
                let _lock = self.lock(key)?;
                fs::rename(tmp, &path).map_err(|e| self.io(&format!("publish {key:?}"), e))
            }
            PutMode::Update { etag } => {
                let _lock = self.lock(key)?;
                let current = fs::metadata(&path).map_err(|e| self.key_error("read", key, e))?;
                if &etag_of(&current) != etag {
                    Err(StorageError::PreconditionFailed {
                        url: self.url.to_string(),
                        key: key.to_string(),
                    })
                } else {
                    fs::rename(tmp, &path).map_err(|e| self.io(&format!("publish {key:?}"), e))
                }
            }
        };
        // Whatever happened, the temporary name must not outlive this call.
        let _ = fs::remove_file(tmp);
        result?;
        sync_dir(path.parent().unwrap_or(&self.root))
            .map_err(|e| self.io(&format!("sync the folder of {key:?}"), e))?;
        Ok(PutResult { etag })
    }

    /// `link(2)` fails rather than replace an existing name: the local `If-None-Match: *`.
    fn link_new(&self, tmp: &Path, path: &Path, key: &str) -> StorageResult<()> {
        for _ in 0..3 {
            match fs::hard_link(tmp, path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    return Err(StorageError::AlreadyExists {
                        url: self.url.to_string(),
                        key: key.to_string(),
                    })
                }
                // A concurrent delete removed the (empty) folder between our mkdir and link.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if let Some(dir) = path.parent() {
                        fs::create_dir_all(dir)
                            .map_err(|e| self.io(&format!("create the folder of {key:?}"), e))?;
                    }
                }
                Err(e) => return Err(self.io(&format!("publish {key:?}"), e)),
            }
        }
        Err(self.io(
            &format!("publish {key:?}"),
            io::Error::other("its folder keeps disappearing"),
        ))
    }

    /// An exclusive advisory lock serialising replacements of one key across processes. Keys share
    /// a fixed set of lock files (stripes), so the lock folder stays small however many keys the
    /// archive ever held; two keys of one stripe merely wait for each other.
    fn lock(&self, key: &str) -> StorageResult<File> {
        let folder = self.root.join(RESERVED_PREFIX).join("locks");
        let path = folder.join(format!("{:03x}", fnv1a(key) % LOCK_STRIPES));
        let open = || {
            OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
        };
        let file = match open() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(&folder)
                    .map_err(|e| self.io("create the archive's lock folder", e))?;
                open()
            }
            other => other,
        }
        .map_err(|e| self.io(&format!("open the lock of {key:?}"), e))?;
        file.lock()
            .map_err(|e| self.io(&format!("lock {key:?}"), e))?;
        Ok(file)
    }

    fn write_temp(&self, key: &str, body: &[u8]) -> StorageResult<PathBuf> {
        let (tmp, mut file) = self.temp_file(key)?;
        let written = file
            .write_all(body)
            .and_then(|_| record_crc32c(&file, super::crc32c(body)))
            .and_then(|_| file.sync_all());
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(self.io(&format!("write {key:?}"), e));
        }
        Ok(tmp)
    }

    /// Every key under `dir` (relative to the root), skipping backend files.
    fn walk(&self, dir: &Path, out: &mut Vec<(String, fs::Metadata)>) -> io::Result<()> {
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(TMP_SUFFIX) || (dir == self.root && name == RESERVED_PREFIX) {
                continue;
            }
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                // Deleted while we walked: it is simply not part of this listing.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if meta.is_dir() {
                self.walk(&path, out)?;
            } else if let Ok(rel) = path.strip_prefix(&self.root) {
                out.push((rel.to_string_lossy().replace('\\', "/"), meta));
            }
        }
        Ok(())
    }

    /// The folder a prefix listing has to walk: the part of the prefix up to its last `/`.
    fn walk_root(&self, prefix: &str) -> PathBuf {
        match prefix.rfind('/') {
            Some(i) => self.root.join(&prefix[..i]),
            None => self.root.clone(),
        }
    }

    fn meta(&self, key: String, meta: &fs::Metadata, crc32c: Option<u32>) -> ObjectMeta {
        ObjectMeta {
            key,
            size: meta.len(),
            etag: etag_of(meta),
            last_modified: meta.modified().ok(),
            crc32c,
        }
    }
}

/// Keep `crc` with the file. A filesystem without extended attributes gets files without it (and one
/// warning): `verify` then reports them as unchecked rather than the sink refusing to run.
fn record_crc32c(file: &File, crc: u32) -> io::Result<()> {
    static WARNED: AtomicBool = AtomicBool::new(false);
    match file.set_xattr(CRC32C_XATTR, format!("{crc:08x}").as_bytes()) {
        Err(e) if e.kind() == io::ErrorKind::Unsupported => {
            if !WARNED.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "the archive's filesystem has no extended attributes: files are written without their CRC32C"
                );
            }
            Ok(())
        }
        other => other,
    }
}

/// The CRC32C a file was published with, if it has one.
fn read_crc32c(value: io::Result<Option<Vec<u8>>>) -> Option<u32> {
    let value = value.ok()??;
    u32::from_str_radix(std::str::from_utf8(&value).ok()?, 16).ok()
}

/// A version tag for a local file: a new file (every put writes one) gets a new inode, and the size
/// and modification time separate versions even if an inode number is reused.
fn etag_of(meta: &fs::Metadata) -> String {
    let nanos = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("\"{:x}-{:x}-{:x}\"", meta.ino(), meta.len(), nanos)
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[async_trait]
impl ObjectStore for LocalStore {
    async fn put(&self, key: &str, body: Bytes, mode: PutMode) -> StorageResult<PutResult> {
        check_key(key)?;
        let key = key.to_string();
        self.blocking(move |store| {
            let tmp = store.write_temp(&key, &body)?;
            store.publish(&tmp, &key, &mode)
        })
        .await
    }

    async fn get(&self, key: &str) -> StorageResult<GetResult> {
        check_key(key)?;
        let key = key.to_string();
        self.blocking(move |store| {
            let mut file =
                File::open(store.path(&key)).map_err(|e| store.key_error("read", &key, e))?;
            // Metadata from the open handle describes exactly the version being read.
            let meta = file
                .metadata()
                .map_err(|e| store.key_error("read", &key, e))?;
            let mut body = Vec::with_capacity(meta.len() as usize);
            file.read_to_end(&mut body)
                .map_err(|e| store.key_error("read", &key, e))?;
            let crc = read_crc32c(file.get_xattr(CRC32C_XATTR));
            Ok(GetResult {
                meta: store.meta(key, &meta, crc),
                body: Bytes::from(body),
            })
        })
        .await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> StorageResult<Bytes> {
        check_key(key)?;
        let key = key.to_string();
        self.blocking(move |store| {
            let mut file =
                File::open(store.path(&key)).map_err(|e| store.key_error("read", &key, e))?;
            let size = file
                .metadata()
                .map_err(|e| store.key_error("read", &key, e))?
                .len();
            let end = range.end.min(size);
            if range.start >= end {
                if range.is_empty() {
                    return Ok(Bytes::new());
                }
                return Err(StorageError::InvalidRange {
                    url: store.url.to_string(),
                    key,
                    start: range.start,
                    end: range.end,
                });
            }
            let mut body = vec![0; (end - range.start) as usize];
            file.seek(SeekFrom::Start(range.start))
                .and_then(|_| file.read_exact(&mut body))
                .map_err(|e| store.key_error("read", &key, e))?;
            Ok(Bytes::from(body))
        })
        .await
    }

    async fn head(&self, key: &str) -> StorageResult<ObjectMeta> {
        check_key(key)?;
        let key = key.to_string();
        self.blocking(move |store| {
            let path = store.path(&key);
            let meta = fs::metadata(&path).map_err(|e| store.key_error("read", &key, e))?;
            if meta.is_dir() {
                return Err(store.not_found(&key));
            }
            let crc = read_crc32c(xattr::get(&path, CRC32C_XATTR));
            Ok(store.meta(key, &meta, crc))
        })
        .await
    }

    async fn list_page(&self, prefix: &str, token: Option<String>) -> StorageResult<ListPage> {
        let prefix = prefix.to_string();
        self.blocking(move |store| {
            let mut found = Vec::new();
            store
                .walk(&store.walk_root(&prefix), &mut found)
                .map_err(|e| store.io(&format!("list {prefix:?}"), e))?;
            found.retain(|(key, _)| {
                key.starts_with(&prefix) && token.as_deref().is_none_or(|t| key.as_str() > t)
            });
            found.sort_by(|a, b| a.0.cmp(&b.0));
            let more = found.len() > PAGE_SIZE;
            found.truncate(PAGE_SIZE);
            let next = if more {
                found.last().map(|(key, _)| key.clone())
            } else {
                None
            };
            let objects = found
                .into_iter()
                .map(|(key, meta)| store.meta(key, &meta, None))
                .collect();
            Ok(ListPage { objects, next })
        })
        .await
    }

    async fn list(&self, prefix: &str) -> StorageResult<Vec<ObjectMeta>> {
        // One walk instead of one per page.
        let prefix = prefix.to_string();
        self.blocking(move |store| {
            let mut found = Vec::new();
            store
                .walk(&store.walk_root(&prefix), &mut found)
                .map_err(|e| store.io(&format!("list {prefix:?}"), e))?;
            found.retain(|(key, _)| key.starts_with(&prefix));
            found.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(found
                .into_iter()
                .map(|(key, meta)| store.meta(key, &meta, None))
                .collect())
        })
        .await
    }

    async fn delete_many(&self, keys: &[String]) -> StorageResult<()> {
        for key in keys {
            check_key(key)?;
        }
        let keys = keys.to_vec();
        self.blocking(move |store| {
            for key in &keys {
                let _lock = store.lock(key)?;
                match fs::remove_file(store.path(key)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(store.io(&format!("delete {key:?}"), e)),
                }
                // Drop folders the delete emptied, so retention leaves no husks behind; a folder that
                // is not empty (or is being written to) stays.
                let mut dir = store.path(key).parent().map(Path::to_path_buf);
                while let Some(d) = dir {
                    if d == store.root || fs::remove_dir(&d).is_err() {
                        break;
                    }
                    dir = d.parent().map(Path::to_path_buf);
                }
            }
            Ok(())
        })
        .await
    }

    async fn start_multipart(
        &self,
        key: &str,
        mode: PutMode,
    ) -> StorageResult<Box<dyn MultipartUpload>> {
        check_key(key)?;
        let key = key.to_string();
        self.blocking(move |store| {
            let (tmp, file) = store.temp_file(&key)?;
            Ok(Box::new(LocalUpload {
                store,
                key,
                mode,
                tmp,
                file: Some(file),
                crc: 0,
            }) as Box<dyn MultipartUpload>)
        })
        .await
    }

    async fn incomplete_uploads(&self, prefix: &str) -> StorageResult<Vec<String>> {
        let prefix = prefix.to_string();
        self.blocking(move |store| {
            let mut keys: Vec<String> = store.temps(&prefix)?.into_iter().map(|(_, k)| k).collect();
            keys.sort();
            Ok(keys)
        })
        .await
    }

    async fn abort_incomplete_uploads(
        &self,
        prefix: &str,
        started_before: std::time::SystemTime,
    ) -> StorageResult<Vec<String>> {
        let prefix = prefix.to_string();
        self.blocking(move |store| {
            let mut keys = Vec::new();
            for (path, key) in store.temps(&prefix)? {
                // A temporary file still being written is younger than the cutoff.
                let old = fs::metadata(&path)
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t < started_before);
                if !old {
                    continue;
                }
                match fs::remove_file(&path) {
                    Ok(()) => keys.push(key),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(store.io("remove an abandoned temporary file", e)),
                }
            }
            keys.sort();
            Ok(keys)
        })
        .await
    }

    fn url(&self) -> &StorageUrl {
        &self.url
    }
}

impl LocalStore {
    /// The temporary files (writes in progress, or abandoned) under `prefix`, with the key each
    /// is being written for.
    fn temps(&self, prefix: &str) -> StorageResult<Vec<(PathBuf, String)>> {
        let mut found = Vec::new();
        collect_temps(&self.walk_root(prefix), &mut found)
            .map_err(|e| self.io("list incomplete uploads", e))?;
        Ok(found
            .into_iter()
            .filter_map(|path| {
                let key = path
                    .strip_prefix(&self.root)
                    .ok()
                    .and_then(|r| key_of_temp(&r.to_string_lossy()))
                    .filter(|k| k.starts_with(prefix))?;
                Some((path, key))
            })
            .collect())
    }
}

/// The key a temporary file `dir/.NAME.RANDOM.rewind-tmp` is being written for: `dir/NAME`.
fn key_of_temp(path: &str) -> Option<String> {
    let (dir, file) = path
        .rsplit_once('/')
        .map(|(d, f)| (Some(d), f))
        .unwrap_or((None, path));
    let name = file
        .strip_prefix('.')?
        .strip_suffix(TMP_SUFFIX)?
        .rsplit_once('.')?
        .0;
    Some(match dir {
        Some(dir) => format!("{dir}/{name}"),
        None => name.to_string(),
    })
}

fn collect_temps(dir: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            collect_temps(&path, out)?;
        } else if entry.file_name().to_string_lossy().ends_with(TMP_SUFFIX) {
            out.push(path);
        }
    }
    Ok(())
}

/// A multipart upload into a hidden temporary file, published like a put on completion.
struct LocalUpload {
    store: LocalStore,
    key: String,
    mode: PutMode,
    tmp: PathBuf,
    file: Option<File>,
    /// CRC32C of the parts written so far.
    crc: u32,
}

impl LocalUpload {
    fn take_file(&mut self) -> StorageResult<File> {
        self.file.take().ok_or_else(|| StorageError::Other {
            url: self.store.url.to_string(),
            op: format!("upload {:?}", self.key),
            message: "the upload already failed".into(),
        })
    }
}

#[async_trait]
impl MultipartUpload for LocalUpload {
    async fn put_part(&mut self, data: Bytes) -> StorageResult<()> {
        let mut file = self.take_file()?;
        let crc = self.crc;
        let (file, result) = tokio::task::spawn_blocking(move || {
            let result = file
                .write_all(&data)
                .map(|_| ::crc32c::crc32c_append(crc, &data));
            (file, result)
        })
        .await
        .map_err(|e| StorageError::Other {
            url: self.store.url.to_string(),
            op: "blocking task".into(),
            message: e.to_string(),
        })?;
        self.crc = result.map_err(|e| self.store.io(&format!("write {:?}", self.key), e))?;
        self.file = Some(file);
        Ok(())
    }

    async fn complete(mut self: Box<Self>) -> StorageResult<PutResult> {
        let file = self.take_file()?;
        let LocalUpload {
            store,
            key,
            mode,
            tmp,
            crc,
            ..
        } = *self;
        store
            .clone()
            .blocking(move |store| {
                if let Err(e) = record_crc32c(&file, crc).and_then(|_| file.sync_all()) {
                    let _ = fs::remove_file(&tmp);
                    return Err(store.io(&format!("write {key:?}"), e));
                }
                drop(file);
                store.publish(&tmp, &key, &mode)
            })
            .await
    }

    async fn abort(self: Box<Self>) -> StorageResult<()> {
        let LocalUpload {
            store,
            key,
            tmp,
            file,
            ..
        } = *self;
        drop(file);
        store
            .clone()
            .blocking(move |store| match fs::remove_file(&tmp) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(store.io(&format!("abort the upload of {key:?}"), e)),
            })
            .await
    }
}

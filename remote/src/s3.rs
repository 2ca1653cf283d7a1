//! [`S3Remote`]: the remote cache over `object_store`'s S3 client, with bounded
//! timeouts, verification of everything downloaded, and conditional manifests.
use crate::{parse_s3_url, OpenError, RemoteSettings};
use dml_artifacts::{ArtifactStore, DigestCheck, FileEntry, Manifest, StoreError};
use dml_pipeline::{error_chain, stage_key, FetchOutcome, RemoteCache, RemoteError, UploadOutcome};
use futures::stream::{self, StreamExt, TryStreamExt};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as ObjPath;
use object_store::{
    BackoffConfig, ClientConfigKey, GetOptions, GetRange, ObjectStore, PutMode, PutOptions,
    PutPayload, RetryConfig, WriteMultipart,
};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Bytes per ranged GET and per multipart part (S3's minimum part is 5 MiB).
const CHUNK: u64 = 8 << 20;
/// Files at least this large are uploaded in parts.
const MULTIPART_AT: u64 = 16 << 20;
/// Parts of one multipart upload in flight at once.
const PARTS_IN_FLIGHT: usize = 4;
/// How many of an artifact's files move at once, and how much file data they
/// may hold in memory together: many small files (2,400 JPEGs) are latency
/// bound and gain from overlapping; large ones are limited by the bytes.
const LIMITS: Limits = Limits {
    files: 16,
    bytes: 128 << 20,
};

/// A remote cache in an S3 bucket (or any S3-compatible store).
#[derive(Debug)]
pub struct S3Remote {
    location: String,
    prefix: String,
    /// Short timeouts, one retry: HEADs and manifests.
    probe: AmazonS3,
    /// Longer per-request timeouts, a few retries: files.
    transfer: AmazonS3,
    runtime: tokio::runtime::Runtime,
    lookup_timeout: Duration,
    upload_wait: Duration,
    skip: BTreeSet<String>,
    upload: bool,
    multipart_at: u64,
    /// Set on the first failure to reach the remote: not asked again this process.
    offline: AtomicBool,
    /// Keys refused as corrupt this process: their remote manifest is replaced on upload.
    refused: Mutex<HashSet<(String, String)>>,
}

/// One finished artifact on the remote, as `dml remote ls` shows it.
#[derive(Debug, Clone)]
pub struct RemoteObject {
    /// Stage name.
    pub stage: String,
    /// Key.
    pub key: String,
    /// Bytes stored under the key (files of every upload, plus the manifest).
    pub bytes: u64,
    /// When the manifest was written, RFC 3339.
    pub uploaded: String,
}

/// Why one operation failed, before it becomes a [`RemoteError`].
enum Failure {
    /// The remote did not answer as a working S3 store would.
    Remote(object_store::Error),
    /// Timed out.
    Timeout(&'static str),
    /// The remote's content is not what its manifest says.
    Refused(String),
    /// The local store.
    Store(StoreError),
}

impl From<object_store::Error> for Failure {
    fn from(e: object_store::Error) -> Self {
        Failure::Remote(e)
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Store(e)
    }
}

impl S3Remote {
    /// Opens `url` (`s3://bucket/prefix`) with the standard AWS environment
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
    /// `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, …). Nothing is sent yet.
    pub fn open(url: &str, settings: &RemoteSettings) -> Result<Self, OpenError> {
        settings.validate().map_err(OpenError::Invalid)?;
        let (bucket, prefix) = parse_s3_url(url).map_err(OpenError::Invalid)?;
        let lookup = Duration::from_secs_f64(settings.remote_timeout);
        let transfer = Duration::from_secs_f64(settings.remote_transfer_timeout);
        let build = |timeout: Duration, retries: usize, retry_timeout: Duration| {
            let ms = |d: Duration| format!("{}ms", d.as_millis().max(1));
            AmazonS3Builder::from_env()
                .with_bucket_name(&bucket)
                .with_config(
                    AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
                    ms(lookup),
                )
                .with_config(
                    AmazonS3ConfigKey::Client(ClientConfigKey::Timeout),
                    ms(timeout),
                )
                .with_retry(RetryConfig {
                    backoff: BackoffConfig {
                        init_backoff: Duration::from_millis(100),
                        max_backoff: Duration::from_secs(2),
                        base: 2.0,
                    },
                    max_retries: retries,
                    retry_timeout,
                })
                .build()
                .map_err(|e| OpenError::Client {
                    location: url.to_string(),
                    message: e.to_string(),
                })
        };
        let probe = build(lookup, 1, lookup)?;
        // Retries fit in one request's time: a request that timed out is not
        // tried again (the remote is then given up for the run).
        let transfer_store = build(transfer, 3, transfer)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(OpenError::Runtime)?;
        // A test hook: a smaller multipart threshold, so tests exercise parts
        // without writing 16 MiB files.
        let multipart_at = std::env::var("DML_REMOTE_MULTIPART_AT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(MULTIPART_AT);
        Ok(S3Remote {
            location: format!(
                "s3://{bucket}{}{prefix}",
                if prefix.is_empty() { "" } else { "/" }
            ),
            prefix,
            probe,
            transfer: transfer_store,
            runtime,
            lookup_timeout: lookup,
            upload_wait: Duration::from_secs_f64(settings.remote_upload_wait),
            skip: settings.remote_skip.iter().cloned().collect(),
            upload: settings.remote_upload,
            multipart_at,
            offline: AtomicBool::new(false),
            refused: Mutex::new(HashSet::new()),
        })
    }

    fn path(&self, rel: &str) -> ObjPath {
        if self.prefix.is_empty() {
            ObjPath::from(rel)
        } else {
            ObjPath::from(format!("{}/{rel}", self.prefix))
        }
    }

    fn manifest_path(&self, stage: &str, key: &str) -> ObjPath {
        self.path(&format!("objects/{stage}/{key}/manifest.json"))
    }

    fn file_path(&self, stage: &str, key: &str, entry: &FileEntry) -> ObjPath {
        self.path(&format!(
            "objects/{stage}/{key}/{}/{}",
            entry.blake3, entry.path
        ))
    }

    /// Turns a failure into the engine's error; a remote that cannot be
    /// reached is not asked again by this process.
    fn classify(&self, stage: &str, key: &str, f: Failure) -> RemoteError {
        match f {
            Failure::Refused(why) => {
                self.refused
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert((stage.to_string(), key.to_string()));
                RemoteError::Refused {
                    stage: stage.to_string(),
                    key: key.to_string(),
                    why,
                }
            }
            Failure::Store(e) => RemoteError::Store(e),
            Failure::Remote(e) => self.unavailable(error_chain(&e)),
            Failure::Timeout(what) => self.unavailable(format!(
                "{what} took longer than store.remote_timeout = {}s",
                self.lookup_timeout.as_secs_f64()
            )),
        }
    }

    fn unavailable(&self, message: String) -> RemoteError {
        if self.offline.swap(true, Ordering::SeqCst) {
            return RemoteError::Offline {
                location: self.location.clone(),
            };
        }
        RemoteError::Unavailable {
            location: self.location.clone(),
            message,
        }
    }

    fn check_online(&self) -> Result<(), RemoteError> {
        if self.offline.load(Ordering::SeqCst) {
            return Err(RemoteError::Offline {
                location: self.location.clone(),
            });
        }
        Ok(())
    }

    /// Runs `fut` with the lookup timeout.
    fn quick<T>(
        &self,
        what: &'static str,
        fut: impl Future<Output = Result<T, Failure>>,
    ) -> Result<T, Failure> {
        self.runtime.block_on(async {
            match tokio::time::timeout(self.lookup_timeout, fut).await {
                Ok(r) => r,
                Err(_) => Err(Failure::Timeout(what)),
            }
        })
    }

    /// Reads and checks the remote manifest of (stage, key); `None` if absent.
    fn remote_manifest(&self, stage: &str, key: &str) -> Result<Option<Manifest>, Failure> {
        let path = self.manifest_path(stage, key);
        let bytes = self.quick("reading a manifest", async {
            match self.probe.get(&path).await {
                Ok(r) => Ok(Some(r.bytes().await?)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(Failure::Remote(e)),
            }
        })?;
        let Some(bytes) = bytes else { return Ok(None) };
        parse_remote_manifest(stage, key, &bytes)
            .map(Some)
            .map_err(Failure::Refused)
    }

    fn fetch_inner(
        &self,
        stage: &str,
        key: &str,
        store: &ArtifactStore,
        progress: &MultiProgress,
    ) -> Result<FetchOutcome, Failure> {
        let Some(mut manifest) = self.remote_manifest(stage, key)? else {
            return Ok(FetchOutcome::Absent);
        };
        let staging = store.begin(stage, key)?;
        let bar = transfer_bar(progress, manifest.total_bytes(), &format!("fetch {stage}"));
        let dir = staging.dir().to_path_buf();
        // Downloads stream to disk: a file holds no more than a body frame in
        // memory, so only their number is bounded.
        self.runtime.block_on(bounded(
            &manifest.files,
            LIMITS,
            |_| 0,
            |entry| {
                let dest = dir.join(&entry.path);
                let path = self.file_path(stage, key, entry);
                let bar = bar.clone();
                async move { self.download(&path, &dest, entry, &bar).await }
            },
        ))?;
        bar.finish_and_clear();
        let expected: BTreeMap<String, (u64, String)> = manifest
            .files
            .iter()
            .map(|f| (f.path.clone(), (f.size, f.blake3.clone())))
            .collect();
        manifest
            .provenance
            .insert("fetched_from".into(), self.location.clone().into());
        // The commit hashes what is on disk once more: the artifact is exactly
        // the remote manifest's files, nothing more, nothing less.
        let committed = staging.commit(manifest)?;
        let got: BTreeMap<String, (u64, String)> = committed
            .files
            .iter()
            .map(|f| (f.path.clone(), (f.size, f.blake3.clone())))
            .collect();
        if got != expected {
            store.remove_object(stage, key)?;
            return Err(Failure::Refused(
                "the downloaded files differ from its manifest after the commit".into(),
            ));
        }
        Ok(FetchOutcome::Fetched {
            bytes: committed.total_bytes(),
        })
    }

    /// Downloads one file in ranges, hashing as it goes.
    async fn download(
        &self,
        path: &ObjPath,
        dest: &Path,
        entry: &FileEntry,
        bar: &ProgressBar,
    ) -> Result<(), Failure> {
        let io = |action: &'static str, p: &Path| StoreError::io(action, p.to_path_buf());
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(io("create", parent))?;
        }
        let mut file = std::fs::File::create(dest).map_err(io("create", dest))?;
        let mut hasher = blake3::Hasher::new();
        let mut offset = 0u64;
        let mut first = true;
        while first || offset < entry.size {
            let end = (offset + CHUNK).min(entry.size);
            let options = GetOptions {
                range: (end > offset).then_some(GetRange::Bounded(offset..end)),
                ..Default::default()
            };
            let result = match self.transfer.get_opts(path, options).await {
                Ok(r) => r,
                Err(object_store::Error::NotFound { .. }) => {
                    return Err(Failure::Refused(format!(
                        "its file `{}` is missing on the remote",
                        entry.path
                    )))
                }
                Err(e) => return Err(self.object_or_remote(path, entry, e).await),
            };
            if first && result.meta.size != entry.size {
                return Err(Failure::Refused(format!(
                    "its file `{}` has {} bytes on the remote, the manifest says {}",
                    entry.path, result.meta.size, entry.size
                )));
            }
            first = false;
            let mut body = result.into_stream();
            while let Some(chunk) = body.next().await {
                let chunk = chunk?;
                hasher.update(&chunk);
                file.write_all(&chunk).map_err(io("write", dest))?;
                offset += chunk.len() as u64;
                bar.inc(chunk.len() as u64);
            }
            if offset < end {
                return Err(Failure::Refused(format!(
                    "its file `{}` ended after {offset} bytes on the remote, the manifest says {}",
                    entry.path, entry.size
                )));
            }
        }
        if offset != entry.size {
            return Err(Failure::Refused(format!(
                "its file `{}` has {offset} bytes on the remote, the manifest says {}",
                entry.path, entry.size
            )));
        }
        if hasher.finalize().to_hex().as_str() != entry.blake3 {
            return Err(Failure::Refused(format!(
                "its file `{}` does not match the blake3 in its manifest",
                entry.path
            )));
        }
        // No fsync here: the commit fsyncs (and hashes) every file once more.
        Ok(())
    }

    /// A read of a file failed with something other than "not found". If the
    /// remote still answers a HEAD of the file, the object is what is wrong
    /// (a 0-byte object answers a range read with 416): it is refused, and the
    /// remote stays in use for every other artifact. If not, the remote is.
    async fn object_or_remote(
        &self,
        path: &ObjPath,
        entry: &FileEntry,
        error: object_store::Error,
    ) -> Failure {
        match tokio::time::timeout(self.lookup_timeout, self.probe.head(path)).await {
            Ok(Ok(meta)) if meta.size != entry.size => Failure::Refused(format!(
                "its file `{}` has {} bytes on the remote, the manifest says {}",
                entry.path, meta.size, entry.size
            )),
            Ok(Ok(_)) => Failure::Refused(format!(
                "its file `{}` cannot be read from the remote ({})",
                entry.path,
                error_chain(&error)
            )),
            Ok(Err(object_store::Error::NotFound { .. })) => Failure::Refused(format!(
                "its file `{}` is missing on the remote",
                entry.path
            )),
            Ok(Err(_)) | Err(_) => Failure::Remote(error),
        }
    }

    fn upload_inner(
        &self,
        stage: &str,
        key: &str,
        dir: &Path,
        progress: &MultiProgress,
    ) -> Result<UploadOutcome, Failure> {
        let manifest_file = dir.join("manifest.json");
        let manifest_bytes = std::fs::read(&manifest_file)
            .map_err(StoreError::io("read manifest", manifest_file.clone()))?;
        let manifest = Manifest::read(&manifest_file)?;
        check_manifest(stage, key, &manifest).map_err(|why| {
            Failure::Store(StoreError::BadManifest {
                path: manifest_file.clone(),
                message: why,
            })
        })?;
        let manifest_path = self.manifest_path(stage, key);
        let repair = self
            .refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(stage.to_string(), key.to_string()));
        if repair {
            // The manifest there names content that does not match it: replace it.
            self.quick("deleting a refused manifest", async {
                match self.probe.delete(&manifest_path).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(e) => Err(Failure::Remote(e)),
                }
            })?;
        } else {
            let there = self.quick("looking a key up", async {
                match self.probe.head(&manifest_path).await {
                    Ok(_) => Ok(true),
                    Err(object_store::Error::NotFound { .. }) => Ok(false),
                    Err(e) => Err(Failure::Remote(e)),
                }
            })?;
            if there {
                return Ok(UploadOutcome::AlreadyThere);
            }
        }
        // Files already there with their size (an upload cut off earlier) are
        // not sent again: one listing of the key, not one HEAD per file.
        let there: HashMap<String, u64> = if repair {
            HashMap::new()
        } else {
            let prefix = self.path(&format!("objects/{stage}/{key}"));
            self.runtime.block_on(
                self.transfer
                    .list(Some(&prefix))
                    .map_ok(|m| (m.location.to_string(), m.size))
                    .try_collect(),
            )?
        };
        let bar = transfer_bar(progress, manifest.total_bytes(), &format!("upload {stage}"));
        let multipart_at = self.multipart_at;
        let sent: Vec<u64> = self.runtime.block_on(bounded(
            &manifest.files,
            LIMITS,
            // What a file holds in memory while it goes up: all of it in one
            // request, or the parts in flight and the one being read.
            |entry| match entry.size < multipart_at {
                true => entry.size,
                false => (PARTS_IN_FLIGHT as u64 + 1) * CHUNK,
            },
            |entry| {
                let src = dir.join(&entry.path);
                let path = self.file_path(stage, key, entry);
                let done = there.get(path.as_ref()) == Some(&entry.size);
                let bar = bar.clone();
                async move {
                    if done {
                        bar.inc(entry.size);
                        return Ok(0);
                    }
                    self.upload_file(&path, &src, entry, &bar).await
                }
            },
        ))?;
        bar.finish_and_clear();
        // Last, and only if no other uploader's manifest got there first.
        let put = self.runtime.block_on(self.transfer.put_opts(
            &manifest_path,
            PutPayload::from(manifest_bytes),
            PutOptions {
                mode: PutMode::Create,
                ..Default::default()
            },
        ));
        match put {
            Ok(_) => Ok(UploadOutcome::Uploaded {
                files: sent.iter().filter(|&&b| b > 0).count(),
                bytes: sent.iter().sum(),
            }),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(UploadOutcome::AlreadyThere),
            Err(e) => Err(Failure::Remote(e)),
        }
    }

    /// Uploads one file; returns the bytes sent.
    async fn upload_file(
        &self,
        path: &ObjPath,
        src: &Path,
        entry: &FileEntry,
        bar: &ProgressBar,
    ) -> Result<u64, Failure> {
        let io = |action: &'static str| StoreError::io(action, src.to_path_buf());
        let mut file = std::fs::File::open(src).map_err(io("open"))?;
        if entry.size < self.multipart_at {
            let mut data = Vec::with_capacity(entry.size as usize);
            file.read_to_end(&mut data).map_err(io("read"))?;
            if data.len() as u64 != entry.size {
                return Err(Failure::Store(StoreError::NotFound(format!(
                    "`{}` changed since its artifact was committed; run `dml run --verify`",
                    src.display()
                ))));
            }
            self.transfer.put(path, PutPayload::from(data)).await?;
            bar.inc(entry.size);
            return Ok(entry.size);
        }
        let upload = self.transfer.put_multipart(path).await?;
        let mut parts = WriteMultipart::new_with_chunk_size(upload, CHUNK as usize);
        let mut buf = vec![0u8; CHUNK as usize];
        let mut sent = 0u64;
        loop {
            let n = match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    let _ = parts.abort().await;
                    return Err(Failure::Store(io("read")(e)));
                }
            };
            if let Err(e) = parts.wait_for_capacity(PARTS_IN_FLIGHT).await {
                let _ = parts.abort().await;
                return Err(Failure::Remote(e));
            }
            parts.write(&buf[..n]);
            sent += n as u64;
            bar.inc(n as u64);
        }
        parts.finish().await?;
        Ok(sent)
    }

    /// Every finished artifact on the remote (those with a manifest), sorted.
    pub fn list(&self) -> Result<Vec<RemoteObject>, RemoteError> {
        self.check_online()?;
        let root = self.path("objects");
        let metas = self
            .runtime
            .block_on(self.probe.list(Some(&root)).try_collect::<Vec<_>>())
            .map_err(|e| self.classify("", "", Failure::Remote(e)))?;
        let mut sizes: BTreeMap<(String, String), u64> = BTreeMap::new();
        let mut manifests: BTreeMap<(String, String), String> = BTreeMap::new();
        let skip = if self.prefix.is_empty() {
            1
        } else {
            self.prefix.split('/').count() + 1
        };
        for m in metas {
            let parts: Vec<String> = m.location.parts().map(|p| p.as_ref().to_string()).collect();
            let Some([stage, key, rest @ ..]) = parts.get(skip..) else {
                continue;
            };
            let id = (stage.clone(), key.clone());
            *sizes.entry(id.clone()).or_default() += m.size;
            if rest.len() == 1 && rest[0] == "manifest.json" {
                manifests.insert(id, m.last_modified.to_rfc3339());
            }
        }
        Ok(manifests
            .into_iter()
            .map(|((stage, key), uploaded)| RemoteObject {
                bytes: sizes
                    .get(&(stage.clone(), key.clone()))
                    .copied()
                    .unwrap_or(0),
                stage,
                key,
                uploaded,
            })
            .collect())
    }

    /// Stores a run record under `runs/<file name>`.
    pub fn put_record(&self, file_name: &str, bytes: Vec<u8>) -> Result<(), RemoteError> {
        self.check_online()?;
        let path = self.path(&format!("runs/{file_name}"));
        self.runtime
            .block_on(self.transfer.put(&path, PutPayload::from(bytes)))
            .map(|_| ())
            .map_err(|e| self.classify("", "", Failure::Remote(e)))
    }

    /// The newest run record named `name` on the remote (any name when `None`):
    /// its file name and bytes.
    pub fn latest_record(
        &self,
        name: Option<&str>,
    ) -> Result<Option<(String, Vec<u8>)>, RemoteError> {
        self.check_online()?;
        let root = self.path("runs");
        let metas = self
            .runtime
            .block_on(self.probe.list(Some(&root)).try_collect::<Vec<_>>())
            .map_err(|e| self.classify("", "", Failure::Remote(e)))?;
        let suffix = name.map(|n| format!("-{}.json", dml_pipeline::file_safe(n)));
        let newest = metas
            .into_iter()
            .filter_map(|m| {
                m.location
                    .filename()
                    .map(|f| (f.to_string(), m.location.clone()))
            })
            .filter(|(f, _)| match &suffix {
                Some(s) => f.ends_with(s.as_str()),
                None => f.ends_with(".json"),
            })
            .max_by(|a, b| a.0.cmp(&b.0));
        let Some((file, path)) = newest else {
            return Ok(None);
        };
        let bytes = self
            .runtime
            .block_on(async { self.transfer.get(&path).await?.bytes().await })
            .map_err(|e| self.classify("", "", Failure::Remote(e)))?;
        Ok(Some((file, bytes.to_vec())))
    }

    /// Whether this remote takes uploads (`store.remote_upload`).
    pub fn uploads(&self) -> bool {
        self.upload
    }
}

impl RemoteCache for S3Remote {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn shares(&self, stage: &str) -> bool {
        !self.skip.contains(stage)
    }

    fn accepts_uploads(&self) -> bool {
        self.upload
    }

    fn contains_all(&self, items: &[(String, String)]) -> Result<Vec<bool>, RemoteError> {
        self.check_online()?;
        let heads = items.iter().map(|(stage, key)| {
            let path = self.manifest_path(stage, key);
            async move {
                match self.probe.head(&path).await {
                    Ok(_) => Ok(true),
                    Err(object_store::Error::NotFound { .. }) => Ok(false),
                    Err(e) => Err(Failure::Remote(e)),
                }
            }
        });
        self.quick("looking keys up", async {
            stream::iter(heads)
                .buffered(16)
                .try_collect::<Vec<bool>>()
                .await
        })
        .map_err(|f| self.classify("", "", f))
    }

    fn fetch(
        &self,
        stage: &str,
        key: &str,
        store: &ArtifactStore,
        progress: &MultiProgress,
    ) -> Result<FetchOutcome, RemoteError> {
        self.check_online()?;
        if !self.shares(stage) {
            return Ok(FetchOutcome::Absent);
        }
        self.fetch_inner(stage, key, store, progress)
            .map_err(|f| self.classify(stage, key, f))
    }

    fn upload(
        &self,
        stage: &str,
        key: &str,
        dir: &Path,
        progress: &MultiProgress,
    ) -> Result<UploadOutcome, RemoteError> {
        self.check_online()?;
        self.upload_inner(stage, key, dir, progress)
            .map_err(|f| self.classify(stage, key, f))
    }

    fn upload_wait(&self) -> Duration {
        self.upload_wait
    }

    fn give_up(&self) {
        self.offline.store(true, Ordering::SeqCst);
    }
}

/// How many transfers run at once, and how many bytes they may hold in memory together.
#[derive(Debug, Clone, Copy)]
struct Limits {
    files: usize,
    bytes: u64,
}

/// Runs `job` on every item, at most `limits.files` at once and with the
/// `weight`s of those running summing to at most `limits.bytes` (an item
/// heavier than that runs alone); the results in no particular order, or the
/// first error (the jobs still running are dropped).
async fn bounded<'a, T: 'a, R, E, Fut>(
    items: impl IntoIterator<Item = &'a T>,
    limits: Limits,
    weight: impl Fn(&T) -> u64,
    job: impl Fn(&'a T) -> Fut,
) -> Result<Vec<R>, E>
where
    Fut: Future<Output = Result<R, E>>,
{
    /// Permits are counted in 64 KiB units, so the budget fits a u32.
    const UNIT: u64 = 64 << 10;
    let budget = limits.bytes.div_ceil(UNIT).clamp(1, u32::MAX as u64) as u32;
    let memory = Semaphore::new(budget as usize);
    let memory = &memory;
    let jobs = items.into_iter().map(|item| {
        let units = (weight(item).div_ceil(UNIT).max(1)).min(budget as u64) as u32;
        let run = job(item);
        async move {
            // The semaphore is never closed: acquiring only waits.
            let _held = memory.acquire_many(units).await;
            run.await
        }
    });
    stream::iter(jobs)
        .buffer_unordered(limits.files.max(1))
        .try_collect()
        .await
}

/// Parses and checks a manifest downloaded for (stage, key): it must match its
/// own digest (an edit of any field, notes and provenance included, is
/// refused, not saved with a fresh digest), then [`check_manifest`].
fn parse_remote_manifest(stage: &str, key: &str, bytes: &[u8]) -> Result<Manifest, String> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| "its manifest.json is not UTF-8 text".to_string())?;
    let (manifest, digest) = Manifest::parse_checked(text)
        .map_err(|e| format!("its manifest.json is not valid: {e}"))?;
    match digest {
        DigestCheck::Valid => {}
        DigestCheck::Mismatch => return Err(
            "its manifest.json does not match its own digest (it was changed after it was written)"
                .into(),
        ),
        DigestCheck::Absent => {
            return Err(
                "its manifest.json has no digest (edited, or uploaded by an older dml)".into(),
            )
        }
    }
    check_manifest(stage, key, &manifest)?;
    Ok(manifest)
}

/// A manifest must name the stage and key it is stored under, its key must be
/// the hash of what it says the artifact was made from, and its file paths
/// must stay inside the artifact.
fn check_manifest(stage: &str, key: &str, m: &Manifest) -> Result<(), String> {
    if m.stage != stage || m.key != key {
        return Err(format!("its manifest names {} {}", m.stage, m.key));
    }
    let recomputed = stage_key(
        &m.stage,
        m.version,
        &m.settings,
        &m.inputs,
        m.fingerprint.as_deref(),
    );
    if recomputed != key {
        return Err(format!(
            "its manifest's settings and inputs hash to {recomputed}, not to its key"
        ));
    }
    for f in &m.files {
        let bad = f.path.is_empty()
            || f.path.starts_with('/')
            || f.path.contains('\\')
            || f.path == "manifest.json"
            || f.path
                .split('/')
                .any(|p| p.is_empty() || p == "." || p == "..");
        if bad {
            return Err(format!(
                "its manifest lists a file outside the artifact: `{}`",
                f.path
            ));
        }
        if f.blake3.len() != 64 || !f.blake3.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "its file `{}` has no valid blake3 in the manifest",
                f.path
            ));
        }
    }
    Ok(())
}

/// A byte progress bar for one artifact's transfer, hidden when stderr is not a terminal.
fn transfer_bar(progress: &MultiProgress, total: u64, prefix: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden());
    if let Ok(style) = ProgressStyle::with_template(
        "{prefix:>16} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    let bar = progress.add(bar);
    bar.set_prefix(prefix.to_string());
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn manifest(stage: &str) -> Manifest {
        let settings = json!({"plan": {"p": 4}});
        let inputs = BTreeMap::new();
        Manifest {
            stage: stage.into(),
            key: stage_key(stage, 1, &settings, &inputs, None),
            version: 1,
            settings,
            inputs,
            fingerprint: None,
            files: vec![FileEntry {
                path: "plan.parquet".into(),
                size: 3,
                blake3: blake3::hash(b"abc").to_hex().to_string(),
                mtime_ns: 0,
            }],
            notes: serde_json::Value::Null,
            provenance: Default::default(),
        }
    }

    #[test]
    fn a_manifest_must_hash_to_its_key_and_keep_its_files_inside() {
        let m = manifest("plan");
        let key = m.key.clone();
        assert!(check_manifest("plan", &key, &m).is_ok());
        assert!(check_manifest("index", &key, &m)
            .unwrap_err()
            .contains("names plan"));
        let mut forged = m.clone();
        forged.settings = json!({"plan": {"p": 5}});
        assert!(check_manifest("plan", &key, &forged)
            .unwrap_err()
            .contains("hash to"));
        for bad in ["../x", "/etc/passwd", "a//b", "manifest.json", "a/./b"] {
            let mut evil = m.clone();
            evil.files[0].path = bad.into();
            let err = check_manifest("plan", &key, &evil).unwrap_err();
            assert!(err.contains("outside the artifact"), "{bad}: {err}");
        }
        let mut nohash = m.clone();
        nohash.files[0].blake3 = "zz".into();
        assert!(check_manifest("plan", &key, &nohash).is_err());
    }

    #[test]
    fn a_downloaded_manifest_must_match_its_own_digest() {
        let m = manifest("plan");
        let key = m.key.clone();
        let text = m.to_json_with_digest().unwrap();
        assert!(parse_remote_manifest("plan", &key, text.as_bytes()).is_ok());
        // An edit that keeps the key (notes are not part of it): refused.
        let edited = text.replace("\"notes\": null", "\"notes\": {\"recall@1\": 0.99}");
        assert_ne!(edited, text);
        let err = parse_remote_manifest("plan", &key, edited.as_bytes()).unwrap_err();
        assert!(err.contains("own digest"), "{err}");
        // Without its digest line: refused too (it could hide any edit).
        let bare = serde_json::to_string_pretty(&m).unwrap();
        let err = parse_remote_manifest("plan", &key, bare.as_bytes()).unwrap_err();
        assert!(err.contains("no digest"), "{err}");
        let err = parse_remote_manifest("plan", &key, b"").unwrap_err();
        assert!(err.contains("not valid"), "{err}");
    }

    /// Runs `bounded` over `weights` with jobs that sleep, and returns the
    /// most jobs and the most weight that ran at once.
    fn peaks(weights: &[u64], limits: Limits) -> (usize, u64) {
        use std::sync::atomic::AtomicU64;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (running, load) = (AtomicU64::new(0), AtomicU64::new(0));
        let (peak_running, peak_load) = (AtomicU64::new(0), AtomicU64::new(0));
        let done: Vec<u64> = runtime
            .block_on(bounded(
                weights,
                limits,
                |w| *w,
                |w| {
                    let (running, load) = (&running, &load);
                    let (peak_running, peak_load) = (&peak_running, &peak_load);
                    async move {
                        let r = running.fetch_add(1, Ordering::SeqCst) + 1;
                        let l = load.fetch_add(*w, Ordering::SeqCst) + *w;
                        peak_running.fetch_max(r, Ordering::SeqCst);
                        peak_load.fetch_max(l, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        running.fetch_sub(1, Ordering::SeqCst);
                        load.fetch_sub(*w, Ordering::SeqCst);
                        Ok::<u64, ()>(*w)
                    }
                },
            ))
            .unwrap();
        let mut sorted = done.clone();
        sorted.sort_unstable();
        let mut expected = weights.to_vec();
        expected.sort_unstable();
        assert_eq!(sorted, expected, "every job ran once");
        (
            peak_running.load(Ordering::SeqCst) as usize,
            peak_load.load(Ordering::SeqCst),
        )
    }

    #[test]
    fn transfers_overlap_up_to_the_file_count_and_the_memory_budget() {
        // Weights in the semaphore's 64 KiB units.
        let unit = 64 << 10;
        // Many small files: exactly `files` at once, not one after another.
        let limits = Limits {
            files: 16,
            bytes: 128 << 20,
        };
        assert_eq!(peaks(&[unit; 100], limits), (16, 16 * unit));
        // Large ones: as many as the budget holds (three of 3 units in a budget of 10).
        let limits = Limits {
            files: 16,
            bytes: 10 * unit,
        };
        let (files, bytes) = peaks(&[3 * unit; 12], limits);
        assert_eq!(files, 3);
        assert!(bytes <= 10 * unit, "{bytes}");
        // One heavier than the whole budget runs, alone.
        let (files, _) = peaks(&[100 * unit, unit, unit], limits);
        assert!(files <= 2);
        let (files, _) = peaks(&[100 * unit], limits);
        assert_eq!(files, 1);
        // The first error stops the rest.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let items: Vec<u64> = (0..50).collect();
        let r: Result<Vec<u64>, u64> = runtime.block_on(bounded(
            &items,
            limits,
            |_| 0,
            |i| {
                let i = *i;
                async move {
                    match i {
                        7 => Err(i),
                        _ => Ok(i),
                    }
                }
            },
        ));
        assert_eq!(r, Err(7));
    }

    #[test]
    fn an_unreachable_remote_is_one_warning_then_silence() {
        // Port 9 on the loopback: nothing listens, the connection is refused at once.
        std::env::set_var("AWS_ENDPOINT_URL", "http://127.0.0.1:9");
        std::env::set_var("AWS_ALLOW_HTTP", "true");
        std::env::set_var("AWS_ACCESS_KEY_ID", "test");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
        std::env::set_var("AWS_REGION", "us-east-1");
        let settings = RemoteSettings {
            remote_timeout: 2.0,
            ..RemoteSettings::default()
        };
        let remote = S3Remote::open("s3://nowhere/p", &settings).unwrap();
        let started = std::time::Instant::now();
        let items = vec![("plan".to_string(), "k".to_string())];
        let first = remote.contains_all(&items).unwrap_err();
        assert!(matches!(first, RemoteError::Unavailable { .. }), "{first}");
        assert!(first.to_string().contains("s3://nowhere/p"), "{first}");
        let second = remote.contains_all(&items).unwrap_err();
        assert!(matches!(second, RemoteError::Offline { .. }), "{second}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(!remote.shares("decode"));
        assert!(remote.shares("train"));
    }
}

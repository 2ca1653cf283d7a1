//! [`S3Remote`]: the remote cache over `object_store`'s S3 client, with bounded
//! timeouts, verification of everything downloaded, and conditional manifests.
use crate::{parse_s3_url, OpenError, RemoteSettings};
use dml_artifacts::{ArtifactStore, FileEntry, Manifest, StoreError};
use dml_pipeline::{error_chain, stage_key, FetchOutcome, RemoteCache, RemoteError, UploadOutcome};
use futures::stream::{self, StreamExt, TryStreamExt};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as ObjPath;
use object_store::{
    BackoffConfig, ClientConfigKey, GetOptions, GetRange, ObjectStore, PutMode, PutOptions,
    PutPayload, RetryConfig, WriteMultipart,
};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::future::Future;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Bytes per ranged GET and per multipart part (S3's minimum part is 5 MiB).
const CHUNK: u64 = 8 << 20;
/// Files at least this large are uploaded in parts.
const MULTIPART_AT: u64 = 16 << 20;
/// Files moved at once.
const PARALLEL: usize = 8;

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
        let transfer_store = build(transfer, 3, transfer * 2)?;
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
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| Failure::Refused(format!("its manifest.json is not valid: {e}")))?;
        check_manifest(stage, key, &manifest).map_err(Failure::Refused)?;
        Ok(Some(manifest))
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
        let jobs = manifest.files.iter().map(|entry| {
            let dest = dir.join(&entry.path);
            let path = self.file_path(stage, key, entry);
            let bar = bar.clone();
            async move { self.download(&path, &dest, entry, &bar).await }
        });
        self.runtime.block_on(async {
            stream::iter(jobs)
                .buffer_unordered(PARALLEL)
                .try_collect::<Vec<()>>()
                .await
        })?;
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
                Err(e) => return Err(Failure::Remote(e)),
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
        file.sync_all().map_err(io("fsync", dest))?;
        Ok(())
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
        let bar = transfer_bar(progress, manifest.total_bytes(), &format!("upload {stage}"));
        let jobs = manifest.files.iter().map(|entry| {
            let src = dir.join(&entry.path);
            let path = self.file_path(stage, key, entry);
            let bar = bar.clone();
            async move { self.upload_file(&path, &src, entry, repair, &bar).await }
        });
        let sent: Vec<u64> = self.runtime.block_on(async {
            stream::iter(jobs)
                .buffer_unordered(PARALLEL)
                .try_collect::<Vec<u64>>()
                .await
        })?;
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

    /// Uploads one file unless the same content is there already (a resumed
    /// upload); returns the bytes sent.
    async fn upload_file(
        &self,
        path: &ObjPath,
        src: &Path,
        entry: &FileEntry,
        overwrite: bool,
        bar: &ProgressBar,
    ) -> Result<u64, Failure> {
        if !overwrite {
            match self.transfer.head(path).await {
                Ok(meta) if meta.size == entry.size => {
                    bar.inc(entry.size);
                    return Ok(0);
                }
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(Failure::Remote(e)),
            }
        }
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
            if let Err(e) = parts.wait_for_capacity(4).await {
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

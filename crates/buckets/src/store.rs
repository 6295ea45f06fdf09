//! Where objects are kept: files in the data directory (embedded), or the
//! cluster's PostgreSQL, so an object stored through one node is read
//! through any other.
//!
//! Both backends take an upload as a stream ([`ObjectStore::begin`], then
//! [`Upload::write`] per chunk) and make it visible only at
//! [`Upload::commit`]: a reader sees the old object or the new one, never a
//! part. An upload that fails or is refused midway ([`Upload::abort`])
//! leaves nothing behind.
//!
//! - **Files**: the bytes go to a temporary file beside the object, are
//!   fsynced, and are renamed into place; the metadata is a JSON file beside
//!   them.
//! - **PostgreSQL**: the bytes go to `gantry_object_chunks` in pieces of
//!   [`PG_CHUNK`] as they arrive (memory stays bounded whatever the size);
//!   the commit points the object's row in `gantry_objects` at the new
//!   upload and deletes the old one's chunks in one transaction. Chunks of
//!   uploads whose node died before committing are swept at start.

use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use gantry_cluster::migrate::Migrations;
use gantry_cluster::{PgError, Postgres};
use tokio::io::AsyncWriteExt;

use crate::ObjectInfo;

/// Bytes per row of `gantry_object_chunks`.
pub(crate) const PG_CHUNK: usize = 1024 * 1024;

const POSTGRES: Migrations = Migrations {
    store: "objects",
    steps: &["CREATE TABLE gantry_objects (
                 bucket TEXT NOT NULL,
                 key TEXT NOT NULL,
                 upload TEXT NOT NULL,
                 info TEXT NOT NULL,
                 PRIMARY KEY (bucket, key));
              CREATE TABLE gantry_object_chunks (
                 upload TEXT NOT NULL,
                 seq INTEGER NOT NULL,
                 data BYTEA NOT NULL,
                 written_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                 PRIMARY KEY (upload, seq));"],
};

/// Chunks of an upload that was never committed are swept once they are
/// this old (an upload in progress writes a chunk at least this often).
const ABANDONED: &str = "1 hour";

/// Why an object could not be stored or read: Gantry's own trouble.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Postgres(#[from] PgError),
    #[error("stored object metadata is unreadable: {0}")]
    Metadata(#[from] serde_json::Error),
}

/// The objects of every bucket. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ObjectStore {
    backend: Backend,
}

#[derive(Debug, Clone)]
enum Backend {
    Files(PathBuf),
    Postgres(Postgres),
}

impl ObjectStore {
    /// Objects as files under `root` (`DATA_DIR/objects`), a directory per
    /// bucket.
    pub fn files(root: &Path) -> ObjectStore {
        ObjectStore {
            backend: Backend::Files(root.to_path_buf()),
        }
    }

    /// Objects in the cluster's PostgreSQL, shared by every node.
    pub async fn postgres(pg: Postgres) -> Result<ObjectStore, ObjectError> {
        gantry_cluster::migrate::postgres(&pg, &POSTGRES).await?;
        let client = pg.client().await?;
        let swept = client
            .execute(
                &format!(
                    "DELETE FROM gantry_object_chunks c
                     WHERE c.written_at < now() - interval '{ABANDONED}'
                       AND NOT EXISTS (SELECT 1 FROM gantry_objects o WHERE o.upload = c.upload)"
                ),
                &[],
            )
            .await
            .map_err(PgError::query("sweeping abandoned uploads"))?;
        if swept > 0 {
            tracing::info!(target: "gantry::objects", chunks = swept, "swept the chunks of uploads that were never committed");
        }
        Ok(ObjectStore {
            backend: Backend::Postgres(pg),
        })
    }

    /// Gets bucket `bucket` ready to take objects.
    pub(crate) fn prepare(&self, bucket: &str) -> Result<(), ObjectError> {
        match &self.backend {
            Backend::Files(root) => Ok(std::fs::create_dir_all(root.join(bucket))?),
            Backend::Postgres(_) => Ok(()),
        }
    }

    /// Starts storing object `key` of `bucket`. `key` must be valid
    /// ([`crate::valid_key`]).
    pub(crate) async fn begin(&self, bucket: &str, key: &str) -> Result<Upload, ObjectError> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        match &self.backend {
            Backend::Files(root) => {
                let (data, meta) = file_paths(root, bucket, key);
                let temp = data.with_extension(format!("upload-{id}"));
                let file = tokio::fs::File::create(&temp).await?;
                Ok(Upload::File {
                    file,
                    temp,
                    data,
                    meta,
                })
            }
            Backend::Postgres(pg) => Ok(Upload::Postgres {
                pg: pg.clone(),
                bucket: bucket.to_string(),
                key: key.to_string(),
                id,
                seq: 0,
                pending: BytesMut::new(),
            }),
        }
    }

    /// An object's metadata and bytes; `None` when there is no such object.
    pub async fn read(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<Option<(ObjectInfo, Bytes)>, ObjectError> {
        match &self.backend {
            Backend::Files(root) => {
                let (data, meta) = file_paths(root, bucket, key);
                let meta = match tokio::fs::read(meta).await {
                    Ok(meta) => meta,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(e.into()),
                };
                let info: ObjectInfo = serde_json::from_slice(&meta)?;
                let bytes = tokio::fs::read(data).await?;
                Ok(Some((info, Bytes::from(bytes))))
            }
            Backend::Postgres(pg) => {
                let mut client = pg.client().await?;
                // One snapshot: a commit in between cannot mix two versions.
                let tx = client
                    .build_transaction()
                    .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start()
                    .await
                    .map_err(PgError::query("reading an object"))?;
                let Some(row) = tx
                    .query_opt(
                        "SELECT upload, info FROM gantry_objects WHERE bucket = $1 AND key = $2",
                        &[&bucket, &key],
                    )
                    .await
                    .map_err(PgError::query("reading an object"))?
                else {
                    return Ok(None);
                };
                let (upload, info): (String, String) = (row.get(0), row.get(1));
                let info: ObjectInfo = serde_json::from_str(&info)?;
                let chunks = tx
                    .query(
                        "SELECT data FROM gantry_object_chunks WHERE upload = $1 ORDER BY seq",
                        &[&upload],
                    )
                    .await
                    .map_err(PgError::query("reading an object's bytes"))?;
                let mut bytes = BytesMut::with_capacity(info.size as usize);
                for chunk in chunks {
                    bytes.extend_from_slice(chunk.get::<_, &[u8]>(0));
                }
                Ok(Some((info, bytes.freeze())))
            }
        }
    }
}

/// An object being stored; invisible until [`Upload::commit`].
pub(crate) enum Upload {
    File {
        file: tokio::fs::File,
        temp: PathBuf,
        data: PathBuf,
        meta: PathBuf,
    },
    Postgres {
        pg: Postgres,
        bucket: String,
        key: String,
        id: String,
        seq: i32,
        pending: BytesMut,
    },
}

impl Upload {
    pub(crate) async fn write(&mut self, chunk: &[u8]) -> Result<(), ObjectError> {
        match self {
            Upload::File { file, .. } => Ok(file.write_all(chunk).await?),
            Upload::Postgres {
                pg,
                id,
                seq,
                pending,
                ..
            } => {
                pending.extend_from_slice(chunk);
                while pending.len() >= PG_CHUNK {
                    let piece = pending.split_to(PG_CHUNK);
                    insert_chunk(pg, id, *seq, &piece).await?;
                    *seq += 1;
                }
                Ok(())
            }
        }
    }

    /// Makes the object visible, replacing any object with its key. On
    /// failure nothing of the upload stays.
    pub(crate) async fn commit(self, info: &ObjectInfo) -> Result<(), ObjectError> {
        let meta = serde_json::to_string(info)?;
        let committed = match &self {
            Upload::File {
                file,
                temp,
                data,
                meta: meta_path,
            } => commit_file(file, temp, data, meta_path, &meta)
                .await
                .map_err(ObjectError::from),
            Upload::Postgres {
                pg,
                bucket,
                key,
                id,
                seq,
                pending,
            } => commit_postgres(pg, bucket, key, id, *seq, pending, &meta).await,
        };
        if committed.is_err() {
            self.abort().await;
        }
        committed
    }

    /// Drops what was written so far.
    pub(crate) async fn abort(self) {
        match self {
            Upload::File { file, temp, .. } => {
                drop(file);
                let _ = tokio::fs::remove_file(&temp).await;
            }
            Upload::Postgres { pg, id, .. } => {
                // Best effort: what stays behind is swept at a later start.
                if let Ok(client) = pg.client().await {
                    let _ = client
                        .execute("DELETE FROM gantry_object_chunks WHERE upload = $1", &[&id])
                        .await;
                }
            }
        }
    }
}

async fn commit_file(
    file: &tokio::fs::File,
    temp: &Path,
    data: &Path,
    meta_path: &Path,
    meta: &str,
) -> std::io::Result<()> {
    file.sync_all().await?;
    tokio::fs::rename(temp, data).await?;
    let mut meta_file = tokio::fs::File::create(meta_path).await?;
    meta_file.write_all(meta.as_bytes()).await?;
    meta_file.sync_all().await?;
    // The directory entries themselves must survive a crash too.
    if let Some(dir) = data.parent() {
        tokio::fs::File::open(dir).await?.sync_all().await?;
    }
    Ok(())
}

/// Writes the last chunk, then points the object at this upload and drops
/// the replaced upload's chunks, in one transaction.
async fn commit_postgres(
    pg: &Postgres,
    bucket: &str,
    key: &str,
    upload: &str,
    seq: i32,
    pending: &[u8],
    meta: &str,
) -> Result<(), ObjectError> {
    if !pending.is_empty() || seq == 0 {
        insert_chunk(pg, upload, seq, pending).await?;
    }
    let mut client = pg.client().await?;
    let tx = client
        .transaction()
        .await
        .map_err(PgError::query("storing an object"))?;
    let replaced = tx
        .query_opt(
            "SELECT upload FROM gantry_objects WHERE bucket = $1 AND key = $2 FOR UPDATE",
            &[&bucket, &key],
        )
        .await
        .map_err(PgError::query("storing an object"))?
        .map(|row| row.get::<_, String>(0));
    tx.execute(
        "INSERT INTO gantry_objects (bucket, key, upload, info) VALUES ($1, $2, $3, $4)
         ON CONFLICT (bucket, key) DO UPDATE SET upload = excluded.upload, info = excluded.info",
        &[&bucket, &key, &upload, &meta],
    )
    .await
    .map_err(PgError::query("storing an object"))?;
    if let Some(replaced) = replaced {
        tx.execute(
            "DELETE FROM gantry_object_chunks WHERE upload = $1",
            &[&replaced],
        )
        .await
        .map_err(PgError::query("removing an object's old bytes"))?;
    }
    tx.commit()
        .await
        .map_err(PgError::query("storing an object"))?;
    Ok(())
}

async fn insert_chunk(pg: &Postgres, upload: &str, seq: i32, data: &[u8]) -> Result<(), PgError> {
    let client = pg.client().await?;
    client
        .execute(
            "INSERT INTO gantry_object_chunks (upload, seq, data) VALUES ($1, $2, $3)",
            &[&upload, &seq, &data],
        )
        .await
        .map_err(PgError::query("storing an object's bytes"))?;
    Ok(())
}

/// The data and metadata files of an object. Keys may contain `/`; the file
/// name encodes them so a bucket's directory stays flat.
fn file_paths(root: &Path, bucket: &str, key: &str) -> (PathBuf, PathBuf) {
    let file =
        percent_encoding::utf8_percent_encode(key, percent_encoding::NON_ALPHANUMERIC).to_string();
    let dir = root.join(bucket);
    (
        dir.join(format!("{file}.data")),
        dir.join(format!("{file}.json")),
    )
}

/// One suite for every backend: what a reader sees of stored, replaced and
/// abandoned uploads, on files and on PostgreSQL alike.
#[cfg(test)]
mod conformance {
    use super::*;

    fn info(key: &str, size: usize) -> ObjectInfo {
        ObjectInfo {
            bucket: "photos".into(),
            key: key.into(),
            size: size as u64,
            content_type: "image/png".into(),
            sha256: format!("{size:064x}"),
            created: "2026-12-06T00:00:00.000Z".into(),
        }
    }

    async fn put(store: &ObjectStore, key: &str, pieces: &[&[u8]]) {
        let mut upload = store.begin("photos", key).await.unwrap();
        for piece in pieces {
            upload.write(piece).await.unwrap();
        }
        let size = pieces.iter().map(|p| p.len()).sum();
        upload.commit(&info(key, size)).await.unwrap();
    }

    async fn stored_objects_read_back_whole(store: ObjectStore) {
        store.prepare("photos").unwrap();
        assert!(store.read("photos", "cat.png").await.unwrap().is_none());
        put(&store, "cat.png", &[b"meow", b" meow"]).await;
        let (found, bytes) = store.read("photos", "cat.png").await.unwrap().unwrap();
        assert_eq!(bytes.as_ref(), b"meow meow");
        assert_eq!(found.content_type, "image/png");
        assert_eq!(found.size, 9);
        // An empty object is an object.
        put(&store, "2026/empty", &[]).await;
        let (_, bytes) = store.read("photos", "2026/empty").await.unwrap().unwrap();
        assert!(bytes.is_empty());
        // Another bucket does not see it.
        assert!(store.read("other", "cat.png").await.unwrap().is_none());
        // Larger than several PostgreSQL chunks, written in odd pieces.
        let big: Vec<u8> = (0..(2 * PG_CHUNK + 12_345))
            .map(|i| (i % 251) as u8)
            .collect();
        let pieces: Vec<&[u8]> = big.chunks(70_001).collect();
        put(&store, "big.bin", &pieces).await;
        let (found, bytes) = store.read("photos", "big.bin").await.unwrap().unwrap();
        assert_eq!(found.size as usize, big.len());
        assert!(bytes.as_ref() == big.as_slice(), "the bytes differ");
    }

    async fn a_new_upload_replaces_and_an_aborted_one_leaves_nothing(store: ObjectStore) {
        store.prepare("photos").unwrap();
        put(&store, "dog.png", &[b"first version, rather long"]).await;
        put(&store, "dog.png", &[b"second"]).await;
        let (found, bytes) = store.read("photos", "dog.png").await.unwrap().unwrap();
        assert_eq!(bytes.as_ref(), b"second");
        assert_eq!(found.size, 6);
        // Written but aborted: the reader keeps seeing the committed one.
        let mut upload = store.begin("photos", "dog.png").await.unwrap();
        upload.write(&vec![7u8; PG_CHUNK + 1]).await.unwrap();
        assert_eq!(
            store
                .read("photos", "dog.png")
                .await
                .unwrap()
                .unwrap()
                .1
                .as_ref(),
            b"second",
            "an upload in progress is invisible"
        );
        upload.abort().await;
        assert_eq!(
            store
                .read("photos", "dog.png")
                .await
                .unwrap()
                .unwrap()
                .1
                .as_ref(),
            b"second"
        );
        // Nor does an aborted new key appear.
        let mut upload = store.begin("photos", "never.png").await.unwrap();
        upload.write(b"half").await.unwrap();
        upload.abort().await;
        assert!(store.read("photos", "never.png").await.unwrap().is_none());
        if let Backend::Postgres(pg) = &store.backend {
            // Only the committed upload's chunk is left.
            let client = pg.client().await.unwrap();
            let row = client
                .query_one("SELECT count(*) FROM gantry_object_chunks", &[])
                .await
                .unwrap();
            assert_eq!(
                row.get::<_, i64>(0),
                1,
                "replaced and aborted uploads leave no chunks"
            );
        }
    }

    macro_rules! conformance {
        ($($test:ident),* $(,)?) => {
            mod files {
                $(
                    #[tokio::test]
                    async fn $test() {
                        let dir = tempfile::tempdir().unwrap();
                        super::$test(super::ObjectStore::files(dir.path())).await;
                    }
                )*
            }
            mod postgres {
                $(
                    #[tokio::test]
                    async fn $test() {
                        let Some(options) =
                            gantry_cluster::testing::fresh_schema(concat!("objects", stringify!($test))).await
                        else {
                            return;
                        };
                        let pg = gantry_cluster::Postgres::connect(&options).await.unwrap();
                        super::$test(super::ObjectStore::postgres(pg).await.unwrap()).await;
                    }
                )*
            }
        };
    }

    conformance!(
        stored_objects_read_back_whole,
        a_new_upload_replaces_and_an_aborted_one_leaves_nothing,
    );
}

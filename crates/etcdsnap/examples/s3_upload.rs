//! Uploads one file to S3 with etcdsnap's own S3 client (multipart, same part size and
//! concurrency as `etcdsnap save`): the last step of bench/s3.sh's "sequential" baseline.
//!
//! Usage: ETCDSNAP_S3_ENDPOINT=host:port ETCDSNAP_S3_BUCKET=b [ETCDSNAP_S3_INSECURE=true]
//!        AWS_ACCESS_KEY_ID=.. AWS_SECRET_ACCESS_KEY=.. s3_upload FILE KEY

use etcdsnap_api::{EtcdInfo, SnapshotName, StorageKind};
use etcdsnap_storage::SnapshotRecord;
use etcdsnap_storage::store::s3::{RawS3Settings, S3Key, S3Store, SettingsOrigin};
use etcdsnap_storage::store::{NewSnapshot, SnapshotStore};
use std::io::Read;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (file, key) =
        (args.next().ok_or("usage: s3_upload FILE NAME")?, args.next().ok_or("usage: s3_upload FILE NAME")?);
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let mut raw = RawS3Settings::new(SettingsOrigin::Flags);
    raw.set(S3Key::Endpoint, env("ETCDSNAP_S3_ENDPOINT"))
        .set(S3Key::Bucket, env("ETCDSNAP_S3_BUCKET"))
        .set(S3Key::AccessKey, env("AWS_ACCESS_KEY_ID"))
        .set(S3Key::SecretKey, env("AWS_SECRET_ACCESS_KEY"))
        .set(S3Key::Insecure, env("ETCDSNAP_S3_INSECURE"));
    let config = raw.parse()?;
    let store = S3Store::new(config, None)?;
    let name = SnapshotName::parse(&key)?;
    let new = NewSnapshot {
        name: name.clone(),
        node_name: "bench".into(),
        cluster_id: None,
        token_hash: None,
        etcd: EtcdInfo::default(),
    };
    let mut sink = store.create(&new).await?;
    // Reading and writing on a blocking thread, like the pipeline does.
    let (sink_back, size) = tokio::task::spawn_blocking(move || -> Result<_, String> {
        let mut f = std::fs::File::open(&file).map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 1024 * 1024];
        let mut size = 0u64;
        loop {
            let n = f.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            size += n as u64;
            sink.write(&buf[..n]).map_err(|e| e.to_string())?;
        }
        Ok((sink, size))
    })
    .await??;
    let now = etcdsnap_storage::clock::now();
    let doc = SnapshotRecord::stored(name, StorageKind::S3, "bench", String::new(), now, size).to_document();
    sink_back.commit(&doc, &Default::default()).await?;
    Ok(())
}

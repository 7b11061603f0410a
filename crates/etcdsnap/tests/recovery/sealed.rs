//! Sealed backups against the real servers and the standard tools: snapshots sealed with age,
//! records signed with minisign, the restore kit. Debian's `age`, `age-keygen` and `minisign`
//! make the keys and check etcdsnap's work from outside (scripts/install-deps.sh installs them):
//! what is stored is what `age -d` opens, `minisign -V` checks etcdsnap's signatures and
//! etcdsnap checks the tool's. A secret value put into etcd must appear in no stored byte,
//! local or S3, and every reader of a sealed snapshot refuses it without the identity before
//! anything is written.

use crate::common::etcd::load_kube_like_data;
use crate::common::layout::records_dir;
use crate::common::restore::{hash_kv, restore_args, revision};
use crate::common::{Run, TestResult, files_in, run, s};
use etcd_client::{Client, GetOptions};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use testenv::{Etcd, S3Server};

type Error = Box<dyn std::error::Error>;

const NODE: &str = "node-1";
const TOKEN: &str = "sealed-token-secret";
const BUCKET: &str = "sealed";

/// A tool of the test set-up, run to completion; fails the test unless it exits 0.
fn tool(program: &str, args: &[&str]) -> Result<std::process::Output, Error> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e} (scripts/install-deps.sh installs it)"))?;
    if !out.status.success() {
        return Err(format!("{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(out)
}

/// An age identity file (0600) made by `age-keygen`, and its recipient.
fn age_keys(dir: &Path, name: &str) -> Result<(PathBuf, String), Error> {
    let identity = dir.join(format!("{name}.agekey"));
    tool("age-keygen", &["-o", &s(&identity)])?;
    std::fs::set_permissions(&identity, std::fs::Permissions::from_mode(0o600))?;
    let recipient = String::from_utf8(tool("age-keygen", &["-y", &s(&identity)])?.stdout)?.trim().to_string();
    Ok((identity, recipient))
}

/// A minisign key pair made by the `minisign` tool, without a password: (secret, public).
fn minisign_keys(dir: &Path) -> Result<(PathBuf, PathBuf), Error> {
    let (sk, pk) = (dir.join("sign.key"), dir.join("sign.pub"));
    tool("minisign", &["-G", "-W", "-p", &s(&pk), "-s", &s(&sk)])?;
    std::fs::set_permissions(&sk, std::fs::Permissions::from_mode(0o600))?;
    Ok((sk, pk))
}

/// Every regular file under `dir`, at any depth.
fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(t) if t.is_file() => out.push(p),
                _ => {}
            }
        }
    }
    out.sort();
    out
}

fn holds(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every key of the key space at `rev` with its value, create and mod revision and version.
async fn key_space(client: &mut Client, rev: i64) -> Result<Vec<(Vec<u8>, Vec<u8>, i64, i64, i64)>, Error> {
    let resp = client.get(vec![0u8], Some(GetOptions::new().with_from_key().with_revision(rev))).await?;
    Ok(resp
        .kvs()
        .iter()
        .map(|kv| (kv.key().to_vec(), kv.value().to_vec(), kv.create_revision(), kv.mod_revision(), kv.version()))
        .collect())
}

/// An etcd holding Kubernetes-like objects and one Secret whose value is `secret`.
async fn etcd_with_secret(secret: &str) -> Result<(Etcd, Client), Error> {
    let etcd = Etcd::single().await?;
    let mut client = etcd.client().await?;
    load_kube_like_data(&mut client, 120).await?;
    client
        .put("/registry/secrets/default/db-password", format!("{{\"data\":{{\"password\":\"{secret}\"}}}}"), None)
        .await?;
    Ok((etcd, client))
}

/// The files a fresh host needs, as a kubeadm control plane keeps them, and an
/// EncryptionConfiguration.
fn kit_sources(dir: &Path) -> Result<(PathBuf, PathBuf), Error> {
    let pki = dir.join("pki/etcd");
    std::fs::create_dir_all(&pki)?;
    for (file, mode, body) in
        [("ca.crt", 0o644, "ca certificate"), ("ca.key", 0o600, "ca private key"), ("server.key", 0o600, "server key")]
    {
        std::fs::write(pki.join(file), body)?;
        std::fs::set_permissions(pki.join(file), std::fs::Permissions::from_mode(mode))?;
    }
    let config = dir.join("encryption-config.yaml");
    std::fs::write(&config, "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources: []\n")?;
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600))?;
    Ok((pki, config))
}

/// The one snapshot in `dir`.
fn only_snapshot(dir: &Path) -> Result<String, Error> {
    let files = files_in(dir);
    match files.as_slice() {
        [one] => Ok(one.clone()),
        other => Err(format!("expected one snapshot in {}: {other:?}", dir.display()).into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_stored_is_what_age_opens_and_minisign_checks_and_no_secret_is_in_it() -> TestResult {
    let secret = format!("hunter2-{}", std::process::id());
    let (etcd, _client) = etcd_with_secret(&secret).await?;
    let keys = tempfile::tempdir()?;
    let (identity, recipient) = age_keys(keys.path(), "ops")?;
    let (_, other_recipient) = age_keys(keys.path(), "escrow")?;
    let (sign_key, verify_key) = minisign_keys(keys.path())?;
    let (pki, config) = kit_sources(keys.path())?;
    let s3 = S3Server::with_bucket(BUCKET).await?;
    let creds = s3.credentials_env();
    let data = tempfile::tempdir()?;
    let (dd, endpoints) = (s(data.path()), etcd.endpoints().join(","));
    let mut save = vec!["save", "--data-dir", &dd, "--node-name", NODE, "--endpoints", &endpoints, "--no-kube"];
    let (identity_s, sign_s, pki_s, config_s) = (s(&identity), s(&sign_key), s(&pki), s(&config));
    save.extend(["--compress", "zstd", "--token", TOKEN, "--encrypt-to", &recipient, "--encrypt-to", &other_recipient]);
    save.extend(["--sign-key", &sign_s, "--kit-file", &pki_s, "--encryption-config", &config_s, "-o", "json"]);
    save.extend(s3.etcdsnap_flags(BUCKET));
    let saved = run(&save, &creds).await.expect_ok();
    for leak in [TOKEN, "AGE-SECRET-KEY", "ca private key", &secret] {
        assert!(
            !saved.stdout.contains(leak) && !saved.stderr.contains(leak),
            "{leak} in the output:\n{}{}",
            saved.stdout,
            saved.stderr
        );
    }
    let dir = data.path().join("snapshots");
    let name = only_snapshot(&dir)?;
    assert!(name.ends_with(".zst.age"), "{name}");

    // The record says sealed, to whom, and by which kit; its sha256 is the stored bytes'.
    let record_path = records_dir(&dir).join(format!("{name}.etcdsnap.json"));
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(&record_path)?)?;
    assert_eq!(record["sealed"]["recipients"], serde_json::json!([recipient, other_recipient]), "{record}");
    let stored = std::fs::read(dir.join(&name))?;
    assert_eq!(record["sha256"], hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&stored)));
    let kit_entries = record["sealed"]["kit"]["entries"].as_array().ok_or("no kit entries")?.len();
    assert_eq!(kit_entries, 5, "token, three pki files and the EncryptionConfiguration: {record}");
    let config_sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(std::fs::read(&config)?));
    assert_eq!(record["encryptionConfigSha256"], config_sha);
    let record_text = std::fs::read_to_string(&record_path)?;
    assert!(!record_text.contains("AGE-SECRET-KEY") && !record_text.contains("sealed-token-secret"), "{record_text}");

    // No stored byte, local or in S3, holds the secret value, the token or a kit file.
    let needles = [secret.as_bytes(), b"sealed-token-secret", b"ca private key"];
    for file in all_files(data.path()) {
        let bytes = std::fs::read(&file)?;
        for needle in needles {
            assert!(!holds(&bytes, needle), "{} holds {:?}", file.display(), String::from_utf8_lossy(needle));
        }
    }
    let objects = s3.list_keys(BUCKET, "").await?;
    assert!(objects.len() >= 4, "snapshot, record, signature, kit: {objects:?}");
    for key in &objects {
        let (bytes, _) = s3.get_object(BUCKET, key).await?;
        for needle in needles {
            assert!(!holds(&bytes, needle), "s3://{BUCKET}/{key} holds {:?}", String::from_utf8_lossy(needle));
        }
    }

    // `age -d | zstd -d` gives an etcd snapshot etcdutl reads, from disk and from S3.
    let work = tempfile::tempdir()?;
    let (s3_snapshot, _) = s3.get_object(BUCKET, &name).await?;
    assert_eq!(s3_snapshot, stored, "the same bytes in both places");
    for (what, sealed) in [("local", dir.join(&name)), ("s3", work.path().join("from-s3.zst.age"))] {
        if what == "s3" {
            std::fs::write(&sealed, &s3_snapshot)?;
        }
        let zst = work.path().join(format!("{what}.zst"));
        let db = work.path().join(format!("{what}.db"));
        tool("age", &["-d", "-i", &identity_s, "-o", &s(&zst), &s(&sealed)])?;
        tool("zstd", &["-q", "-d", &s(&zst), "-o", &s(&db)])?;
        let status = tool(&s(&etcd.testbin("etcdutl")?), &["snapshot", "status", &s(&db), "-w", "json"])?;
        let status: serde_json::Value = serde_json::from_slice(&status.stdout)?;
        assert_eq!(status["revision"], record["etcd"]["revision"], "{what}: {status}");
        // What was sealed holds the secret in the clear: the search above could have found it.
        assert!(holds(&std::fs::read(&db)?, secret.as_bytes()), "{what}: the database does not hold the secret");
    }

    // `minisign -V` checks etcdsnap's signatures, beside the record locally and in S3.
    let signature = records_dir(&dir).join(format!("{name}.etcdsnap.json.minisig"));
    tool("minisign", &["-V", "-q", "-p", &s(&verify_key), "-m", &s(&record_path), "-x", &s(&signature)])?;
    let (s3_record, _) = s3.get_object(BUCKET, &format!(".metadata/{name}.etcdsnap.json")).await?;
    let (s3_signature, _) = s3.get_object(BUCKET, &format!(".metadata/{name}.etcdsnap.json.minisig")).await?;
    std::fs::write(work.path().join("s3.json"), &s3_record)?;
    std::fs::write(work.path().join("s3.json.minisig"), &s3_signature)?;
    tool("minisign", &["-V", "-q", "-p", &s(&verify_key), "-m", &s(&work.path().join("s3.json"))])?;
    // The kit is an age file too: `age -d | tar -t` lists it.
    let kit = records_dir(&dir).join(format!("{name}.etcdsnap-kit.age"));
    let tar = work.path().join("kit.tar");
    tool("age", &["-d", "-i", &identity_s, "-o", &s(&tar), &s(&kit)])?;
    let listed = String::from_utf8(tool("tar", &["-tf", &s(&tar)])?.stdout)?;
    assert!(listed.lines().any(|l| l == "token") && listed.contains("pki/etcd/ca.key"), "{listed}");

    // verify needs no key; with the verify key the signatures are checked; with the identity
    // the trailer inside too.
    let base = ["verify", "--data-dir", &dd, "--node-name", NODE, "--no-kube", "-o", "json"];
    let mut s3_base: Vec<&str> = base.to_vec();
    s3_base.extend(s3.etcdsnap_flags(BUCKET));
    let plain = run(&s3_base, &creds).await.expect_ok().json();
    assert_eq!(plain["items"].as_array().map(Vec::len), Some(2), "{plain}");
    assert!(plain["items"].as_array().ok_or("items")?.iter().all(|i| i["trailerValid"].is_null()), "{plain}");
    let vk = s(&verify_key);
    let mut checked = s3_base.clone();
    checked.extend(["--verify-key", &vk, "--decrypt-identity", &identity_s]);
    let checked = run(&checked, &creds).await.expect_ok().json();
    assert!(checked["items"].as_array().ok_or("items")?.iter().all(|i| i["trailerValid"] == true), "{checked}");

    // An identity file others can read is refused, and its content is never shown.
    std::fs::set_permissions(&identity, std::fs::Permissions::from_mode(0o644))?;
    let mut exposed = s3_base.clone();
    exposed.extend(["--decrypt-identity", &identity_s]);
    let refused = run(&exposed, &creds).await.expect_fail();
    assert!(refused.stderr.contains("mode 0644") && !refused.stderr.contains("AGE-SECRET-KEY"), "{}", refused.stderr);

    // The kit, from S3, written back byte for byte with its modes.
    std::fs::set_permissions(&identity, std::fs::Permissions::from_mode(0o600))?;
    let out = work.path().join("kit-out");
    let mut kit = vec!["kit", &name, "--decrypt-identity", &identity_s, "--out", out.to_str().ok_or("path")?];
    kit.extend(["--no-local", "--data-dir", &dd, "--node-name", NODE, "--no-kube"]);
    kit.extend(s3.etcdsnap_flags(BUCKET));
    run(&kit, &creds).await.expect_ok();
    assert_eq!(std::fs::read_to_string(out.join("token"))?, TOKEN);
    for original in [pki.join("ca.crt"), pki.join("ca.key"), pki.join("server.key"), config.clone()] {
        let back = out.join("files").join(original.strip_prefix("/")?);
        assert_eq!(std::fs::read(&back)?, std::fs::read(&original)?, "{}", back.display());
        let mode = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode() & 0o777);
        assert_eq!(mode(&back)?, mode(&original)?, "{}", back.display());
    }

    // `--prepare-for k3s` from S3: the signature is checked and the identity opens the snapshot,
    // or nothing is written; the plain file is the snapshot etcdutl reads.
    let prepared = work.path().join("prepared");
    std::fs::create_dir(&prepared)?;
    let prepared_s = s(&prepared);
    let mut prepare = vec!["restore", &name, "--prepare-for", "k3s", "--prepare-dir", &prepared_s, "--verify-key", &vk];
    prepare.extend(s3.etcdsnap_flags(BUCKET));
    let refused = run(&prepare, &creds).await.expect_fail();
    let said = format!("{}{}", refused.stdout, refused.stderr);
    assert!(said.contains(&recipient) && said.contains("--decrypt-identity"), "{said}");
    assert_eq!(std::fs::read_dir(&prepared)?.count(), 0, "a refused prepare wrote something");
    prepare.extend(["--decrypt-identity", &identity_s]);
    run(&prepare, &creds).await.expect_ok();
    let plain = prepared.join(name.trim_end_matches(".zst.age"));
    let status = tool(&s(&etcd.testbin("etcdutl")?), &["snapshot", "status", &s(&plain), "-w", "json"])?;
    let status: serde_json::Value = serde_json::from_slice(&status.stdout)?;
    assert_eq!(status["revision"], record["etcd"]["revision"], "{status}");
    Ok(())
}

/// `restore <name>` of the snapshot directory of `data` into `target` (member m0 on `port`).
fn restore_cmd(data: &Path, name: &str, target: &Path, port: u16, etcd: &Etcd) -> Result<Vec<String>, Error> {
    let mut args = restore_args(&[name], target, port, &etcd.testbin("etcdutl")?);
    args.extend(["--dir".into(), s(&data.join("snapshots"))]);
    Ok(args)
}

async fn run_with(args: &[String], extra: &[&str]) -> Run {
    let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
    all.extend_from_slice(extra);
    run(&all, &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_drill_and_point_in_time_restore_open_a_sealed_snapshot_only_with_its_identity() -> TestResult {
    let secret = "not-for-the-bucket";
    let (etcd, mut client) = etcd_with_secret(secret).await?;
    let keys = tempfile::tempdir()?;
    let (identity, recipient) = age_keys(keys.path(), "ops")?;
    let (stranger, stranger_recipient) = age_keys(keys.path(), "stranger")?;
    let (_, config) = kit_sources(keys.path())?;
    let data = tempfile::tempdir()?;
    let (dd, endpoints, config_s) = (s(data.path()), etcd.endpoints().join(","), s(&config));
    let save = [
        "save",
        "--data-dir",
        &dd,
        "--node-name",
        NODE,
        "--endpoints",
        &endpoints,
        "--no-kube",
        "--token",
        TOKEN,
        "--encrypt-to",
        &recipient,
        "--encryption-config",
        &config_s,
    ];
    run(&save, &[]).await.expect_ok();
    let name = only_snapshot(&data.path().join("snapshots"))?;
    assert!(name.ends_with(".age") && !name.contains(".zst"), "{name}");
    // Sealed, uncompressed: an unsealed copy would hold the secret as it is in etcd's pages.
    for file in all_files(data.path()) {
        assert!(!holds(&std::fs::read(&file)?, secret.as_bytes()), "{} holds the secret", file.display());
    }
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(
        records_dir(&data.path().join("snapshots")).join(format!("{name}.etcdsnap.json")),
    )?)?;
    let snap_rev = record["etcd"]["revision"].as_i64().ok_or("no revision")?;
    let live = key_space(&mut client, snap_rev).await?;

    // Without the identity, or with another one: refused before anything is written, naming
    // the recipients.
    let work = tempfile::tempdir()?;
    let target = work.path().join("member");
    let port = testenv::free_port()?;
    let args = restore_cmd(data.path(), &name, &target, port, &etcd)?;
    let before: Vec<_> = std::fs::read_dir(work.path())?.collect();
    let refused = run_with(&args, &[]).await.expect_fail();
    assert!(refused.stdout.contains(&recipient) && refused.stdout.contains("--decrypt-identity"), "{}", refused.stdout);
    let stranger_s = s(&stranger);
    let wrong = run_with(&args, &["--decrypt-identity", &stranger_s]).await.expect_fail();
    assert!(wrong.stdout.contains(&stranger_recipient) && wrong.stdout.contains(&recipient), "{}", wrong.stdout);
    assert_eq!(std::fs::read_dir(work.path())?.count(), before.len(), "a refused restore wrote something");
    assert!(!target.exists());

    // With it, and no token: the token comes from the kit ("token recoverable"); the
    // EncryptionConfiguration recorded is this host's; the key space is the live one exactly.
    let identity_s = s(&identity);
    let report = run_with(&args, &["--decrypt-identity", &identity_s, "--encryption-config", &config_s, "-o", "json"])
        .await
        .expect_ok()
        .json();
    assert_eq!(report["token"]["result"], "match", "{report}");
    assert_eq!(report["token"]["recoverable"], true, "{report}");
    let checks = report["checks"].as_array().ok_or("checks")?;
    let check = |n: &str| checks.iter().find(|c| c["name"] == n).map(|c| (c["status"].clone(), c["detail"].clone()));
    assert_eq!(check("token").map(|c| c.0), Some("pass".into()), "{report}");
    assert!(check("token").map(|c| c.1.to_string()).unwrap_or_default().contains("token recoverable"), "{report}");
    assert_eq!(check("encryption config").map(|c| c.0), Some("pass".into()), "{report}");
    assert_eq!(check("sealed").map(|c| c.0), Some("pass".into()), "{report}");
    let restored = Etcd::start_on_data_dir(&target, "m0", port).await?;
    let mut rc = restored.client().await?;
    assert_eq!(revision(&mut rc).await, snap_rev);
    assert_eq!(key_space(&mut rc, snap_rev).await?, live, "the restored key space differs from the live one");
    drop(restored);

    // Another host's EncryptionConfiguration is reported, not hidden.
    let other_config = keys.path().join("other.yaml");
    std::fs::write(&other_config, "kind: EncryptionConfiguration\n# another key\n")?;
    let target2 = work.path().join("member2");
    let args2 = restore_cmd(data.path(), &name, &target2, port, &etcd)?;
    let other_s = s(&other_config);
    let dry = run_with(
        &args2,
        &["--decrypt-identity", &identity_s, "--encryption-config", &other_s, "--dry-run", "-o", "json"],
    )
    .await
    .expect_ok()
    .json();
    let differs = dry["checks"]
        .as_array()
        .ok_or("checks")?
        .iter()
        .find(|c| c["name"] == "encryption config")
        .cloned()
        .unwrap_or_default();
    assert_eq!(differs["status"], "warn", "{dry}");
    assert!(!target2.exists());

    // A drill: refused without the identity, passed with it.
    let etcdutl = s(&testenv::testbin_version("etcdutl", "3.7")?);
    let drill =
        ["drill", &name, "--data-dir", &dd, "--node-name", NODE, "--no-kube", "--etcdutl", &etcdutl, "-o", "json"];
    let no_key = run(&drill, &[]).await.expect_fail().json();
    let problem = no_key["items"][0]["problems"][0].as_str().unwrap_or_default().to_string();
    assert!(problem.contains("sealed") && problem.contains(&recipient), "{no_key}");
    let mut opened = drill.to_vec();
    opened.extend(["--decrypt-identity", &identity_s]);
    let passed = run(&opened, &[]).await.expect_ok().json();
    assert_eq!(passed["items"][0]["passed"], true, "{passed}");

    // Point in time: the agent captures, the base is sealed; refused without the identity,
    // and with it the restored member has the live revision and HashKV.
    let agent_args = [
        "--endpoints",
        endpoints.as_str(),
        "--node-name",
        NODE,
        "--data-dir",
        dd.as_str(),
        "--no-kube",
        "--schedule",
        "0 0 1 1 *",
        "--drill-schedule",
        "",
        "--deltas",
        "--delta-interval",
        "1s",
        "--encrypt-to",
        recipient.as_str(),
    ];
    let agent = crate::common::agent::Agent::start(&agent_args, &[], data.path()).await?;
    for i in 0..50 {
        client.put(format!("/registry/configmaps/default/after-{i}"), format!("v{i}"), None).await?;
    }
    let target_rev = revision(&mut client).await;
    let expected = hash_kv(&mut client, target_rev).await;
    agent
        .wait_for_metric("etcdsnap_delta_durable_revision", target_rev as f64, std::time::Duration::from_secs(30))
        .await?;
    // Every segment on disk is sealed (format 2 inside): no captured value is stored in the clear.
    let mut segments = 0;
    for chain in std::fs::read_dir(data.path().join(".etcdsnap-deltas"))? {
        for file in std::fs::read_dir(chain?.path())? {
            let path = file?.path();
            if path.to_string_lossy().ends_with(".seg.zst") {
                let bytes = std::fs::read(&path)?;
                assert!(bytes.starts_with(b"age-encryption.org/v1\n"), "{} is not sealed", path.display());
                segments += 1;
            }
        }
    }
    assert!(segments > 0, "no delta segment was written");
    let pitr_target = work.path().join("pitr");
    let pitr_port = testenv::free_port()?;
    let mut pitr =
        restore_args(&["--to-revision", &target_rev.to_string()], &pitr_target, pitr_port, &etcd.testbin("etcdutl")?);
    pitr.extend(["--dir".into(), s(&data.path().join("snapshots")), "--etcd".into(), s(&etcd.testbin("etcd")?)]);
    let refused = run_with(&pitr, &[]).await.expect_fail();
    assert!(refused.stdout.contains(&recipient), "{}\n{}", refused.stdout, refused.stderr);
    assert!(!pitr_target.exists());
    run_with(&pitr, &["--decrypt-identity", &identity_s]).await.expect_ok();
    // A time target maps to a revision through the sealed segments too.
    // A time between the target's revision and a later write, both captured.
    let when = etcdsnap_storage::clock::now().to_string();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    client.put("/registry/configmaps/default/later", "later", None).await?;
    agent
        .wait_for_metric("etcdsnap_delta_durable_revision", (target_rev + 1) as f64, std::time::Duration::from_secs(30))
        .await?;
    let timed_target = work.path().join("pitr-time");
    let mut timed =
        restore_args(&["--to-time", &when], &timed_target, testenv::free_port()?, &etcd.testbin("etcdutl")?);
    timed.extend(["--dir".into(), s(&data.path().join("snapshots")), "--etcd".into(), s(&etcd.testbin("etcd")?)]);
    run_with(&timed, &[]).await.expect_fail();
    assert!(!timed_target.exists());
    let timed_report = run_with(&timed, &["--decrypt-identity", &identity_s, "-o", "json"]).await.expect_ok().json();
    assert_eq!(timed_report["replayed"]["revision"], target_rev, "{timed_report}");
    agent.stop().await?;
    let rolled = Etcd::start_on_data_dir(&pitr_target, "m0", pitr_port).await?;
    let mut rc = rolled.client().await?;
    assert_eq!(revision(&mut rc).await, target_rev);
    assert_eq!(hash_kv(&mut rc, target_rev).await.hash, expected.hash);
    assert_eq!(key_space(&mut rc, target_rev).await?, key_space(&mut client, target_rev).await?);
    drop(rolled);

    // recover, as an ExecStartPre runs it on a lost one-member cluster: refused without the
    // identity (nothing written); with it the member is back at the last captured revision.
    let lost = work.path().join("recovered");
    let recover_port = testenv::free_port()?;
    let peer_url = format!("http://127.0.0.1:{recover_port}");
    let (lost_s, snaps) = (s(&lost), s(&data.path().join("snapshots")));
    let (etcdutl_s, etcd_s) = (s(&etcd.testbin("etcdutl")?), s(&etcd.testbin("etcd")?));
    let recover = [
        "recover",
        "--data-dir",
        &lost_s,
        "--member-name",
        "m0",
        "--initial-advertise-peer-urls",
        &peer_url,
        "--dir",
        &snaps,
        "--etcdutl",
        &etcdutl_s,
        "--etcd",
        &etcd_s,
    ];
    let refused = run(&recover, &[]).await.expect_fail();
    let said = format!("{}{}", refused.stdout, refused.stderr);
    assert!(said.contains(&recipient) && said.contains("--decrypt-identity"), "{said}");
    assert!(!lost.exists(), "a refused recover wrote the data directory");
    let last = target_rev + 1;
    let out = run(&[&recover[..], &["--decrypt-identity", &identity_s]].concat(), &[]).await.expect_ok();
    assert!(out.stdout.contains(&format!("rolled forward to revision {last}")), "{}\n{}", out.stdout, out.stderr);
    let back = Etcd::start_on_data_dir(&lost, "m0", recover_port).await?;
    let mut bc = back.client().await?;
    assert_eq!(revision(&mut bc).await, last);
    assert_eq!(key_space(&mut bc, last).await?, key_space(&mut client, last).await?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_signed_by_minisign_verifies_and_a_consistent_rewrite_or_a_missing_signature_is_refused() -> TestResult
{
    let (etcd, mut client) = etcd_with_secret("x").await?;
    let keys = tempfile::tempdir()?;
    let (sign_key, verify_key) = minisign_keys(keys.path())?;
    let data = tempfile::tempdir()?;
    let (dd, endpoints) = (s(data.path()), etcd.endpoints().join(","));
    let dir = data.path().join("snapshots");
    // Unsigned, then signed by the minisign tool as an operator would: the tool's signature
    // file is exactly where etcdsnap looks (`<record>.minisig`).
    let save = ["save", "--data-dir", &dd, "--node-name", NODE, "--endpoints", &endpoints, "--no-kube"];
    run(&save, &[]).await.expect_ok();
    let name = only_snapshot(&dir)?;
    let record = records_dir(&dir).join(format!("{name}.etcdsnap.json"));
    let vk = s(&verify_key);
    let verify = ["verify", "--data-dir", &dd, "--node-name", NODE, "--no-kube", "--verify-key", &vk];
    let unsigned = run(&verify, &[]).await.expect_fail();
    assert!(
        unsigned.stdout.contains("not signed") || unsigned.stderr.contains("not signed"),
        "{}{}",
        unsigned.stdout,
        unsigned.stderr
    );
    tool("minisign", &["-S", "-s", &s(&sign_key), "-m", &s(&record)])?;
    run(&verify, &[]).await.expect_ok();

    // A consistent rewrite: another snapshot's bytes, the record updated to match. verify
    // without the key cannot tell; with it, and restore with it, refuse it.
    client.put("/registry/secrets/default/planted", "attacker", None).await?;
    let forged = data.path().join("forged.db");
    crate::common::snapshot_files::etcdctl_snapshot(&etcd, &forged).await?;
    let forged_bytes = std::fs::read(&forged)?;
    std::fs::write(dir.join(&name), &forged_bytes)?;
    let mut doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&record)?)?;
    doc["sha256"] = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&forged_bytes)).into();
    doc["size"] = forged_bytes.len().into();
    std::fs::write(&record, serde_json::to_vec(&doc)?)?;
    let blind = ["verify", "--data-dir", &dd, "--node-name", NODE, "--no-kube"];
    run(&blind, &[]).await.expect_ok();
    let caught = run(&verify, &[]).await.expect_fail();
    assert!(
        caught.stdout.contains("signature") || caught.stderr.contains("signature"),
        "{}{}",
        caught.stdout,
        caught.stderr
    );
    let work = tempfile::tempdir()?;
    let target = work.path().join("member");
    let args = restore_cmd(data.path(), &name, &target, testenv::free_port()?, &etcd)?;
    let refused = run_with(&args, &["--verify-key", &vk]).await.expect_fail();
    assert!(refused.stdout.contains("signature does not verify"), "{}", refused.stdout);
    assert!(!target.exists() && std::fs::read_dir(work.path())?.count() == 0, "a refused restore wrote something");
    // Nor is it prepared for K3s's own restore.
    let ws = s(work.path());
    let prepare =
        ["restore", &name, "--dir", &s(&dir), "--prepare-for", "k3s", "--prepare-dir", &ws, "--verify-key", &vk];
    let refused = run(&prepare, &[]).await.expect_fail();
    assert!(refused.stderr.contains("signature"), "{}{}", refused.stdout, refused.stderr);
    assert_eq!(std::fs::read_dir(work.path())?.count(), 0, "a refused prepare wrote something");
    let etcdutl = s(&testenv::testbin_version("etcdutl", "3.7")?);
    let drill = [
        "drill",
        &name,
        "--data-dir",
        &dd,
        "--node-name",
        NODE,
        "--no-kube",
        "--etcdutl",
        &etcdutl,
        "--verify-key",
        &vk,
    ];
    run(&drill, &[]).await.expect_fail();

    // Without its signature, refused too.
    std::fs::remove_file(records_dir(&dir).join(format!("{name}.etcdsnap.json.minisig")))?;
    let missing = run_with(&args, &["--verify-key", &vk]).await.expect_fail();
    assert!(missing.stdout.contains("not signed"), "{}", missing.stdout);
    assert!(!target.exists());
    Ok(())
}

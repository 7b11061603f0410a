//! Puts N small snapshot-like objects into an S3 folder for listing benchmarks (see
//! `testenv::fill_snapshot_objects`).
//!
//! Usage: s3-fill --url http://host:port --bucket B --folder F --count N (credentials from
//! AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (mut url, mut bucket, mut folder, mut count) = (String::new(), String::new(), String::new(), 1000usize);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let v = it.next().ok_or(format!("{a} needs a value"))?;
        match a.as_str() {
            "--url" => url = v,
            "--bucket" => bucket = v,
            "--folder" => folder = v,
            "--count" => count = v.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let (access, secret) = (std::env::var("AWS_ACCESS_KEY_ID")?, std::env::var("AWS_SECRET_ACCESS_KEY")?);
    let started = std::time::Instant::now();
    testenv::fill_snapshot_objects(&url, &bucket, &folder, count, &access, &secret).await?;
    println!("s3-fill: {count} objects in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

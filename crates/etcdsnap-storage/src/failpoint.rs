//! Named points in a save where the reliability suite (`tests/faults.rs`) stops the process, so
//! it can kill it there with SIGKILL and prove that nothing half-written is ever published; and
//! points in a leader's duties where the leadership tests (`tests/kubernetes/leadership.rs`)
//! pause it with SIGSTOP, to prove that a leader whose term ended meanwhile writes nothing.
//!
//! A point is armed with `ETCDSNAP_FAILPOINT=<point>` (the process announces the point on stderr
//! and waits until it is killed) or `ETCDSNAP_FAILPOINT=<point>=<ms>` (it waits that long and goes
//! on, to widen a race window).
//!
//! Points exist only in builds with the `failpoints` feature (the test suite's); in every other
//! build [`reached`] and [`reached_blocking`] are empty and the environment variable is ignored.

#[cfg(feature = "failpoints")]
use std::sync::OnceLock;
use std::time::Duration;

/// The environment variable that arms a point.
pub const ENV: &str = "ETCDSNAP_FAILPOINT";

/// Every point, in the order a save passes them; the reliability suite kills at each.
pub const POINTS: &[&str] = &[
    SAVE_STARTED,
    MID_STREAM,
    BEFORE_COMMIT,
    LOCAL_AFTER_METADATA,
    LOCAL_AFTER_RENAME,
    S3_AFTER_METADATA,
    S3_AFTER_COMPLETE,
    BEFORE_RESOURCES,
    AFTER_RESOURCES,
];

/// The directory lock is held and stale uploads are cleaned; nothing is written yet.
pub const SAVE_STARTED: &str = "save-started";
/// [`MID_STREAM_BYTES`] of the stream have gone through the pipeline's worker: written to every
/// sink (local `.part`, S3 parts), or held by the compressor.
pub const MID_STREAM: &str = "mid-stream";
/// The whole stream is written and checked; no sink is committed yet.
pub const BEFORE_COMMIT: &str = "before-commit";
/// The local metadata document is in place; the snapshot is still a `.part`.
pub const LOCAL_AFTER_METADATA: &str = "local-after-metadata";
/// The local snapshot is renamed into place.
pub const LOCAL_AFTER_RENAME: &str = "local-after-rename";
/// Every part is uploaded and the S3 metadata document written; the upload is not completed.
pub const S3_AFTER_METADATA: &str = "s3-after-metadata";
/// The S3 object is complete.
pub const S3_AFTER_COMPLETE: &str = "s3-after-complete";
/// Storage is done; the ETCDSnapshotFile resources are not written yet.
pub const BEFORE_RESOURCES: &str = "before-resources";
/// The resources are written; the process has not reported yet.
pub const AFTER_RESOURCES: &str = "after-resources";

/// A leader's drill of an S3 snapshot is over; its result is not kept yet (`agent/drills.rs`).
pub const S3_DRILL_RESULT: &str = "s3-drill-result";
/// A leader is about to say on a resource how far point-in-time recovery rolls forward
/// (`agent/pitr.rs`).
pub const ROLL_FORWARD_ANNOTATION: &str = "roll-forward-annotation";

/// The delta uploader is about to store a segment in S3 (`agent/pitr.rs`): with a delay, the
/// window in which another writer of the chain may store one under the same name.
pub const PITR_SEGMENT_UPLOAD: &str = "pitr-segment-upload";

/// Bytes of the stream after which [`MID_STREAM`] fires.
pub const MID_STREAM_BYTES: u64 = 20 << 20;

#[derive(Debug, PartialEq, Eq)]
#[cfg_attr(not(any(test, feature = "failpoints")), allow(dead_code))]
struct Armed {
    point: String,
    /// `None`: wait until killed.
    delay: Option<Duration>,
}

#[cfg_attr(not(any(test, feature = "failpoints")), allow(dead_code))]
fn parse(value: &str) -> Option<Armed> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    match value.split_once('=') {
        Some((point, ms)) => {
            ms.trim().parse().ok().map(|ms| Armed { point: point.to_string(), delay: Some(Duration::from_millis(ms)) })
        }
        None => Some(Armed { point: value.to_string(), delay: None }),
    }
}

#[cfg(feature = "failpoints")]
fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED.get_or_init(|| std::env::var(ENV).ok().as_deref().and_then(parse)).as_ref()
}

/// `point`, announced on stderr, if it is the armed one.
#[cfg(feature = "failpoints")]
fn arrived(point: &str) -> Option<&'static Armed> {
    let armed = armed().filter(|a| a.point == point)?;
    eprintln!("etcdsnap: failpoint {point} reached");
    Some(armed)
}

/// Stops here if `point` is armed; see the module documentation.
#[cfg(feature = "failpoints")]
pub async fn reached(point: &str) {
    let Some(armed) = arrived(point) else { return };
    match armed.delay {
        Some(delay) => tokio::time::sleep(delay).await,
        None => std::future::pending::<()>().await,
    }
}

/// The blocking form of [`reached`], for code on a blocking thread.
#[cfg(feature = "failpoints")]
pub fn reached_blocking(point: &str) {
    let Some(armed) = arrived(point) else { return };
    match armed.delay {
        Some(delay) => std::thread::sleep(delay),
        None => loop {
            std::thread::park();
        },
    }
}

/// Without the `failpoints` feature a point is nothing.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub async fn reached(_point: &str) {}

/// Without the `failpoints` feature a point is nothing.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn reached_blocking(_point: &str) {}

/// Whether this build has failpoints at all.
pub const ENABLED: bool = cfg!(feature = "failpoints");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_point_with_and_without_a_delay() {
        assert_eq!(parse("mid-stream"), Some(Armed { point: "mid-stream".into(), delay: None }));
        assert_eq!(
            parse("before-commit=250"),
            Some(Armed { point: "before-commit".into(), delay: Some(Duration::from_millis(250)) })
        );
        assert_eq!(parse(""), None);
        assert_eq!(parse("x=soon"), None);
    }

    #[test]
    fn points_are_unique() {
        let mut points = POINTS.to_vec();
        points.sort();
        points.dedup();
        assert_eq!(points.len(), POINTS.len());
    }
}

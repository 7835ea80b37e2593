//! Recovery at start: delivering what a crash, a `kill -9`, a reboot or a stop during an
//! outage left behind.
//!
//! A recording is *unsettled* while its directory has no `delivery.json` (delivery never
//! finished). At start, before sessions are served, every unsettled recording is:
//!
//! 1. checked and re-derived from its spool ([`recording::rebuild`]): transcript,
//!    asciicast and stream queue written again (they are functions of the spool), a torn
//!    last record cut off, and — when the session never ended — an `end` event appended
//!    saying it was interrupted;
//! 2. delivered as its `session.json` says, resuming where the sinks acknowledged: S3
//!    objects already uploaded are not uploaded again, the CloudWatch stream resumes
//!    after its last acknowledged record (the chain and sequence numbers are re-derived,
//!    so a batch re-sent is an identifiable duplicate).
//!
//! A recording that cannot be trusted or read — no `session.json`, a spool with a bad
//! header, a corrupt or altered record in its middle, events after the end — is moved to
//! `<state>/quarantine/` with a `QUARANTINED.txt` saying why and one error line in the
//! log. It is never retried and never blocks the others (each is handled on its own).
//! A recording that cannot be rebuilt for a passing reason (the disk is full, an I/O
//! error) is left where it is and tried again every [`RETRY_TRANSIENT`] while the agent
//! runs: quarantine is for corruption only.

use super::recording::{self, Delivery, Meta, RebuildError};
use super::Ctx;
use crate::delivery::aws::{Logs, S3};
use crate::delivery::retry::with_retries;
use crate::delivery::stream::stream_to_cloudwatch;
use crate::spool::layout::{self, Paths};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Name of the directory (under the state dir) that holds quarantined recordings.
pub const QUARANTINE_DIR: &str = "quarantine";

/// Recording directories under `root` whose delivery never finished, oldest first.
pub fn unsettled(root: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut dirs: Vec<(std::time::SystemTime, PathBuf)> = rd
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .filter(|p| !p.join(layout::STATUS_FILE).exists())
        .map(|p| {
            let t = std::fs::metadata(&p)
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            (t, p)
        })
        .collect();
    dirs.sort();
    dirs.into_iter().map(|(_, p)| p).collect()
}

/// Moves a recording to `<state>/quarantine/` with the reason beside it, and logs it.
/// Returns where it went.
///
/// # Errors
/// The move failed (the recording stays where it was; the error says why).
pub fn quarantine(state_dir: &Path, dir: &Path, reason: &str) -> std::io::Result<PathBuf> {
    let qdir = state_dir.join(QUARANTINE_DIR);
    recording::private_dir(&qdir)?;
    let name = dir
        .file_name()
        .map_or_else(|| "recording".into(), |n| n.to_string_lossy().into_owned());
    let mut to = qdir.join(&name);
    let mut n = 1;
    while to.exists() {
        n += 1;
        to = qdir.join(format!("{name}.{n}"));
    }
    std::fs::rename(dir, &to)?;
    let note = format!(
        "This recording was not delivered and will not be retried:\n{reason}\n\nCheck it with `session-agent verify {}`.\n",
        to.join(layout::EVENTS_FILE).display()
    );
    let _ = layout::write_atomic(&to.join("QUARANTINED.txt"), note.as_bytes());
    tracing::error!(recording = %name, reason, moved_to = %to.display(), "Recording quarantined: it will not be delivered or retried");
    Ok(to)
}

/// Checks and rebuilds one unsettled recording (blocking): its [`Meta`], paths and what
/// the rebuild found, or the reason to quarantine it.
///
/// # Errors
/// Why the recording cannot be trusted.
pub fn prepare(
    root: &Path,
    dir: &Path,
    redactor: crate::audit::redact::Redactor,
) -> Result<(Meta, Paths, recording::Rebuilt), RebuildError> {
    let meta = match std::fs::metadata(dir.join(layout::META_FILE)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(RebuildError::Transient(format!(
                "cannot read {}: {e}",
                layout::META_FILE
            )))
        }
        _ => Meta::read(dir).map_err(RebuildError::Corrupt)?,
    };
    let paths = Paths::new(root, &meta.session_id);
    if paths.dir != dir {
        return Err(RebuildError::Corrupt(format!(
            "{} names session \"{}\", which is not this directory",
            layout::META_FILE,
            meta.session_id
        )));
    }
    let rebuilt = recording::rebuild(&paths, &meta, redactor)?;
    Ok((meta, paths, rebuilt))
}

/// How long a recording that could not be rebuilt for a passing reason (a full disk) waits
/// before the next try.
pub const RETRY_TRANSIENT: std::time::Duration = std::time::Duration::from_secs(30);

/// Recovers every unsettled recording: rebuilds them one by one, then delivers each on
/// its own task.
pub(crate) async fn recover_all(ctx: Arc<Ctx>) {
    let root = ctx.config.recordings_dir();
    let dirs = {
        let root = root.clone();
        tokio::task::spawn_blocking(move || unsettled(&root))
            .await
            .unwrap_or_default()
    };
    if dirs.is_empty() {
        return;
    }
    tracing::info!(
        count = dirs.len(),
        "Delivering recordings left undelivered by an earlier run"
    );
    let mut waiting = dirs;
    loop {
        let mut again = Vec::new();
        for dir in waiting {
            let (r, d) = (root.clone(), dir.clone());
            let redactor = crate::audit::redact::Redactor::clone(&ctx.config.redactor);
            let prepared = tokio::task::spawn_blocking(move || prepare(&r, &d, redactor))
                .await
                .unwrap_or_else(|e| {
                    Err(RebuildError::Transient(format!("the rebuild failed: {e}")))
                });
            match prepared {
                Ok((meta, paths, rebuilt)) => {
                    tracing::info!(session = %meta.session_id, interrupted = rebuilt.interrupted, events = rebuilt.summary.events, torn_bytes = rebuilt.torn_bytes, "Recording recovered");
                    let task_ctx = ctx.clone();
                    ctx.tasks.spawn(async move {
                        let delivery = delivery_for(&task_ctx, meta, paths, rebuilt.summary).await;
                        delivery.run().await;
                    });
                }
                Err(RebuildError::Corrupt(reason)) => {
                    if let Err(e) = quarantine(&ctx.config.state_dir, &dir, &reason) {
                        tracing::error!(recording = %dir.display(), reason, error = %e, "A recording cannot be delivered and could not be moved to quarantine");
                    }
                }
                Err(RebuildError::Transient(reason)) => {
                    // A full disk, a read-only remount: not the recording's fault. It
                    // stays where it is and is tried again; never quarantined for this.
                    tracing::warn!(recording = %dir.display(), reason, retry_in = ?RETRY_TRANSIENT, "A recording left by an earlier run cannot be rebuilt yet; trying again later");
                    again.push(dir);
                }
            }
        }
        if again.is_empty() {
            return;
        }
        waiting = again;
        tokio::select! {
            () = tokio::time::sleep(RETRY_TRANSIENT) => {}
            () = ctx.stopping.cancelled() => return,
        }
    }
}

/// The delivery of a recovered recording, as its [`Meta`] says.
async fn delivery_for(
    ctx: &Ctx,
    meta: Meta,
    paths: Paths,
    summary: recording::Summary,
) -> Delivery {
    let mut delivery = Delivery {
        session_id: meta.session_id.clone(),
        summary: recording::PendingSummary::ready(paths.clone(), summary),
        paths,
        s3: None,
        cwl_upload: None,
        streamer: None,
        skipped: meta.skipped.clone(),
    };
    if meta.s3.is_none() && meta.cwl.is_none() {
        return delivery;
    }
    let config = ctx.aws().await;
    if config.region().is_none() {
        delivery.skipped.push(
            "session logs not delivered: no AWS region is configured for the agent (set AWS_REGION); the recording stays in the state dir".into(),
        );
        return delivery;
    }
    if let Some(dest) = meta.s3 {
        let s3 = S3::new(config);
        let found = with_retries("read bucket encryption", || {
            s3.bucket_encryption(&dest.bucket)
        })
        .await;
        match crate::delivery::check_s3(&dest, found) {
            Ok(encryption) => delivery.s3 = Some((s3, dest, encryption)),
            Err(why) => delivery
                .skipped
                .push(format!("S3 upload not made after recovery: {why}")),
        }
    }
    if let Some(dest) = meta.cwl {
        let logs = Logs::new(config);
        if dest.streaming {
            let fields = meta
                .fields
                .unwrap_or_else(|| crate::delivery::cwl::SessionFields {
                    region: String::new(),
                    target_id: ctx.target_id.clone(),
                    owner_arn: String::new(),
                    run_as_user: String::new(),
                    session_id: meta.session_id.clone(),
                    mode: crate::delivery::cwl::StreamMode::Full,
                });
            let len = std::fs::metadata(&delivery.paths.stream).map_or(0, |m| m.len());
            // The recording is complete: a progress channel already closed at its length.
            let (_, progress) = tokio::sync::watch::channel(len);
            delivery.streamer = Some(tokio::spawn(stream_to_cloudwatch(
                logs,
                dest.group,
                fields,
                delivery.paths.clone(),
                progress,
            )));
        } else {
            delivery.cwl_upload = Some((logs, dest));
        }
    }
    delivery
}

//! `verify`'s judgement of a spool (pure over any reader): intact or broken, and whether
//! an intact recording is complete (its end record, no gaps, no torn tail). The
//! `verify` command (`replay.rs`) runs it on local files, S3 objects and CloudWatch
//! copies and compares their ends; the agent's tests and the fuzz target run it too.

use super::format::{hex, ChainChecker};
use super::reader::{ReadError, Reader};
use crate::recorder::{Event, EventKind};
use std::io::Read;

/// What `verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every record's checksum and chain value are right and no event is missing from the
    /// chain; whether the recording is complete is in `ended` and `gaps`.
    Intact {
        /// Records checked.
        records: u64,
        /// The chain value after the last record (compare with a copy kept elsewhere).
        head: String,
        /// The last record was cut short (a crash mid-write); everything before it is
        /// intact.
        torn_tail: bool,
        /// How the session ended, from its end record; `None`: no end record (cut short,
        /// or still being recorded).
        ended: Option<String>,
        /// Parts of the session that were not recorded (gap records), described.
        gaps: Vec<String>,
    },
    /// The first alteration, corruption or gap in the chain.
    Broken(String),
}

impl Verdict {
    /// Intact, with its end record, and without gaps.
    pub fn complete(&self) -> bool {
        matches!(self, Verdict::Intact { ended: Some(_), gaps, torn_tail: false, .. } if gaps.is_empty())
    }
}

/// Checks a spool read from `input`.
///
/// # Errors
/// Not a spool.
pub fn verify_spool(input: impl Read) -> Result<Verdict, String> {
    let mut checker = ChainChecker::new();
    let mut ended: Option<String> = None;
    let mut gaps = Vec::new();
    let mut open_gap: Option<String> = None;
    let mut started_unix_ms = 0;
    let mut torn_tail = false;
    let reader = Reader::new(input).map_err(|e| e.to_string())?;
    for record in reader {
        let r = match record {
            Ok(r) => r,
            Err(ReadError::Torn(_)) => {
                torn_tail = true;
                break;
            }
            Err(ReadError::Unreadable(e)) => return Err(e),
            Err(ReadError::Corrupt(e)) => return Ok(Verdict::Broken(e)),
        };
        if let Err(e) = checker.check(&r) {
            return Ok(Verdict::Broken(e.to_string()));
        }
        if ended.is_some() {
            return Ok(Verdict::Broken(format!(
                "record {}: an event after the session's end",
                checker.count() - 1
            )));
        }
        let Ok(event) = Event::from_json_line(&String::from_utf8_lossy(&r.payload)) else {
            return Ok(Verdict::Broken(format!(
                "record {}: not an event",
                checker.count() - 1
            )));
        };
        match &event.kind {
            EventKind::Start(info) => started_unix_ms = info.started_unix_ms,
            EventKind::End { exit_code, how } => {
                ended = Some(match exit_code {
                    Some(code) => format!("{how} (status {code})"),
                    None => how.clone(),
                });
            }
            gap @ EventKind::Gap { to_ms, .. } => {
                let note =
                    crate::recorder::event::gap_note(gap, started_unix_ms).unwrap_or_default();
                let text = note
                    .trim()
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned();
                if to_ms.is_some() {
                    open_gap = None;
                    gaps.push(text);
                } else {
                    open_gap = Some(text);
                }
            }
            _ => {}
        }
    }
    gaps.extend(open_gap.map(|g| format!("{g} (never closed)")));
    Ok(Verdict::Intact {
        records: checker.count(),
        head: hex(&checker.head()),
        torn_tail,
        ended,
        gaps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::format as spool;

    fn spool_of(n: u64) -> Vec<u8> {
        spool::encode_spool((0..n).map(|seq| {
            format!(r#"{{"seq":{seq},"at_ms":{seq},"type":"resize","cols":80,"rows":24}}"#)
        }))
    }

    #[test]
    fn verify_finds_intact_torn_altered_and_non_spools() {
        let good = spool_of(5);
        match verify_spool(&good[..]).unwrap() {
            Verdict::Intact {
                records: 5,
                torn_tail: false,
                head,
                ended: None,
                ..
            } => assert_eq!(head.len(), 64),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            verify_spool(&good[..good.len() - 4]).unwrap(),
            Verdict::Intact {
                records: 4,
                torn_tail: true,
                ..
            }
        ));
        // A flipped byte without a fixed CRC: corrupt.
        let mut bad = good.clone();
        let at = good.len() - 10;
        bad[at] ^= 1;
        match verify_spool(&bad[..]).unwrap() {
            Verdict::Broken(what) => assert!(
                what.contains("record 4") && what.contains("checksum"),
                "{what}"
            ),
            other => panic!("{other:?}"),
        }
        // An edited record with its CRC recomputed: the chain shows it.
        let mut records: Vec<spool::Record> = Reader::new(&good[..])
            .unwrap()
            .map(Result::unwrap)
            .collect();
        records[2].payload = br#"{"seq":2,"at_ms":2,"type":"resize","cols":99,"rows":24}"#.to_vec();
        let mut edited = spool::MAGIC.to_vec();
        for r in &records {
            edited.extend(spool::encode_record(&r.chain, &r.payload));
        }
        match verify_spool(&edited[..]).unwrap() {
            Verdict::Broken(what) => assert!(what.starts_with("record 2:"), "{what}"),
            other => panic!("{other:?}"),
        }
        assert!(verify_spool(&b"{\"seq\":0}\n"[..]).is_err());
    }

    fn spool_from(payloads: &[String]) -> Vec<u8> {
        spool::encode_spool(payloads)
    }

    #[test]
    fn only_a_recording_with_its_end_and_no_gap_is_complete() {
        let ev = |seq: u64, body: &str| format!(r#"{{"seq":{seq},"at_ms":{seq},{body}}}"#);
        let start = ev(
            0,
            r#""type":"start","session_id":"s","user":"u","run_as_user":"r","owner":"o","target":"t","cols":80,"rows":24,"started_unix_ms":1700000000000"#,
        );
        let out = |seq| ev(seq, r#""type":"output","data":"aGk=""#);
        let end = |seq| ev(seq, r#""type":"end","exit_code":0,"how":"exited""#);
        let whole = spool_from(&[start.clone(), out(1), end(2)]);
        let v = verify_spool(&whole[..]).unwrap();
        assert!(v.complete(), "{v:?}");
        let no_end = spool_from(&[start.clone(), out(1)]);
        let v = verify_spool(&no_end[..]).unwrap();
        assert!(
            !v.complete() && matches!(v, Verdict::Intact { ended: None, .. }),
            "{v:?}"
        );
        let gap = ev(
            2,
            r#""type":"gap","from_ms":2,"to_ms":9,"bytes":300,"events":4,"reason":"no space left""#,
        );
        let gapped = spool_from(&[start.clone(), out(1), gap, end(3)]);
        match verify_spool(&gapped[..]).unwrap() {
            v @ Verdict::Intact { .. } if !v.complete() => {
                let Verdict::Intact { gaps, .. } = v else {
                    unreachable!()
                };
                assert_eq!(gaps.len(), 1);
                assert!(
                    gaps[0].contains("300 bytes in 4 events") && gaps[0].contains("no space left"),
                    "{gaps:?}"
                );
                assert!(gaps[0].contains("2023-11-14T22:13:20Z"), "dated: {gaps:?}");
            }
            other => panic!("{other:?}"),
        }
        let open_gap = ev(
            1,
            r#""type":"gap","from_ms":2,"bytes":0,"events":0,"reason":"no space left""#,
        );
        let v = verify_spool(&spool_from(&[start.clone(), open_gap, end(2)])[..]).unwrap();
        assert!(
            matches!(&v, Verdict::Intact { gaps, .. } if gaps[0].ends_with("(never closed)")),
            "{v:?}"
        );
        // An event after the end is not a recording any writer makes.
        let after = spool_from(&[start, end(1), out(2)]);
        assert!(
            matches!(verify_spool(&after[..]).unwrap(), Verdict::Broken(w) if w.contains("after the session's end"))
        );
    }
}

//! Feeds arbitrary bytes to what reads recordings back: the spool reader and `verify`
//! (length prefixes, checksums, chain), the CloudWatch stream checker of
//! `verify cloudwatch://` (each line one event message), and the line parsers of
//! `transcript`/`replay` for both text formats. None may panic, hang or allocate without
//! bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use session_agent::delivery::cwl::StreamChecker;
use session_agent::recorder::playback::{detect, parse_line, Format};
use session_agent::spool::{reader::Reader as SpoolReader, verify::verify_spool};

fuzz_target!(|data: &[u8]| {
    let _ = verify_spool(data);
    if let Ok(reader) = SpoolReader::new(data) {
        for record in reader.take(10_000) {
            if record.is_err() {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(data);
    let mut checker = StreamChecker::new();
    for (i, line) in text.lines().enumerate() {
        if checker.check(i as u64, line).is_err() {
            break;
        }
    }
    let mut lines = text.lines();
    if let Some(first) = lines.next() {
        let _ = detect(first);
        for (i, line) in lines.enumerate() {
            for format in [Format::Events, Format::Asciicast] {
                let _ = parse_line(format, i + 2, line);
            }
        }
    }
});

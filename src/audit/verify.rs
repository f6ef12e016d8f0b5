//! The verifier: [`verify`] reads an audit log line by line and checks each line's JSON, seal,
//! `seq`, `prev` and common fields, naming the first line that does not verify. It only reads;
//! the line format it checks is defined by [`super::chain`], and it never writes the file.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use serde_json::{Map, Value};

use super::AuditError;
use super::chain::{GENESIS_PREV, MAX_LINE_BYTES, check_seal, is_sha256_hex, sha256_hex};

/// What `verify` found in a log whose every line checks out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifySummary {
    pub records: u64,
    /// `lockdown_started` records that were not dry runs.
    pub lockdowns: u64,
    pub first_ts: Option<String>,
    pub last_ts: Option<String>,
    /// The SHA-256 of the last line: compare it with the `line_sha256` the writer logged to
    /// journald for that `seq` to detect lines removed from the end of the file.
    pub last_line_sha256: Option<String>,
}

/// Check every line of the log at `path`: JSON, seal, `seq` (1, then +1), `prev`, and the types of
/// the common fields. Returns a summary, or [`AuditError::Broken`] naming the first line that does
/// not verify ([`AuditError::Read`] if the file cannot be read). The file is opened with
/// [`crate::fs_trust::open_regular`] (a FIFO, device, directory or symlink is refused, never
/// waited on), and no line may be longer than [`MAX_LINE_BYTES`].
pub fn verify(path: &Path) -> Result<VerifySummary, AuditError> {
    let file = crate::fs_trust::open_regular(path).map_err(|source| AuditError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    verify_from(path, BufReader::new(file))
}

/// [`verify`] over any reader; `path` only names the log in errors.
pub(super) fn verify_from(
    path: &Path,
    mut reader: impl BufRead,
) -> Result<VerifySummary, AuditError> {
    let read_err = |source| AuditError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut summary = VerifySummary {
        records: 0,
        lockdowns: 0,
        first_ts: None,
        last_ts: None,
        last_line_sha256: None,
    };
    let mut prev = GENESIS_PREV.to_owned();
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = (&mut reader)
            .take(MAX_LINE_BYTES)
            .read_until(b'\n', &mut line)
            .map_err(read_err)?;
        if read == 0 {
            return Ok(summary);
        }
        let number = summary.records + 1;
        let broken = |reason: String| AuditError::Broken {
            path: path.to_path_buf(),
            line: number,
            reason,
        };
        if read as u64 == MAX_LINE_BYTES && line.last() != Some(&b'\n') {
            return Err(broken(format!(
                "longer than {MAX_LINE_BYTES} bytes, the longest line an audit record may be (not an audit log)"
            )));
        }
        if line.pop() != Some(b'\n') {
            return Err(broken(
                "torn: the file ends without a newline (a crash in mid-write; the writer cuts it off and records audit_recovered when it next opens the log)".into(),
            ));
        }
        let (ts, record) = check_line(&line, number, &prev).map_err(broken)?;
        if record.get("event").and_then(Value::as_str) == Some("lockdown_started")
            && record.get("dry_run").and_then(Value::as_bool) != Some(true)
        {
            summary.lockdowns += 1;
        }
        prev = sha256_hex(&line);
        summary.records = number;
        summary.first_ts.get_or_insert_with(|| ts.clone());
        summary.last_ts = Some(ts);
        summary.last_line_sha256 = Some(prev.clone());
    }
}

/// Check one line (without its newline) as line `number` following a line whose SHA-256 is
/// `prev`; returns its `ts` and the parsed record.
fn check_line(
    line: &[u8],
    number: u64,
    prev: &str,
) -> Result<(String, Map<String, Value>), String> {
    let record: Map<String, Value> =
        serde_json::from_slice(line).map_err(|err| format!("not a JSON object ({err})"))?;
    check_seal(line).map_err(str::to_owned)?;
    match record.get("seq").and_then(Value::as_u64) {
        Some(seq) if seq == number => {}
        Some(seq) => return Err(format!("seq is {seq}, expected {number}")),
        None => return Err("has no integer seq".into()),
    }
    match record.get("prev").and_then(Value::as_str) {
        Some(found) if found == prev => {}
        Some(_) if number == 1 => {
            return Err("prev is not 64 zeros, as the first line of a chain must be".into());
        }
        Some(_) => {
            return Err(format!(
                "prev does not match the SHA-256 of line {}",
                number - 1
            ));
        }
        None => return Err("has no prev".into()),
    }
    let ts = match record.get("ts").and_then(Value::as_str) {
        Some(ts) if humantime::parse_rfc3339(ts).is_ok() => ts.to_owned(),
        Some(ts) => return Err(format!("ts {ts:?} is not an RFC 3339 UTC timestamp")),
        None => return Err("has no ts".into()),
    };
    if record
        .get("event")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err("has no event name".into());
    }
    if record.get("host").and_then(Value::as_str).is_none() {
        return Err("has no host".into());
    }
    if record.get("pid").and_then(Value::as_u64).is_none() {
        return Err("has no integer pid".into());
    }
    // Empty when no policy could be read (e.g. a `policy_rejected` at start).
    if !record
        .get("policy_sha256")
        .and_then(Value::as_str)
        .is_some_and(|sha| sha.is_empty() || is_sha256_hex(sha))
    {
        return Err("policy_sha256 is neither empty nor 64 lowercase hex digits".into());
    }
    Ok((ts, record))
}

#[cfg(test)]
mod tests {
    use super::super::chain::{SEAL_LEN, seal_line};
    use super::super::test_support::{broken_line, sample_log, verify_bytes};
    use super::*;

    #[test]
    fn every_single_bit_flip_of_every_byte_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let good = sample_log(dir.path());
        assert!(verify_bytes(&good).is_ok());
        let last_line_start = good[..good.len() - 1]
            .iter()
            .rposition(|&b| b == b'\n')
            .unwrap()
            + 1;
        let mut still_parses = 0;
        let mut still_parses_in_last_line = 0;
        for at in 0..good.len() {
            for bit in 0..8 {
                let mut bad = good.clone();
                bad[at] ^= 1 << bit;
                let result = verify_bytes(&bad);
                assert!(
                    result.is_err(),
                    "flipping bit {bit} of byte {at} ({:?}) was not detected",
                    good[at] as char
                );
                // The hard case: every line still parses, so only the hashes can tell.
                let text = String::from_utf8_lossy(&bad);
                if bad.ends_with(b"\n")
                    && text.lines().count() == 4
                    && text
                        .lines()
                        .all(|l| serde_json::from_str::<Map<String, Value>>(l).is_ok())
                {
                    still_parses += 1;
                    if at >= last_line_start {
                        still_parses_in_last_line += 1;
                    }
                }
            }
        }
        assert!(
            still_parses > 100,
            "the test exercises flips that still parse ({still_parses})"
        );
        assert!(
            still_parses_in_last_line > 20,
            "and flips in the last line ({still_parses_in_last_line})"
        );
    }

    #[test]
    fn a_resealed_edit_is_named_by_the_next_lines_prev() {
        let dir = tempfile::tempdir().unwrap();
        let good = String::from_utf8(sample_log(dir.path())).unwrap();
        let mut raw: Vec<String> = good.lines().map(str::to_owned).collect();
        // Someone edits line 2 and recomputes its seal (but not the chain after it).
        let edited = raw[1].replace("\"dry_run\":false", "\"dry_run\":true ");
        let unsealed = format!("{}}}", &edited[..edited.len() - SEAL_LEN]);
        raw[1] = String::from_utf8(seal_line(unsealed.into_bytes())).unwrap();
        let bad = raw.join("\n") + "\n";
        let (line, reason) = broken_line(verify_bytes(bad.as_bytes()));
        assert_eq!(line, 3);
        assert_eq!(reason, "prev does not match the SHA-256 of line 2");
    }

    #[test]
    fn deleting_or_reordering_lines_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let good = String::from_utf8(sample_log(dir.path())).unwrap();
        let raw: Vec<&str> = good.lines().collect();
        let join = |lines: Vec<&str>| lines.join("\n") + "\n";

        for deleted in 0..raw.len() - 1 {
            let mut lines = raw.clone();
            lines.remove(deleted);
            let (line, reason) = broken_line(verify_bytes(join(lines).as_bytes()));
            assert_eq!(line, deleted as u64 + 1, "deleting line {}", deleted + 1);
            assert!(reason.starts_with("seq is"), "{reason}");
        }
        for first in 0..raw.len() - 1 {
            let mut lines = raw.clone();
            lines.swap(first, first + 1);
            let (line, _) = broken_line(verify_bytes(join(lines).as_bytes()));
            assert_eq!(line, first as u64 + 1);
        }
        // The documented limitation: whole lines removed from the end leave a valid, shorter chain.
        // Only the anchor outside the file (the last line's SHA-256 logged to journald) shows it.
        let shorter = verify_bytes(join(raw[..3].to_vec()).as_bytes()).unwrap();
        assert_eq!(shorter.records, 3);
        assert_ne!(
            shorter.last_line_sha256,
            verify_bytes(good.as_bytes()).unwrap().last_line_sha256
        );
    }

    #[test]
    fn truncating_anywhere_but_a_line_end_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let good = sample_log(dir.path());
        for len in 1..good.len() {
            let result = verify_bytes(&good[..len]);
            if good[len - 1] == b'\n' {
                assert!(
                    result.is_ok(),
                    "a cut at a line end leaves a shorter valid chain"
                );
            } else {
                let (_, reason) = broken_line(result);
                assert!(reason.starts_with("torn"), "{reason}");
            }
        }
    }

    #[test]
    fn a_line_longer_than_the_cap_is_one_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let good = sample_log(dir.path());
        let mut bad = good.clone();
        bad.extend(std::iter::repeat_n(b'x', MAX_LINE_BYTES as usize + 10));
        bad.push(b'\n');
        let (line, reason) = broken_line(verify_bytes(&bad));
        assert_eq!(line, 5);
        assert!(reason.starts_with("longer than 4194304 bytes"), "{reason}");
        // One byte under the cap (newline included) is read whole: it fails as JSON, not length.
        let mut under = good;
        under.extend(std::iter::repeat_n(b'x', MAX_LINE_BYTES as usize - 1));
        under.push(b'\n');
        let (line, reason) = broken_line(verify_bytes(&under));
        assert_eq!(line, 5);
        assert!(reason.starts_with("not a JSON object"), "{reason}");
    }

    #[test]
    fn dev_zero_a_fifo_a_directory_and_a_symlink_are_refused_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let link = dir.path().join("link");
        std::fs::write(dir.path().join("real"), sample_log(dir.path())).unwrap();
        std::os::unix::fs::symlink(dir.path().join("real"), &link).unwrap();
        for path in [Path::new("/dev/zero"), &fifo, dir.path(), &link] {
            let err = verify(path).unwrap_err();
            let AuditError::Read { source, .. } = &err else {
                panic!("{err:?}");
            };
            assert!(
                source.to_string().contains("not a regular file"),
                "{}: {source}",
                path.display()
            );
        }
    }

    #[test]
    fn verify_names_bad_json_and_field_problems() {
        let (line, reason) = broken_line(verify_bytes(b"not json\n"));
        assert_eq!(line, 1);
        assert!(reason.starts_with("not a JSON object"), "{reason}");
        let (_, reason) = broken_line(verify_bytes(b"{\"seq\":1}\n"));
        assert_eq!(reason, "has no seal at its end");
        assert_eq!(verify_bytes(b"").unwrap().records, 0);
        let missing = verify(Path::new("/nonexistent/audit.jsonl")).unwrap_err();
        assert!(matches!(missing, AuditError::Read { .. }), "{missing}");
    }
}

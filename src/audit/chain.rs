//! The chain: how one audit line is built, sealed and chained to the one before it, and how the
//! chain's tail is read back from the file (finding a torn last line). It builds bytes and reads
//! them; it never writes, locks or syncs the file (that is [`super::writer`]), so a different
//! writer (e.g. a group-committing thread) can reuse it unchanged.
//!
//! # The line format
//!
//! One compact JSON object per line: `seq`, `ts`, `event`, `prev`, `host`, `pid`,
//! `policy_sha256`, the event's own fields, and last a `seal`:
//!
//! - `prev` is the SHA-256 of the previous line's bytes (without its newline), 64 zeros on line 1.
//!   It detects an edited, deleted or reordered line — but nothing chains *to* the last line.
//! - `seal` is the SHA-256 of the line's own bytes with the `,"seal":"…"` member removed (so the
//!   line ends `…}` where the seal was). It is this project's addition to DESIGN.md §5 ("more
//!   fields may be added") so that a change to the **last** line is detected too: without it a
//!   flipped digit in the last record's `ts` or `pid` would still verify.
//!
//! # What the chain proves, and what it does not
//!
//! Neither hash is keyed. Together they detect corruption and any edit made by someone who does
//! not recompute the hashes from that point on — every single-byte change, a deleted, inserted or
//! reordered line, a torn write. They do **not** stop someone with write access who rewrites the
//! whole tail with fresh hashes, nor the removal of whole lines *at the end* of the file. The
//! anchor against both is outside the file: every record written is also logged to tracing
//! (journald under systemd) with its `seq` and `line_sha256` (the value the next line's `prev`
//! will carry), and `audit verify` prints the `seq` and SHA-256 of the last line, so the two can
//! be compared.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::SystemTime;

use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::{AuditError, Event, event_fields};

/// `prev` of line 1.
pub(super) const GENESIS_PREV: &str =
    "0000000000000000000000000000000000000000000000000000000000000000";

/// Every line starts with this (the writer serializes `seq` first); used to tell a torn first
/// line of ours from a file that is not an audit log at all.
const LINE_START: &[u8] = b"{\"seq\":";

/// The seal member that ends every line: `,"seal":"<64 hex>"}`.
const SEAL_PREFIX: &[u8] = b",\"seal\":\"";
pub(super) const SEAL_LEN: usize = SEAL_PREFIX.len() + 64 + 2;

/// Fields the writer adds to every line; no event may use these names.
pub const COMMON_FIELDS: [&str; 8] = [
    "seq",
    "ts",
    "event",
    "prev",
    "host",
    "pid",
    "policy_sha256",
    "seal",
];

/// How far back the tail reader reads at a time.
const TAIL_CHUNK: u64 = 64 * 1024;

/// The longest last line (plus torn tail) the writer accepts as its own. Our records are far
/// shorter (a `lockdown_started` listing 1000 stores is ~100 KiB); anything longer is not our
/// log, and cutting a "torn tail" off it could destroy someone else's data.
const MAX_TAIL_BYTES: u64 = 4 * 1024 * 1024;

/// The longest line the verifier reads (newline included): the same bound as the writer's, so
/// a log the writer accepts as its own always verifies, and a hostile file (`/dev/zero`, one
/// endless line) costs at most this much memory.
pub(super) const MAX_LINE_BYTES: u64 = MAX_TAIL_BYTES;

/// A record waiting to be written: everything but `seq` and `prev`, which are only known under
/// the file lock.
#[derive(Debug, Clone)]
pub(super) struct Pending {
    pub(super) ts: String,
    pub(super) event: String,
    pub(super) fields: Map<String, Value>,
    pub(super) policy_sha256: String,
}

impl Pending {
    /// The record of `event` (already split into its name and redacted fields), stamped now.
    pub(super) fn stamped_now(
        event: String,
        fields: Map<String, Value>,
        policy_sha256: &str,
    ) -> Pending {
        Pending {
            ts: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            event,
            fields,
            policy_sha256: policy_sha256.to_owned(),
        }
    }

    /// A record the writer adds by itself (`audit_recovered`, `audit_records_lost`), stamped now.
    pub(super) fn writer_record(event: &Event, policy_sha256: &str) -> Pending {
        let (name, fields) = event_fields(event);
        Pending::stamped_now(name, fields, policy_sha256)
    }
}

/// What follows the last complete line, and where the chain continues from.
#[derive(Debug)]
pub(super) struct ChainTail {
    /// `seq` of the last complete line (0 for an empty file).
    pub(super) seq: u64,
    /// SHA-256 of the last complete line (zeros for an empty file).
    pub(super) prev: String,
    /// Bytes up to and including the last complete line's newline.
    pub(super) complete_len: u64,
    /// Bytes after it: a torn line (empty if none).
    pub(super) torn: Vec<u8>,
}

impl ChainTail {
    /// The `audit_recovered` event for the torn line after the tail, if there is one: its bytes
    /// escaped (`\xNN`, `\\`, `\"`, `\n` …, reversible), their SHA-256 and length.
    pub(super) fn recovered(&self) -> Option<Event> {
        (!self.torn.is_empty()).then(|| Event::AuditRecovered {
            torn_bytes: self.torn.escape_ascii().to_string(),
            torn_sha256: sha256_hex(&self.torn),
            torn_len: self.torn.len(),
        })
    }
}

/// One line as it was chained: its `seq`, its SHA-256 (the next line's `prev`) and its bytes
/// (without the newline).
#[derive(Debug)]
pub(super) struct ChainedLine {
    pub(super) seq: u64,
    pub(super) sha256: String,
    pub(super) bytes: Vec<u8>,
}

/// The lines of one append, chained on from a tail.
#[derive(Debug)]
pub(super) struct Batch {
    /// Every line followed by its newline: what one `write_all` appends.
    pub(super) bytes: Vec<u8>,
    /// Each line, in order, for the record logged once it is durable.
    pub(super) lines: Vec<ChainedLine>,
    /// `seq` of the last line: where the chain continues.
    pub(super) seq: u64,
    /// SHA-256 of the last line: the next line's `prev`.
    pub(super) prev: String,
}

/// Who writes the lines: their `host` and `pid` fields.
#[derive(Debug)]
pub(super) struct Origin {
    host: String,
    pid: u32,
}

impl Origin {
    /// This host and this process.
    pub(super) fn this_process() -> Origin {
        Origin {
            host: hostname(),
            pid: std::process::id(),
        }
    }

    /// Build, seal and chain one line per record, continuing after the line numbered `seq` whose
    /// SHA-256 is `prev`.
    pub(super) fn chain(&self, seq: u64, prev: &str, records: &[Pending]) -> Batch {
        let mut batch = Batch {
            bytes: Vec::new(),
            lines: Vec::with_capacity(records.len()),
            seq,
            prev: prev.to_owned(),
        };
        for record in records {
            batch.seq += 1;
            let line = seal_line(self.line(record, batch.seq, &batch.prev));
            batch.prev = sha256_hex(&line);
            batch.bytes.extend_from_slice(&line);
            batch.bytes.push(b'\n');
            batch.lines.push(ChainedLine {
                seq: batch.seq,
                sha256: batch.prev.clone(),
                bytes: line,
            });
        }
        batch
    }

    /// The unsealed line for `record` at `seq`.
    fn line(&self, record: &Pending, seq: u64, prev: &str) -> Vec<u8> {
        #[derive(Serialize)]
        struct Line<'a> {
            seq: u64,
            ts: &'a str,
            event: &'a str,
            prev: &'a str,
            host: &'a str,
            pid: u32,
            policy_sha256: &'a str,
            #[serde(flatten)]
            fields: &'a Map<String, Value>,
        }
        let line = Line {
            seq,
            ts: &record.ts,
            event: &record.event,
            prev,
            host: &self.host,
            pid: self.pid,
            policy_sha256: &record.policy_sha256,
            fields: &record.fields,
        };
        // Serializing strings, integers and a map of JSON values to a Vec cannot fail.
        serde_json::to_vec(&line).expect("an audit line always serializes")
    }
}

/// Insert the `seal` member before the closing brace of `unsealed` (a compact JSON object).
pub(super) fn seal_line(unsealed: Vec<u8>) -> Vec<u8> {
    let seal = sha256_hex(&unsealed);
    let mut line = unsealed;
    line.pop(); // the closing brace
    line.extend_from_slice(SEAL_PREFIX);
    line.extend_from_slice(seal.as_bytes());
    line.extend_from_slice(b"\"}");
    line
}

/// Check the seal at the end of `line` (without its newline).
pub(super) fn check_seal(line: &[u8]) -> Result<(), &'static str> {
    if line.len() < SEAL_LEN + 1 || !line.ends_with(b"\"}") {
        return Err("has no seal at its end");
    }
    let prefix_at = line.len() - SEAL_LEN;
    if &line[prefix_at..prefix_at + SEAL_PREFIX.len()] != SEAL_PREFIX {
        return Err("has no seal at its end");
    }
    let seal = &line[prefix_at + SEAL_PREFIX.len()..line.len() - 2];
    let mut unsealed = line[..prefix_at].to_vec();
    unsealed.push(b'}');
    if sha256_hex(&unsealed).as_bytes() != seal {
        return Err(
            "seal does not match the line's content (the line was changed after it was written)",
        );
    }
    Ok(())
}

pub(super) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub(super) fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The host name for the `host` field.
fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

#[derive(Debug)]
enum TailError {
    Io(std::io::Error),
    /// The file does not end like an audit log of ours.
    Foreign(String),
}

/// Find the last complete line of the file at `path` (`file`, `len` bytes long) and what follows
/// it: where the chain continues, and a torn line to recover. [`AuditError::ForeignTail`] when the
/// file does not end like an audit log of ours.
pub(super) fn read_tail(path: &Path, file: &File, len: u64) -> Result<ChainTail, AuditError> {
    scan_tail(file, len).map_err(|err| match err {
        TailError::Io(source) => AuditError::Read {
            path: path.to_path_buf(),
            source,
        },
        TailError::Foreign(reason) => AuditError::ForeignTail {
            path: path.to_path_buf(),
            reason,
        },
    })
}

/// [`read_tail`], reading back from the end `TAIL_CHUNK` bytes at a time.
fn scan_tail(file: &File, len: u64) -> Result<ChainTail, TailError> {
    let mut start = len;
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let last_newline = buf.iter().rposition(|&b| b == b'\n');
        let line_start = match last_newline {
            Some(end) => buf[..end]
                .iter()
                .rposition(|&b| b == b'\n')
                .map(|nl| nl + 1)
                .or((start == 0).then_some(0)),
            None => None,
        };
        if let (Some(end), Some(line_start)) = (last_newline, line_start) {
            return chain_tail(
                &buf[line_start..end],
                buf[end + 1..].to_vec(),
                start + end as u64 + 1,
            );
        }
        if last_newline.is_none() && start == 0 {
            // No complete line at all: an empty file, or a torn first line.
            let torn = buf;
            let ours = torn.starts_with(LINE_START)
                || LINE_START.starts_with(&torn)
                || torn.iter().all(|&b| b == 0);
            if !ours {
                return Err(TailError::Foreign(
                    "it holds no complete line and does not start like an audit log".into(),
                ));
            }
            return Ok(ChainTail {
                seq: 0,
                prev: GENESIS_PREV.to_owned(),
                complete_len: 0,
                torn,
            });
        }
        if len - start >= MAX_TAIL_BYTES {
            return Err(TailError::Foreign(format!(
                "its last line is longer than {MAX_TAIL_BYTES} bytes"
            )));
        }
        let from = start.saturating_sub(TAIL_CHUNK);
        // `from < start <= len`, and the chunk is at most TAIL_CHUNK: fits in usize.
        let mut chunk = vec![0; (start - from) as usize];
        file.read_exact_at(&mut chunk, from)
            .map_err(TailError::Io)?;
        chunk.extend_from_slice(&buf);
        buf = chunk;
        start = from;
    }
}

/// The chain state after `line`, the last complete line; `torn` follows it.
fn chain_tail(line: &[u8], torn: Vec<u8>, complete_len: u64) -> Result<ChainTail, TailError> {
    let record: Map<String, Value> = serde_json::from_slice(line)
        .map_err(|err| TailError::Foreign(format!("its last complete line is not JSON ({err})")))?;
    let seq = record
        .get("seq")
        .and_then(Value::as_u64)
        .filter(|&seq| seq >= 1);
    let (Some(seq), Some(Value::String(_))) = (seq, record.get("event")) else {
        return Err(TailError::Foreign(
            "its last complete line is not an audit record (no seq or event)".into(),
        ));
    };
    if let Err(reason) = check_seal(line) {
        // Continue anyway: `verify` names the line; refusing to write would lose the new records.
        tracing::warn!(
            seq,
            reason,
            "the last audit record does not verify; continuing its chain"
        );
    }
    Ok(ChainTail {
        seq,
        prev: sha256_hex(line),
        complete_len,
        torn,
    })
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;
    use std::io::Write;

    use super::super::test_support::{
        POLICY, broken_line, events, lines, sample_log, verify_bytes,
    };
    use super::super::{AuditLog, verify};
    use super::*;

    #[test]
    fn lines_carry_the_common_fields_and_chain_from_64_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = sample_log(dir.path());
        let text = String::from_utf8(bytes.clone()).unwrap();
        let raw: Vec<&str> = text.lines().collect();
        assert_eq!(raw.len(), 4);
        for (i, line) in raw.iter().enumerate() {
            // Common fields first, in the documented order; the seal last.
            let keys: Vec<String> = line_keys(line);
            assert_eq!(
                &keys[..7],
                ["seq", "ts", "event", "prev", "host", "pid", "policy_sha256"],
                "line {line}"
            );
            assert_eq!(keys.last().unwrap(), "seal");
            let record: Map<String, Value> = serde_json::from_str(line).unwrap();
            assert_eq!(record["seq"], i as u64 + 1);
            let expected_prev = if i == 0 {
                GENESIS_PREV.to_owned()
            } else {
                sha256_hex(raw[i - 1].as_bytes())
            };
            assert_eq!(record["prev"], expected_prev.as_str());
            assert_eq!(record["pid"], std::process::id());
            assert_eq!(record["host"], hostname().as_str());
            assert_eq!(record["policy_sha256"], POLICY);
            let ts = record["ts"].as_str().unwrap();
            assert!(
                ts.ends_with('Z') && ts.len() == "2026-11-29T10:00:00.000Z".len(),
                "{ts}"
            );
            assert!(humantime::parse_rfc3339(ts).is_ok());
        }
        let summary = verify_bytes(&bytes).unwrap();
        assert_eq!(summary.records, 4);
        assert_eq!(summary.lockdowns, 1);
        assert_eq!(
            summary.last_line_sha256.as_deref(),
            Some(sha256_hex(raw[3].as_bytes()).as_str())
        );
    }

    /// The keys of one JSON object line, in the order they appear.
    fn line_keys(line: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let mut de = serde_json::Deserializer::from_str(line);
        struct Keys<'a>(&'a mut Vec<String>);
        impl<'de> serde::de::Visitor<'de> for Keys<'_> {
            type Value = ();
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
                while let Some((key, _)) = map.next_entry::<String, serde::de::IgnoredAny>()? {
                    self.0.push(key);
                }
                Ok(())
            }
        }
        serde::Deserializer::deserialize_map(&mut de, Keys(&mut keys)).unwrap();
        keys
    }

    #[test]
    fn torn_last_line_is_cut_off_recorded_and_the_chain_continues() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let good = sample_log(dir.path());
        std::fs::copy(dir.path().join("sample.jsonl"), &path).unwrap();
        // A crash in mid-write: half a line, then zeros a filesystem may leave after a crash.
        let mut torn = b"{\"seq\":5,\"ts\":\"2026-11-29T10:00:0".to_vec();
        torn.extend_from_slice(&[0, 0, 0, b'"', b'\\']);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&torn).unwrap();
        drop(file);
        assert!(broken_line(verify(&path)).1.starts_with("torn"));

        let log = AuditLog::open(&path, POLICY);
        assert!(log.healthy());
        log.record_blocking(Event::DaemonStarted);
        drop(log);

        let after = std::fs::read(&path).unwrap();
        assert!(after.starts_with(&good), "the good lines are untouched");
        assert_eq!(verify(&path).unwrap().records, 6);
        let records = lines(&path);
        let recovered = &records[4];
        assert_eq!(recovered["event"], "audit_recovered");
        assert_eq!(recovered["torn_len"], torn.len());
        assert_eq!(recovered["torn_sha256"], sha256_hex(&torn).as_str());
        assert_eq!(
            recovered["torn_bytes"],
            torn.escape_ascii().to_string().as_str()
        );
        assert_eq!(records[5]["event"], "daemon_started");
    }

    #[test]
    fn torn_first_line_is_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, b"{\"seq\":1,\"ts\":").unwrap();
        let log = AuditLog::open(&path, POLICY);
        log.record_blocking(Event::DaemonStarted);
        assert_eq!(events(&path), ["audit_recovered", "daemon_started"]);
        assert_eq!(verify(&path).unwrap().records, 2);
    }

    #[test]
    fn torn_tail_left_by_another_writer_is_recovered_at_the_next_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path, POLICY);
        log.record_blocking(Event::DaemonStarted);
        // Another process crashed in mid-append after our record.
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"seq\":2,\"ts\":\"20").unwrap();
        drop(file);
        log.record_blocking(Event::DaemonStopped);
        assert_eq!(
            events(&path),
            ["daemon_started", "audit_recovered", "daemon_stopped"]
        );
        assert_eq!(verify(&path).unwrap().records, 3);
    }

    #[test]
    fn a_file_that_is_not_an_audit_log_is_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        for content in [
            &b"some other log line\n"[..],
            b"binary \x7fELF without newline",
        ] {
            let path = dir.path().join("audit.jsonl");
            std::fs::write(&path, content).unwrap();
            let log = AuditLog::open(&path, POLICY);
            log.record_blocking(Event::DaemonStarted);
            assert!(!log.healthy());
            assert_eq!(log.unflushed(), 1);
            assert_eq!(
                std::fs::read(&path).unwrap(),
                content,
                "not truncated, not appended to"
            );
            // Moved aside by the operator: the held record starts a new chain.
            std::fs::remove_file(&path).unwrap();
            assert!(log.flush());
            assert!(log.healthy());
            assert_eq!(events(&path), ["daemon_started"]);
            std::fs::remove_file(&path).unwrap();
        }
    }
}

//! The redb store's write-ahead log: `concord.wal` beside `concord.redb`.
//!
//! A durable redb commit writes every page the transaction touched (a dozen scattered
//! pages for one operation) and then flushes them all; appending one record to a file and
//! flushing it writes one or two pages. So the store applies each commit to redb without
//! durability and makes it durable here, and makes redb itself durable (a checkpoint) only
//! when the log is full, after which the log is written again from its start.
//!
//! A record is `len: u32, crc: u32, seq: u64` (little-endian) then `len` bytes of payload;
//! `crc` is the CRC-32 of the store's log id (drawn when the store was created, kept in
//! redb), `seq` and the payload, so a log left from another store is never read as this
//! one's. Seqs count up by one. Reading stops at the
//! first record that is torn, damaged, or not the next seq — which is where the last
//! append ended, or where a record of an earlier pass through the file begins (its seq is
//! lower). The store records in redb, in each commit's own transaction, the seq of that
//! commit, so after a crash it applies again exactly the records its durable state lacks.
//!
//! The file only grows, by whole chunks of zeros flushed once: appending then rewrites
//! blocks the file already has, so a flush carries no change of the file's size.

use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::StoreError;

/// The log's file name in the data directory.
pub(super) const FILE_NAME: &str = "concord.wal";

/// How far the log runs before redb is checkpointed and the log starts again: the most
/// that is applied again after a crash.
pub(super) const LIMIT_BYTES: u64 = 8 << 20;

/// The file grows by this much at a time, zero-filled.
const GROW_BYTES: u64 = 1 << 20;

const HEADER_BYTES: u64 = 16;

/// The open log, positioned where the next record goes.
#[derive(Debug)]
pub(super) struct Wal {
    file: File,
    id: u64,
    /// Where the next record is written.
    end: u64,
    /// The file's length: zeros, or records of this or an earlier pass, up to it.
    allocated: u64,
    next_seq: u64,
}

/// A record read back: its seq and payload.
pub(super) type Record = (u64, Vec<u8>);

impl Wal {
    /// Opens (or creates, 0600) the log at `path` and reads its records from the start,
    /// up to the first that is not valid and next in seq. The log is positioned at its
    /// start, for records from `next_seq` on: the caller applies what it lacks of the
    /// records read, and checkpoints, before it appends.
    pub(super) fn open(path: &Path, id: u64) -> Result<(Wal, Vec<Record>), StoreError> {
        let mut options = std::fs::OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let created = !path.try_exists()?;
        let file = options.open(path)?;
        #[cfg(unix)]
        if created && let Some(dir) = path.parent() {
            // The new name must be durable before a record in the file is called durable.
            File::open(dir)?.sync_all()?;
        }
        let allocated = file.metadata()?.len();
        let records = read_records(&file, allocated, id)?;
        let next_seq = records.last().map_or(1, |(seq, _)| seq + 1);
        Ok((Wal { file, id, end: 0, allocated, next_seq }, records))
    }

    /// The seq the next record gets.
    pub(super) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Whether a record of `payload_len` bytes fits before the limit.
    pub(super) fn has_room(&self, payload_len: usize) -> bool {
        self.end + HEADER_BYTES + payload_len as u64 <= LIMIT_BYTES
    }

    /// Appends the record `(next_seq, payload)` and flushes it: durable when this returns.
    pub(super) fn append(&mut self, payload: &[u8]) -> std::io::Result<()> {
        let seq = self.next_seq;
        let len = u32::try_from(payload.len()).map_err(|_| ErrorKind::InvalidInput)?;
        let record_end = self.end + HEADER_BYTES + u64::from(len);
        if record_end > self.allocated {
            let grown = record_end.next_multiple_of(GROW_BYTES);
            let zeros = vec![0; GROW_BYTES as usize];
            let mut at = self.allocated;
            while at < grown {
                self.file.write_all_at(&zeros[..(grown - at).min(GROW_BYTES) as usize], at)?;
                at += GROW_BYTES;
            }
            self.allocated = grown;
        }
        self.file.write_all_at(&record(self.id, seq, payload), self.end)?;
        self.file.sync_data()?;
        self.end = record_end;
        self.next_seq += 1;
        Ok(())
    }

    /// Starts the log again from the file's start (everything in it is durable elsewhere
    /// now), with `next_seq` for the next record.
    pub(super) fn restart(&mut self, next_seq: u64) {
        self.end = 0;
        self.next_seq = next_seq;
    }
}

/// The bytes of the record `(seq, payload)` in the log of the store `id`.
pub(super) fn record(id: u64, seq: u64, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("checked by the caller");
    let mut record = Vec::with_capacity(HEADER_BYTES as usize + payload.len());
    record.extend_from_slice(&len.to_le_bytes());
    record.extend_from_slice(&checksum(id, seq, payload).to_le_bytes());
    record.extend_from_slice(&seq.to_le_bytes());
    record.extend_from_slice(payload);
    record
}

fn checksum(id: u64, seq: u64, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&id.to_le_bytes());
    hasher.update(&seq.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

/// The valid records of consecutive seqs from the file's start.
fn read_records(file: &File, length: u64, id: u64) -> Result<Vec<Record>, StoreError> {
    let mut records: Vec<Record> = Vec::new();
    let mut at = 0;
    let mut header = [0; HEADER_BYTES as usize];
    while at + HEADER_BYTES <= length {
        file.read_exact_at(&mut header, at)?;
        let len = u64::from(u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")));
        let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
        let seq = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
        let follows = records.last().is_none_or(|(last, _)| seq == last + 1);
        if seq == 0 || !follows || len > length - at - HEADER_BYTES {
            break;
        }
        let mut payload = vec![0; len as usize];
        file.read_exact_at(&mut payload, at + HEADER_BYTES)?;
        if checksum(id, seq, &payload) != crc {
            break;
        }
        records.push((seq, payload));
        at += HEADER_BYTES + len;
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: u64 = 0x00c0_ffee;

    fn open(dir: &Path) -> (Wal, Vec<Record>) {
        Wal::open(&dir.join(FILE_NAME), ID).unwrap()
    }

    fn seqs(records: &[Record]) -> Vec<u64> {
        records.iter().map(|(seq, _)| *seq).collect()
    }

    #[test]
    fn appended_records_are_read_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, records) = open(dir.path());
        assert!(records.is_empty());
        for payload in [&b"one"[..], b"", b"three"] {
            wal.append(payload).unwrap();
        }
        drop(wal);
        let (wal, records) = open(dir.path());
        assert_eq!(records, vec![(1, b"one".to_vec()), (2, vec![]), (3, b"three".to_vec())]);
        assert_eq!(wal.next_seq(), 4);
    }

    #[test]
    fn reading_stops_at_a_torn_or_damaged_record() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = open(dir.path());
        for payload in [&b"first"[..], b"second", b"third!"] {
            wal.append(payload).unwrap();
        }
        drop(wal);
        let path = dir.path().join(FILE_NAME);
        let second = HEADER_BYTES + 5;
        // A flipped payload byte in the second record: only the first is read.
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(b"X", second + HEADER_BYTES).unwrap();
        assert_eq!(seqs(&open(dir.path()).1), [1]);
        // A length that runs past the file: nothing after the first either.
        file.write_all_at(&u32::MAX.to_le_bytes(), second).unwrap();
        assert_eq!(seqs(&open(dir.path()).1), [1]);
    }

    #[test]
    fn a_restarted_log_ends_where_the_earlier_pass_begins() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = open(dir.path());
        for _ in 0..5 {
            wal.append(b"older pass").unwrap();
        }
        // Everything so far is checkpointed: the log starts again, the seqs go on.
        wal.restart(6);
        wal.append(b"older pass").unwrap(); // exactly over record 1: record 2 follows it
        wal.append(b"newer").unwrap();
        drop(wal);
        let (wal, records) = open(dir.path());
        assert_eq!(seqs(&records), [6, 7], "record 2 of the earlier pass is not read as 8");
        assert_eq!(wal.next_seq(), 8);
    }

    #[test]
    fn another_stores_log_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = open(dir.path());
        wal.append(b"of the store with ID").unwrap();
        drop(wal);
        let (wal, records) = Wal::open(&dir.path().join(FILE_NAME), ID + 1).unwrap();
        assert!(records.is_empty());
        assert_eq!(wal.next_seq(), 1);
        assert_eq!(seqs(&open(dir.path()).1), [1]);
    }

    #[test]
    fn the_file_grows_by_zeroed_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = open(dir.path());
        wal.append(&vec![7; GROW_BYTES as usize]).unwrap();
        let length = std::fs::metadata(dir.path().join(FILE_NAME)).unwrap().len();
        assert_eq!(length, 2 * GROW_BYTES);
        wal.restart(2);
        wal.append(b"small").unwrap();
        let again = std::fs::metadata(dir.path().join(FILE_NAME)).unwrap().len();
        assert_eq!(again, length, "a record within the file does not grow it");
        assert!(wal.has_room(1000));
        assert!(!wal.has_room(LIMIT_BYTES as usize));
    }
}

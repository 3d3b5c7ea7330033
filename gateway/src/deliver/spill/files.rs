//! The files of a [`DiskQueue`](super::DiskQueue): segment names, segment
//! recovery, the ledger written in place, directory fsync.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::format;
use super::{Recovery, SpillError, SEGMENT_EXT};

/// `00000000000000000001.seg`: fixed width so names sort like ids.
pub(super) fn segment_name(id: u64) -> String {
    format!("{id:020}{SEGMENT_EXT}")
}

/// Scans one segment and repairs it in place: retires corrupt frames with a
/// tombstone and cuts a damaged tail.
pub(super) fn recover_segment(
    path: &Path,
    min_seq: u64,
    last: bool,
    rec: &mut Recovery,
) -> Result<format::Scan, SpillError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| SpillError::io("open", path, e))?;
    let len = file
        .metadata()
        .map_err(|e| SpillError::io("stat", path, e))?
        .len();
    let scan = format::scan(
        &mut BufReader::with_capacity(256 << 10, &file),
        len,
        min_seq,
    )
    .map_err(|e| SpillError::io("read", path, e))?;
    let mut touched = false;
    for &off in &scan.corrupt {
        let mut f = &file;
        f.seek(SeekFrom::Start(off))
            .and_then(|_| f.write_all(&format::TOMBSTONE))
            .map_err(|e| SpillError::io("repair", path, e))?;
        rec.corrupt_records_dropped += 1;
        touched = true;
    }
    if scan.good_end < len {
        file.set_len(scan.good_end)
            .map_err(|e| SpillError::io("truncate", path, e))?;
        rec.truncated_bytes += len - scan.good_end;
        rec.corrupt_records_dropped += 1;
        if last && scan.torn {
            rec.torn_tail = true;
        }
        touched = true;
    }
    if touched {
        tracing::warn!(
            path = %path.display(),
            retired = scan.corrupt.len(),
            cut_bytes = len - scan.good_end,
            torn = scan.torn,
            "spill segment repaired on open"
        );
        file.sync_data()
            .map_err(|e| SpillError::io("fsync", path, e))?;
    }
    Ok(scan)
}

/// Records `acked` in the ledger, in place: one slot of a file whose blocks
/// exist already, so it needs no free space (on a full disk the acks must
/// still be recordable, or delivered segments could never be deleted). A
/// file shorter than two slots (new, or written by an older version) is
/// written whole first, which does need space once.
pub(super) fn write_ledger(path: &Path, acked: u64, sync: bool) -> Result<(), SpillError> {
    let res = (|| {
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        if f.metadata()?.len() < format::LEDGER_FILE_LEN as u64 {
            f.write_all_at(&format::encode_ledger_file(acked), 0)?;
        } else {
            f.write_all_at(
                &format::encode_ledger(acked),
                format::ledger_slot_offset(acked),
            )?;
        }
        if sync {
            f.sync_data()?;
        }
        Ok(())
    })();
    res.map_err(|e: io::Error| SpillError::io("write ledger", path, e))
}

/// Gives a queue directory a whole ledger file (both slots) while there is
/// space, so later acks are written in place. Best effort: on a full disk
/// the next ledger write tries again.
pub(super) fn reserve_ledger(path: &Path, acked: u64) {
    let short = fs::metadata(path).map_or(true, |m| m.len() < format::LEDGER_FILE_LEN as u64);
    if short {
        let dir = path.parent().unwrap_or(Path::new("."));
        if let Err(e) = write_ledger(path, acked, true).and_then(|()| sync_dir(dir)) {
            tracing::debug!(error = %e, "spill: ledger not reserved yet");
        }
    }
}

pub(super) fn sync_dir(dir: &Path) -> Result<(), SpillError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| SpillError::io("fsync", dir, e))
}

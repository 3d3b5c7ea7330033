//! Encoded `TimeSeries` records (each `0x0a len msg`): counting samples
//! and splitting a run of records at a record boundary.

use fanout_proto::wire::{Reader, WireType};

/// Samples (floats and histograms) in one `TimeSeries` message.
fn message_samples(msg: &[u8]) -> u32 {
    let mut r = Reader::new(msg);
    let mut n = 0;
    while !r.is_empty() {
        let Ok((field, wire)) = r.key() else { break };
        if (field == 2 || field == 4) && wire == WireType::Len {
            n += 1;
        }
        if r.skip(wire).is_err() {
            break;
        }
    }
    n
}

/// Splits `records` after as many whole records as fit in `max` samples
/// (at least one when `at_least_one`): returns (byte offset, samples,
/// series) of the first part.
pub(super) fn split_point(records: &[u8], max: u32, at_least_one: bool) -> (usize, u32, u32) {
    let mut r = Reader::new(records);
    let (mut end, mut samples, mut series) = (0usize, 0u32, 0u32);
    while !r.is_empty() {
        let Ok((_, wire)) = r.key() else { break };
        let Ok(msg) = (match wire {
            WireType::Len => r.len_delimited(),
            _ => break,
        }) else {
            break;
        };
        let n = message_samples(msg);
        if (series > 0 || !at_least_one) && samples.saturating_add(n) > max {
            break;
        }
        samples = samples.saturating_add(n);
        series += 1;
        end = r.pos();
    }
    (end, samples, series)
}

/// Copies the records of `src` into `out` grouped by metric: ordered by
/// their first label (`__name__` in a sorted label set), records with the
/// same first label keeping their order (so a series' records stay in
/// order, and a scrape's series of one metric stay together). Neighbours of
/// one metric share most of their labels and compress far better with
/// snappy, whose matches reach back at most 64 KiB; the order of different
/// series within one request does not matter. `index` is reused scratch.
/// Bytes that do not parse as records are appended unchanged at the end.
pub(super) fn sort_records(src: &[u8], index: &mut Vec<(u32, u32, u32, u32)>, out: &mut Vec<u8>) {
    index.clear();
    let mut r = Reader::new(src);
    let mut tail = src.len();
    while !r.is_empty() {
        let start = r.pos();
        let Ok((_, WireType::Len)) = r.key() else {
            tail = start;
            break;
        };
        let Ok(msg) = r.len_delimited() else {
            tail = start;
            break;
        };
        let body = r.pos() - msg.len();
        // The first label (field 1) is the key.
        let mut m = Reader::new(msg);
        let key = match m.key() {
            Ok((1, wire)) if m.skip(wire).is_ok() => (body, body + m.pos()),
            _ => (body, body),
        };
        index.push((start as u32, r.pos() as u32, key.0 as u32, key.1 as u32));
    }
    index.sort_unstable_by(|a, b| {
        let ka = &src[a.2 as usize..a.3 as usize];
        let kb = &src[b.2 as usize..b.3 as usize];
        ka.cmp(kb).then(a.0.cmp(&b.0))
    });
    out.clear();
    out.reserve(src.len());
    for &(start, end, _, _) in index.iter() {
        out.extend_from_slice(&src[start as usize..end as usize]);
    }
    out.extend_from_slice(&src[tail..]);
}

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

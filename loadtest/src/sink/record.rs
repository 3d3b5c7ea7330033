//! What a sink keeps of what it received: per series ([`SeriesRecord`]:
//! rounds, duplicates, arrival order, label sets), per request (counts by
//! status, refusals, bytes) and end-to-end latency, split into [`SHARDS`]
//! locked parts that [`super::SinkHandle::report`] merges into one
//! [`SinkReport`].
//!
//! # Invariants
//! - A series' record lives in the shard of its id ([`shard_of`]), so the
//!   shards hold disjoint series and merging never combines two records.
//! - A request takes each shard it touches once ([`record_samples`] sorts
//!   its samples by shard first) and records them in body order, which is
//!   what arrival order means (module doc of [`super`]).
//! - Recording an arrival is O(1) with no allocation: the first 128 rounds
//!   live inside the record ([`SeqSet`]) and a label set is owned only when
//!   its bytes are new to the record ([`SeriesRecord::saw_labels`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Mutex;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::generator::{histogram, lock, Latency};
use crate::identity::{SampleId, SeriesId};

/// Distinct label sets kept per series (more are counted, not kept).
pub const MAX_LABEL_SETS: usize = 8;
/// Duplicate rounds listed per series (more are counted, not listed).
pub const MAX_DUPLICATES_LISTED: usize = 16;
/// Label-set hashes a record remembers (a label set can have several: one
/// per encoding seen).
const MAX_LABEL_HASHES: usize = 32;

/// A set of rounds (a bitmap). The first 128 rounds live in the set itself,
/// so that recording an arrival usually touches no memory beyond the series'
/// record (the sink does it for every sample at every target).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeqSet {
    inline: [u64; INLINE_WORDS],
    count: u64,
    more: Vec<u64>,
}

const INLINE_WORDS: usize = 2;

impl SeqSet {
    fn word(&self, w: usize) -> u64 {
        match w.checked_sub(INLINE_WORDS) {
            None => self.inline[w],
            Some(m) => self.more.get(m).copied().unwrap_or(0),
        }
    }

    /// Adds `seq`; false if it was already there.
    pub fn insert(&mut self, seq: u32) -> bool {
        let (w, b) = ((seq / 64) as usize, seq % 64);
        let word = match w.checked_sub(INLINE_WORDS) {
            None => &mut self.inline[w],
            Some(m) => {
                if m >= self.more.len() {
                    self.more.resize(m + 1, 0);
                }
                &mut self.more[m]
            }
        };
        let had = *word & (1 << b) != 0;
        *word |= 1 << b;
        if !had {
            self.count += 1;
        }
        !had
    }

    /// Whether `seq` is in the set.
    pub fn contains(&self, seq: u32) -> bool {
        self.word((seq / 64) as usize) & (1 << (seq % 64)) != 0
    }

    /// Number of rounds in the set.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn words(&self) -> impl DoubleEndedIterator<Item = (usize, u64)> + '_ {
        (0..INLINE_WORDS + self.more.len()).map(|w| (w, self.word(w)))
    }

    /// The rounds, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.words().flat_map(|(w, word)| {
            (0..64u32)
                .filter(move |b| word & (1 << b) != 0)
                .map(move |b| w as u32 * 64 + b)
        })
    }

    /// The largest round, if any.
    pub fn max(&self) -> Option<u32> {
        let (w, word) = self.words().rev().find(|(_, w)| *w != 0)?;
        Some(w as u32 * 64 + 63 - word.leading_zeros())
    }
}

/// What one target received of one series.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeriesRecord {
    /// The hash of the first label set (kept in the record: almost every
    /// series has only one), then of the others.
    first_label_hash: Option<u64>,
    /// The highest round received so far.
    pub max_seq: Option<u32>,
    /// Rounds received.
    pub seqs: SeqSet,
    /// Samples received again after their first arrival.
    pub duplicates: u64,
    /// The first duplicated rounds (at most [`MAX_DUPLICATES_LISTED`]).
    pub duplicate_seqs: Vec<u32>,
    /// Samples that arrived (for the first time) after a higher round of
    /// the series had already arrived.
    pub out_of_order: u64,
    /// The first of those: `(its round, the highest round before it)`.
    pub first_out_of_order: Option<(u32, u32)>,
    /// Distinct label sets seen (at most [`MAX_LABEL_SETS`]), sorted by name.
    pub label_sets: Vec<Vec<(String, String)>>,
    /// Label sets seen beyond [`MAX_LABEL_SETS`].
    pub more_label_sets: u64,
    label_hashes: Vec<u64>,
}

impl SeriesRecord {
    /// Records the arrival of round `seq`: new, duplicate or out of order.
    pub fn arrived(&mut self, seq: u32) {
        if !self.seqs.insert(seq) {
            self.duplicates += 1;
            if self.duplicate_seqs.len() < MAX_DUPLICATES_LISTED {
                self.duplicate_seqs.push(seq);
            }
            return;
        }
        match self.max_seq {
            Some(max) if seq < max => {
                self.out_of_order += 1;
                self.first_out_of_order.get_or_insert((seq, max));
            }
            _ => self.max_seq = Some(seq),
        }
    }

    /// Notes the label set whose bytes hash to `hash` (`owned` makes the
    /// pairs, called only when the bytes are new to this record): kept if
    /// new and there is room ([`MAX_LABEL_SETS`]), else counted.
    pub(super) fn saw_labels(&mut self, hash: u64, owned: impl FnOnce() -> Vec<(String, String)>) {
        if self.first_label_hash == Some(hash) || self.label_hashes.contains(&hash) {
            return;
        }
        // New to this record as bytes; maybe not as labels (the same labels
        // encoded otherwise, or decoded by the other path).
        let owned = owned();
        let known = self.label_sets.contains(&owned);
        if !known && self.label_sets.len() >= MAX_LABEL_SETS {
            self.more_label_sets += 1;
            return;
        }
        match self.first_label_hash {
            None => self.first_label_hash = Some(hash),
            Some(_) if self.label_hashes.len() < MAX_LABEL_HASHES => self.label_hashes.push(hash),
            Some(_) => {}
        }
        if !known {
            self.label_sets.push(owned);
        }
    }
}

/// A sink's records per series, keyed by a fast hash with a fixed seed (the
/// ids come from the generator, not from an adversary).
pub type SeriesMap = HashMap<SeriesId, SeriesRecord, foldhash::fast::FixedState>;

/// Everything a sink saw.
#[derive(Clone, Debug, Default)]
pub struct SinkReport {
    /// The target's name.
    pub name: String,
    /// The listening address.
    pub addr: Option<SocketAddr>,
    /// Requests received.
    pub requests: u64,
    /// Request body bytes received (compressed, as sent), of every `POST`.
    pub bytes: u64,
    /// Responses by status.
    pub responses: BTreeMap<u16, u64>,
    /// Samples recorded.
    pub samples: u64,
    /// Samples whose value is not a generator identity.
    pub unidentified: u64,
    /// Native histogram samples (recorded as counts only).
    pub histograms: u64,
    /// Requests refused as malformed (400, 413, 415).
    pub bad_requests: u64,
    /// Requests refused for auth (401).
    pub auth_failures: u64,
    /// Requests refused for a missing or wrong header (400).
    pub header_mismatches: u64,
    /// Requests answered by an injected fault.
    pub injected: u64,
    /// 2.0 requests a 1.0-only sink ([`V1Only`]) refused or misread.
    pub v2_refused: u64,
    /// 1.0 `WriteRequest.metadata` entries received, by metric family.
    pub metadata: BTreeMap<String, u64>,
    /// The last refusal reason.
    pub last_error: Option<String>,
    /// Requests by remote-write version ("v1", "v2").
    pub protocols: BTreeMap<String, u64>,
    /// TCP connections accepted.
    pub connections: u64,
    /// Requests received over HTTP/2.
    pub h2_requests: u64,
    /// Per series.
    pub series: SeriesMap,
    /// End-to-end latency (ms).
    pub latency_ms: Latency,
    /// With [`SinkConfig::keep_v2_series`]: what the 2.0 requests carried,
    /// per series (its labels, sorted), in arrival order.
    pub v2_series: BTreeMap<Vec<(String, String)>, V2Series>,
}

/// An exemplar as kept: its labels, value and timestamp.
pub type KeptExemplar = (Vec<(String, String)>, f64, i64);

/// Everything 2.0 requests carried for one series, resolved from the
/// symbols table as a receiver stores it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct V2Series {
    /// Float samples: (value, timestamp).
    pub samples: Vec<(f64, i64)>,
    /// Native histograms as decoded.
    pub histograms: Vec<fanout_proto::v2::Histogram>,
    /// Exemplars: (labels, value, timestamp).
    pub exemplars: Vec<KeptExemplar>,
    /// Each distinct metadata seen: (type, help, unit).
    pub metadata: BTreeSet<(i32, String, String)>,
    /// Each distinct non-zero created timestamp seen.
    pub created_timestamps: BTreeSet<i64>,
}

/// Cheap running totals for progress lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SinkStats {
    /// Requests received.
    pub requests: u64,
    /// Samples recorded.
    pub samples: u64,
    /// Request body bytes received (compressed), of every `POST`.
    pub bytes: u64,
    /// Requests refused or failed by injection.
    pub refused: u64,
    /// CPU time the sink spent checking, decompressing, decoding and
    /// recording bodies (per-thread CPU clock around that work; the socket
    /// IO hyper does is not in it), nanoseconds.
    pub cpu_nanos: u64,
}

/// How many parts the records are split into (more than the cores of the
/// machines it runs on, so that two receiving threads seldom meet).
pub(super) const SHARDS: usize = 16;

/// The shard that holds the record of series `id`.
pub(super) fn shard_of(id: SeriesId) -> usize {
    let h =
        ((u64::from(id.cluster) << 32) | u64::from(id.series)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (h >> 32) as usize % SHARDS
}

/// One shard of a sink's records.
pub(super) struct Inner {
    /// Counts and the records of the series in this shard.
    pub(super) report: SinkReport,
    /// End-to-end latency of the samples recorded here (ms).
    pub(super) latency: Histogram<u64>,
    /// The number of the request that set `report.last_error` (the newest
    /// wins when shards are merged).
    pub(super) last_error_at: u64,
}

impl Inner {
    /// An empty shard.
    pub(super) fn new() -> Inner {
        Inner {
            report: SinkReport::default(),
            latency: histogram(),
            last_error_at: 0,
        }
    }
}

impl SinkReport {
    /// Adds `other`'s counts and records to `self` (series records of the
    /// same id are not merged: the shards hold disjoint ids).
    pub(super) fn absorb(&mut self, other: &SinkReport) {
        self.requests += other.requests;
        self.bytes += other.bytes;
        for (k, v) in &other.responses {
            *self.responses.entry(*k).or_default() += v;
        }
        self.samples += other.samples;
        self.unidentified += other.unidentified;
        self.histograms += other.histograms;
        self.bad_requests += other.bad_requests;
        self.auth_failures += other.auth_failures;
        self.header_mismatches += other.header_mismatches;
        self.injected += other.injected;
        self.v2_refused += other.v2_refused;
        for (family, n) in &other.metadata {
            *self.metadata.entry(family.clone()).or_default() += n;
        }
        for (k, v) in &other.protocols {
            *self.protocols.entry(k.clone()).or_default() += v;
        }
        self.series
            .extend(other.series.iter().map(|(id, r)| (*id, r.clone())));
        // Kept in shard 0 only (arrival order matters), so nothing to merge.
        self.v2_series
            .extend(other.v2_series.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
}

/// One identified sample of a request: its identity, timestamp and the
/// hash of its label set's bytes.
pub(super) struct Arrival {
    /// The sample's identity.
    pub(super) id: SampleId,
    /// Its timestamp (ms since the epoch).
    pub(super) ts: i64,
    /// Which of the request's label sets it has.
    pub(super) set: usize,
}

/// Records a request's identified samples, in body order, each under its
/// series' shard lock, taking each shard once: the samples are put in shard
/// order first (a counting sort). `labels(set)` owns a label set's pairs
/// and `hash(set)` is the hash of its bytes.
pub(super) fn record_samples(
    shards: &[Mutex<Inner>],
    arrivals: &[Arrival],
    now_ms: i64,
    hash: impl Fn(usize) -> u64,
    labels: impl Fn(usize) -> Vec<(String, String)>,
) {
    let mut starts = [0usize; SHARDS + 1];
    for a in arrivals {
        starts[shard_of(a.id.id) + 1] += 1;
    }
    for i in 1..=SHARDS {
        starts[i] += starts[i - 1];
    }
    let mut order = vec![0usize; starts[SHARDS]];
    let mut next = starts;
    for (i, a) in arrivals.iter().enumerate() {
        let s = shard_of(a.id.id);
        order[next[s]] = i;
        next[s] += 1;
    }
    for (shard, part) in shards.iter().enumerate().take(SHARDS) {
        let (from, to) = (starts[shard], starts[shard + 1]);
        if from == to {
            continue;
        }
        let mut inner = lock(part);
        let Inner {
            report, latency, ..
        } = &mut *inner;
        for &i in &order[from..to] {
            let a = &arrivals[i];
            latency.saturating_record((now_ms - a.ts).max(0) as u64);
            let rec = report.series.entry(a.id.id).or_default();
            rec.arrived(a.id.seq);
            rec.saw_labels(hash(a.set), || labels(a.set));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_set_spans_its_inline_words_and_the_rest() {
        let mut s = SeqSet::default();
        for seq in [300, 0, 127, 128, 63, 64] {
            assert!(s.insert(seq));
        }
        assert!(!s.insert(128));
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0, 63, 64, 127, 128, 300]);
        assert_eq!((s.len(), s.max()), (6, Some(300)));
        assert!(s.contains(127) && s.contains(300) && !s.contains(299) && !s.contains(9999));
        assert_eq!(SeqSet::default().max(), None);
    }

    fn record(seqs: &[u32]) -> SeriesRecord {
        let mut r = SeriesRecord::default();
        for &s in seqs {
            r.arrived(s);
        }
        r
    }

    #[test]
    fn in_order_with_duplicates_is_not_out_of_order() {
        // Re-sent rounds (a retried batch, a replayed spill) are duplicates.
        let r = record(&[0, 1, 2, 1, 2, 0, 3, 3, 4]);
        assert_eq!(
            (r.out_of_order, r.first_out_of_order, r.max_seq),
            (0, None, Some(4))
        );
        assert_eq!(
            (r.duplicates, &r.duplicate_seqs[..]),
            (4, &[1, 2, 0, 3][..])
        );
    }

    #[test]
    fn a_new_round_below_the_highest_is_out_of_order() {
        // Round 1 skipped, then 5 and 7 before 1 and 6 arrive; 1 again is a
        // duplicate, 8 is in order again.
        let r = record(&[0, 2, 5, 7, 1, 6, 1, 8]);
        assert_eq!(r.out_of_order, 2);
        assert_eq!(r.first_out_of_order, Some((1, 7)));
        assert_eq!((r.duplicates, r.max_seq), (1, Some(8)));
        assert_eq!(r.seqs.len(), 7);
    }

    #[test]
    fn gaps_alone_are_not_out_of_order() {
        let r = record(&[3, 10, 11, 40]);
        assert_eq!((r.out_of_order, r.duplicates), (0, 0));
    }
}

//! Checks what sinks received against what they should have received.
//!
//! An [`Expectation`] lists, per series: the rounds sent (acknowledged by the
//! first hop), the targets (sink names) that must each receive every one of
//! them exactly once, and labels that every copy must carry with exactly
//! these values (a subset: labels not named are not checked; an empty value
//! means "absent"). [`Expectation::check`] returns every [`Problem`]; an empty
//! list means delivery was exact. Problems are aggregated per (target,
//! series) so a broken run yields a readable list, not one line per sample.
//!
//! Order is checked only when asked ([`Expectation::require_order`]): then
//! every target must also receive each series' new rounds in ascending order
//! (a re-sent round is a duplicate, not out of order; see [`crate::sink`]).
//! Ask for it when the sender defines per-series order, e.g. a test that
//! writes one request at a time with rising rounds; `fanout-load run` sends
//! over parallel connections and does not.
//!
//! [`self_check`] needs no expectation: it reports what a single sink can
//! tell on its own (duplicates, gaps below the highest round of a series,
//! unidentified samples and refused requests), which is what
//! `fanout-load sink` prints.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::identity::SeriesId;
use crate::sink::{SeqSet, SinkReport};

/// One way delivery went wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// Expected rounds that never arrived at a target.
    Missing {
        /// The target.
        target: String,
        /// The series.
        id: SeriesId,
        /// How many rounds are missing.
        count: u64,
        /// The first missing round.
        first_seq: u32,
    },
    /// Rounds that arrived more than once at a target.
    Duplicated {
        /// The target.
        target: String,
        /// The series.
        id: SeriesId,
        /// Extra copies.
        copies: u64,
        /// The first duplicated round, if listed.
        first_seq: Option<u32>,
    },
    /// Samples at a target that should not have them (wrong target, unknown
    /// series or a round that was not sent).
    Misrouted {
        /// The target.
        target: String,
        /// The series.
        id: SeriesId,
        /// How many samples.
        samples: u64,
    },
    /// A label absent or with another value than expected.
    Mislabelled {
        /// The target.
        target: String,
        /// The series.
        id: SeriesId,
        /// The label name.
        label: String,
        /// The expected value (empty: absent).
        expected: String,
        /// The value found (`None`: absent).
        found: Option<String>,
    },
    /// Samples whose value is not a generator identity.
    Unidentified {
        /// The target.
        target: String,
        /// How many samples.
        samples: u64,
    },
    /// Samples that arrived at a target after a newer round of their series
    /// (only with [`Expectation::require_order`]).
    OutOfOrder {
        /// The target.
        target: String,
        /// The series.
        id: SeriesId,
        /// How many samples arrived after a newer one.
        samples: u64,
        /// The first: `(its round, the newer round that arrived before it)`.
        first: Option<(u32, u32)>,
    },
    /// Requests the sink refused (malformed, auth, headers).
    Refused {
        /// The target.
        target: String,
        /// How many requests, and why.
        what: String,
    },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Missing {
                target,
                id,
                count,
                first_seq,
            } => {
                write!(
                    f,
                    "{target}: {id}: {count} samples missing (first round {first_seq})"
                )
            }
            Problem::Duplicated {
                target,
                id,
                copies,
                first_seq,
            } => match first_seq {
                Some(s) => write!(
                    f,
                    "{target}: {id}: {copies} duplicate samples (first round {s})"
                ),
                None => write!(f, "{target}: {id}: {copies} duplicate samples"),
            },
            Problem::Misrouted {
                target,
                id,
                samples,
            } => {
                write!(
                    f,
                    "{target}: {id}: {samples} samples that this target should not get"
                )
            }
            Problem::Mislabelled {
                target,
                id,
                label,
                expected,
                found,
            } => write!(
                f,
                "{target}: {id}: label {label} is {}, expected {}",
                found
                    .as_deref()
                    .map(|v| format!("{v:?}"))
                    .unwrap_or_else(|| "absent".into()),
                if expected.is_empty() {
                    "absent".to_owned()
                } else {
                    format!("{expected:?}")
                }
            ),
            Problem::Unidentified { target, samples } => {
                write!(
                    f,
                    "{target}: {samples} samples with values that are not generator identities"
                )
            }
            Problem::OutOfOrder {
                target,
                id,
                samples,
                first,
            } => {
                write!(
                    f,
                    "{target}: {id}: {samples} samples arrived after a newer one"
                )?;
                match first {
                    Some((seq, after)) => write!(f, " (first: round {seq} after round {after})"),
                    None => Ok(()),
                }
            }
            Problem::Refused { target, what } => write!(f, "{target}: refused requests: {what}"),
        }
    }
}

/// What one series should look like at its targets.
#[derive(Clone, Debug, Default)]
struct Expected {
    seqs: SeqSet,
    targets: BTreeSet<String>,
    labels: BTreeMap<String, String>,
}

/// What every target should have received.
#[derive(Clone, Debug, Default)]
pub struct Expectation {
    series: HashMap<SeriesId, Expected>,
    order: bool,
}

impl Expectation {
    /// An empty expectation (nothing should arrive anywhere).
    pub fn new() -> Expectation {
        Expectation::default()
    }

    /// Series `id` sent in `seqs`, to reach each of `targets` once, with
    /// `labels` (name, value; empty value: must be absent). Repeated calls for
    /// the same series add rounds and targets; labels are replaced.
    pub fn expect<T, L, K, V>(
        &mut self,
        id: SeriesId,
        seqs: impl IntoIterator<Item = u32>,
        targets: T,
        labels: L,
    ) -> &mut Expectation
    where
        T: IntoIterator,
        T::Item: Into<String>,
        L: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let e = self.series.entry(id).or_default();
        for s in seqs {
            e.seqs.insert(s);
        }
        e.targets.extend(targets.into_iter().map(Into::into));
        e.labels = labels
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        self
    }

    /// Also require every target to receive each series' new rounds in
    /// ascending order ([`Problem::OutOfOrder`]); duplicates stay
    /// [`Problem::Duplicated`].
    pub fn require_order(&mut self) -> &mut Expectation {
        self.order = true;
        self
    }

    /// Number of series expected.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    /// True when no series is expected.
    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// Every problem across `reports` (one per target, named by `SinkReport::name`).
    /// A target in the expectation with no report counts as having received nothing.
    pub fn check(&self, reports: &[SinkReport]) -> Vec<Problem> {
        let mut problems = Vec::new();
        let by_name: HashMap<&str, &SinkReport> =
            reports.iter().map(|r| (r.name.as_str(), r)).collect();
        let mut ids: Vec<&SeriesId> = self.series.keys().collect();
        ids.sort();
        // Missing: every expected (series, target).
        for id in &ids {
            let e = &self.series[*id];
            for t in &e.targets {
                let got = by_name.get(t.as_str()).and_then(|r| r.series.get(*id));
                let mut count = 0u64;
                let mut first = None;
                for s in e.seqs.iter() {
                    if !got.is_some_and(|g| g.seqs.contains(s)) {
                        count += 1;
                        first.get_or_insert(s);
                    }
                }
                if let Some(first_seq) = first {
                    problems.push(Problem::Missing {
                        target: t.clone(),
                        id: **id,
                        count,
                        first_seq,
                    });
                }
            }
        }
        // What each target got: duplicates, misrouting, labels.
        for r in reports {
            refused(r, &mut problems);
            let mut got: Vec<(&SeriesId, _)> = r.series.iter().collect();
            got.sort_by_key(|(id, _)| **id);
            for (id, rec) in got {
                if rec.duplicates > 0 {
                    problems.push(Problem::Duplicated {
                        target: r.name.clone(),
                        id: *id,
                        copies: rec.duplicates,
                        first_seq: rec.duplicate_seqs.first().copied(),
                    });
                }
                if self.order && rec.out_of_order > 0 {
                    problems.push(Problem::OutOfOrder {
                        target: r.name.clone(),
                        id: *id,
                        samples: rec.out_of_order,
                        first: rec.first_out_of_order,
                    });
                }
                let e = self.series.get(id).filter(|e| e.targets.contains(&r.name));
                let Some(e) = e else {
                    problems.push(Problem::Misrouted {
                        target: r.name.clone(),
                        id: *id,
                        samples: rec.seqs.len() + rec.duplicates,
                    });
                    continue;
                };
                let extra = rec.seqs.iter().filter(|s| !e.seqs.contains(*s)).count() as u64;
                if extra > 0 {
                    problems.push(Problem::Misrouted {
                        target: r.name.clone(),
                        id: *id,
                        samples: extra,
                    });
                }
                for (name, want) in &e.labels {
                    for set in &rec.label_sets {
                        let found = set.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
                        let ok = match &found {
                            Some(v) => v == want,
                            None => want.is_empty(),
                        };
                        if !ok {
                            problems.push(Problem::Mislabelled {
                                target: r.name.clone(),
                                id: *id,
                                label: name.clone(),
                                expected: want.clone(),
                                found,
                            });
                            break;
                        }
                    }
                }
            }
        }
        problems
    }
}

fn refused(r: &SinkReport, problems: &mut Vec<Problem>) {
    if r.unidentified > 0 {
        problems.push(Problem::Unidentified {
            target: r.name.clone(),
            samples: r.unidentified,
        });
    }
    let mut what = Vec::new();
    if r.bad_requests > 0 {
        what.push(format!("{} malformed", r.bad_requests));
    }
    if r.auth_failures > 0 {
        what.push(format!("{} auth", r.auth_failures));
    }
    if r.header_mismatches > 0 {
        what.push(format!("{} wrong headers", r.header_mismatches));
    }
    if !what.is_empty() {
        let last = r.last_error.as_deref().unwrap_or("");
        problems.push(Problem::Refused {
            target: r.name.clone(),
            what: format!("{} (last: {last})", what.join(", ")),
        });
    }
}

/// What one sink can tell alone: duplicates, gaps between each series'
/// lowest and highest round (so it assumes one run, or runs whose
/// `--first-round` continue each other), unidentified samples and refused
/// requests.
pub fn self_check(r: &SinkReport) -> Vec<Problem> {
    let mut problems = Vec::new();
    refused(r, &mut problems);
    let mut got: Vec<_> = r.series.iter().collect();
    got.sort_by_key(|(id, _)| **id);
    for (id, rec) in got {
        if rec.duplicates > 0 {
            problems.push(Problem::Duplicated {
                target: r.name.clone(),
                id: *id,
                copies: rec.duplicates,
                first_seq: rec.duplicate_seqs.first().copied(),
            });
        }
        if let (Some(min), Some(max)) = (rec.seqs.iter().next(), rec.seqs.max()) {
            let missing = u64::from(max - min) + 1 - rec.seqs.len();
            if missing > 0 {
                let first_seq = (min..=max).find(|s| !rec.seqs.contains(*s)).unwrap_or(min);
                problems.push(Problem::Missing {
                    target: r.name.clone(),
                    id: *id,
                    count: missing,
                    first_seq,
                });
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::SeriesRecord;

    fn report(arrivals: &[u32]) -> SinkReport {
        let mut rec = SeriesRecord::default();
        for &s in arrivals {
            rec.arrived(s);
        }
        let mut r = SinkReport {
            name: "t".into(),
            ..SinkReport::default()
        };
        r.series.insert(id(), rec);
        r
    }

    fn id() -> SeriesId {
        SeriesId {
            cluster: 0,
            series: 3,
        }
    }

    fn expectation(order: bool) -> Expectation {
        let mut e = Expectation::new();
        e.expect(id(), 0..8, ["t"], Vec::<(String, String)>::new());
        if order {
            e.require_order();
        }
        e
    }

    #[test]
    fn out_of_order_is_reported_only_when_required() {
        let r = report(&[0, 1, 2, 3, 4, 7, 5, 6]);
        let want = Problem::OutOfOrder {
            target: "t".into(),
            id: id(),
            samples: 2,
            first: Some((5, 7)),
        };
        assert_eq!(
            expectation(true).check(std::slice::from_ref(&r)),
            vec![want.clone()]
        );
        assert_eq!(
            want.to_string(),
            "t: cluster 0 series 3: 2 samples arrived after a newer one (first: round 5 after round 7)"
        );
        assert_eq!(expectation(false).check(&[r]), vec![]);
    }

    #[test]
    fn in_order_with_duplicates_passes_the_order_check() {
        let r = report(&[0, 1, 2, 1, 2, 3, 4, 5, 3, 6, 7, 7]);
        let problems = expectation(true).check(&[r]);
        assert_eq!(
            problems,
            vec![Problem::Duplicated {
                target: "t".into(),
                id: id(),
                copies: 4,
                first_seq: Some(1)
            }]
        );
    }
}
